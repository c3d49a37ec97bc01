"""Deduplication: planted exact and near duplicates are found, unrelated documents are kept."""

from __future__ import annotations

import random

import numpy as np

from scratchlm.data.dedup import DedupConfig, DedupIndex, KeyTable, MinHasher, find_duplicates


def document(rng: random.Random, n_words: int = 200) -> str:
    return " ".join(f"w{rng.randrange(20_000)}" for _ in range(n_words))


def change_words(text: str, rng: random.Random, k: int) -> str:
    words = text.split()
    for i in rng.sample(range(len(words)), k):
        words[i] = f"changed{rng.randrange(10**6)}"
    return " ".join(words)


def shingle_jaccard(a: str, b: str, n: int = 5) -> float:
    def grams(t):
        w = t.split()
        return {tuple(w[i : i + n]) for i in range(len(w) - n + 1)}

    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def test_planted_exact_and_near_duplicates_found_and_unrelated_kept():
    rng = random.Random(0)
    originals = [document(rng) for _ in range(150)]
    near = [change_words(t, rng, 1) for t in originals[:60]]  # one word changed in 200
    exact = originals[60:80]
    verdicts = find_duplicates(originals + near + exact)
    assert verdicts[:150] == [None] * 150
    assert verdicts[150:210] == ["near_duplicate"] * 60
    assert verdicts[210:] == ["exact_duplicate"] * 20


def test_documents_below_the_threshold_are_kept():
    rng = random.Random(1)
    originals = [document(rng) for _ in range(80)]
    distant = [change_words(t, rng, 25) for t in originals]  # Jaccard around 0.4
    assert all(shingle_jaccard(a, b) < 0.6 for a, b in zip(originals, distant))
    verdicts = find_duplicates(originals + distant)
    assert verdicts == [None] * 160


def test_case_and_punctuation_do_not_hide_a_duplicate():
    rng = random.Random(2)
    text = document(rng, 100).replace("w1", "W1")
    noisy = text.upper().replace(" ", ", ", 10)
    assert find_duplicates([text, noisy]) == [None, "near_duplicate"]


def test_verdicts_do_not_depend_on_batching():
    rng = random.Random(3)
    texts = [document(rng, 80) for _ in range(40)]
    texts += [change_words(t, rng, 1) for t in texts[:20]] + texts[:5]
    rng.shuffle(texts)
    assert find_duplicates(texts, batch_size=1) == find_duplicates(texts, batch_size=1000)


def test_short_and_wordless_documents():
    verdicts = find_duplicates(["just three words", "just three words!", "!!!", "???", "one"])
    assert verdicts == [None, "near_duplicate", None, None, None]


def test_switching_off_near_duplicates_keeps_exact_detection():
    rng = random.Random(4)
    a = document(rng)
    verdicts = find_duplicates([a, change_words(a, rng, 1), a], DedupConfig(near=False))
    assert verdicts == [None, None, "exact_duplicate"]


def test_signatures_estimate_jaccard():
    rng = random.Random(5)
    hasher = MinHasher(DedupConfig(bands=32, rows=8))
    a = document(rng, 400)
    b = change_words(a, rng, 8)
    sigs, has = hasher.signatures([a, b])
    assert has.all()
    estimate = float(np.mean(sigs[0] == sigs[1]))
    assert abs(estimate - shingle_jaccard(a, b)) < 0.1


def test_key_table_grows_and_keeps_first_values():
    table = KeyTable(capacity=8)
    keys = np.random.default_rng(0).integers(1, 2**63, 5000, dtype=np.uint64)
    table.insert_missing(keys[:3000], np.arange(3000))
    table.insert_missing(keys, np.arange(5000) + 10_000)
    found = table.lookup(np.concatenate([keys, np.array([7, 9], dtype=np.uint64)]))
    assert (found[:3000] == np.arange(3000)).all()
    assert (found[3000:5000] == np.arange(3000, 5000) + 10_000).all()
    assert (found[5000:] == -1).all()
    assert len(table.keys) >= 2 * table.size


def test_the_outcome_does_not_depend_on_where_the_batches_are_cut():
    """A, then B (shares band 0 with A, about half as similar: kept), then C (a copy of B). Within a
    batch C used to be compared with B, the batch's owner of band 0, and found; across batches only
    with A, band 0's first owner, and kept. Each band key now has its first owner alone everywhere
    (the class doc says why), so every cut gives the same answer."""
    cfg = DedupConfig()
    rng = np.random.default_rng(0)
    sketch_a = rng.integers(0, 256, cfg.num_perm, dtype=np.uint8)
    sketch_b = sketch_a.copy()
    sketch_b[: cfg.num_perm // 2] = rng.integers(0, 256, cfg.num_perm // 2, dtype=np.uint8)
    sketches = np.stack([sketch_a, sketch_b, sketch_b])
    bands = np.stack([np.arange(1, cfg.bands + 1), np.r_[1, np.arange(100, 100 + cfg.bands - 1)],
                      np.r_[1, np.arange(200, 200 + cfg.bands - 1)]]).astype(np.uint64)
    exact = np.array([11, 22, 33], dtype=np.uint64)
    outcomes = set()
    for cuts in ([(0, 3)], [(0, 1), (1, 3)], [(0, 2), (2, 3)], [(0, 1), (1, 2), (2, 3)]):
        index, verdicts = DedupIndex(cfg), []
        for lo, hi in cuts:
            verdicts += index.check(exact[lo:hi], bands[lo:hi], sketches[lo:hi], np.ones(hi - lo, bool))
        outcomes.add(tuple(verdicts))
    assert outcomes == {(None, None, None)}
    # C sharing a band key of its own with B (not only A's) is found, whatever the cuts
    bands[2, 1] = bands[1, 1]
    for cuts in ([(0, 3)], [(0, 1), (1, 2), (2, 3)]):
        index, verdicts = DedupIndex(cfg), []
        for lo, hi in cuts:
            verdicts += index.check(exact[lo:hi], bands[lo:hi], sketches[lo:hi], np.ones(hi - lo, bool))
        assert verdicts == [None, None, "near_duplicate"], cuts
