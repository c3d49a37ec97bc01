"""Quality filters: each rule on hand-made documents that should pass and fail, and switched off."""

from __future__ import annotations

import random

import pytest

from scratchlm.data.filters import FilterConfig, first_failing_rule

_VOCAB = [
    "river", "garden", "window", "letter", "market", "silver", "winter", "bridge", "candle", "forest",
    "harbor", "island", "ladder", "meadow", "orange", "pepper", "rabbit", "saddle", "thunder", "valley",
    "castle", "dinner", "engine", "finger", "guitar", "hammer", "jacket", "kettle", "lemon", "mirror",
]  # fmt: skip
_GLUE = ["the", "of", "and", "to", "with", "that", "a", "in", "is", "was"]


def prose(n_words: int = 120, seed: int = 0) -> str:
    """Varied, sentence-shaped English-like text that passes every default rule."""
    rng = random.Random(seed)
    sentences, count = [], 0
    while count < n_words:
        words = [rng.choice(_VOCAB) if i % 2 == 0 else rng.choice(_GLUE) for i in range(rng.randint(8, 14))]
        sentences.append(" ".join(words).capitalize() + ".")
        count += len(words)
    lines = [" ".join(sentences[i : i + 2]) for i in range(0, len(sentences), 2)]
    return "\n".join(lines)


def test_varied_prose_passes_every_rule():
    for seed in range(5):
        assert first_failing_rule(prose(seed=seed), FilterConfig()) is None


@pytest.mark.parametrize(
    ("rule", "bad_text"),
    [
        ("word_count", "The river and the garden of the valley."),
        ("mean_word_length", " ".join(["a of to be it is"] * 20) + " the and the"),
        ("mean_word_length", " ".join(["incomprehensibilities"] * 60) + " the and"),
        ("symbol_ratio", prose(80) + "\n" + " ".join(["#tag"] * 15)),
        ("alpha_words", prose(60) + "\n" + " ".join(str(i) for i in range(1000, 1040))),
        ("stop_words", " ".join(_VOCAB * 3)),
        ("lorem_ipsum", prose(80) + " Lorem ipsum dolor sit amet."),
        ("bullet_lines", "\n".join(f"- {line}" for line in prose(200).split("\n"))),
        ("ellipsis_lines", "\n".join(f"{line} ..." for line in prose(200).split("\n"))),
        (
            "duplicate_lines",
            "\n".join(["Click the river to see the garden and the valley."] * 8 + [prose(60)]),
        ),
        ("duplicate_paragraphs", "\n\n".join([prose(60, seed=i) for i in range(7)] + ["See the river."] * 5)),
        ("top_ngram", " ".join(["garden party"] * 40) + " " + prose(80)),
        (
            "duplicate_ngram",
            prose(100, seed=3).replace("\n", " ") + " " + prose(100, seed=3).replace("\n", " "),
        ),
    ],
)
def test_each_rule_removes_what_it_targets_and_can_be_switched_off(rule, bad_text):
    config = FilterConfig()
    assert first_failing_rule(bad_text, config) == rule
    getattr(config, rule).enabled = False
    assert first_failing_rule(bad_text, config) != rule


def test_thresholds_are_configurable():
    text = prose(40)
    config = FilterConfig()
    assert first_failing_rule(text, config) == "word_count"
    config.word_count.min = 20
    assert first_failing_rule(text, config) is None
    config.word_count.max = 30
    assert first_failing_rule(text, config) == "word_count"


def test_curly_bracket_rule_is_off_by_default_and_works_when_on():
    text = prose(80) + "\nThe river of the dict {key: value} and the garden."
    config = FilterConfig()
    assert first_failing_rule(text, config) is None
    config.curly_bracket.enabled = True
    assert first_failing_rule(text, config) == "curly_bracket"


def test_filters_can_be_switched_off_together():
    assert first_failing_rule("too short", FilterConfig(enabled=False)) is None


def test_repetition_verdict_does_not_depend_on_word_hash_order():
    # Two equally frequent bigrams of different length: the longer one decides, every run.
    text = " ".join(["a b"] * 30 + ["extraordinarily magnificent"] * 30) + " " + prose(150)
    config = FilterConfig()
    config.mean_word_length.enabled = False
    config.alpha_words.enabled = False
    assert first_failing_rule(text, config) == "top_ngram"


def test_non_ascii_letters_count_as_letters():
    text = " ".join(["über", "straße", "café", "naïve", "the", "and"] * 15)
    config = FilterConfig()
    config.top_ngram.enabled = config.duplicate_ngram.enabled = False
    assert first_failing_rule(text, config) is None
    assert first_failing_rule(text + " " + " ".join(["123"] * 40), config) == "alpha_words"
