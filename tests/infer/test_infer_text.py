"""Text in, text out: `TextGenerator` and `scratchlm generate` on real model directories."""

import json
import os
import subprocess
import sys

import pytest
import torch

from scratchlm.cli import main
from scratchlm.infer import generate
from scratchlm.infer.text import TextGenerator
from scratchlm.model import GPT, ModelConfig, save_model
from scratchlm.tokenizer import Tokenizer

CORPUS = ["the cat sat on the mat. naïve café, señor! ünïcödé ÿ €uro 漢字かな" * 3] * 20


def scrambled(model, seed):
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3).add_(1.0 if p.dim() == 1 else 0.0)
    return model.eval()


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.train(CORPUS, 300, show_progress=False)


def model_dir(path, tokenizer, max_seq_len=64, vocab_size=None, seed=0):
    cfg = ModelConfig(vocab_size=vocab_size or tokenizer.vocab_size, n_layer=2, n_head=4, n_kv_head=2,
                      d_model=32, max_seq_len=max_seq_len)
    model = scrambled(GPT(cfg), seed)
    save_model(model, path, extra_files={"tokenizer.json": tokenizer.to_hf_json()})
    return model


def run(capsys, *argv):
    code = main(["generate", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_greedy_prints_the_prompt_and_exactly_the_decoded_continuation(tmp_path, tokenizer, capsys):
    model = model_dir(tmp_path / "m", tokenizer)
    prompt = "the cat"
    ids = generate(model, tokenizer.encode(prompt), 30, temperature=0, eos_id=tokenizer.eot_id,
                   vocab_limit=tokenizer.vocab_size)
    code, out, err = run(capsys, "--model", str(tmp_path / "m"), prompt, "--temperature", "0",
                         "--max-new-tokens", "30")
    assert code == 0
    assert out == prompt + tokenizer.decode(ids) + "\n"
    assert f"{len(ids)} new tokens after {len(tokenizer.encode(prompt))} of prompt" in err
    code, out, _ = run(capsys, "--model", str(tmp_path / "m"), prompt, "--temperature", "0",
                       "--max-new-tokens", "30", "--no-echo")
    assert out == tokenizer.decode(ids) + "\n"


def test_streamed_pieces_join_to_the_decoded_text_even_mid_character(tmp_path, tokenizer):
    """Byte tokens split multi-byte characters: pieces must never hold a half character as U+FFFD."""
    model_dir(tmp_path / "m", tokenizer)
    gen = TextGenerator(tmp_path / "m")
    prompt = gen.encode_prompt("señor 漢")
    split_seen = False
    for seed in range(12):
        pairs = list(gen.stream(prompt, max_new_tokens=40, temperature=3.0, seed=seed, ignore_eos=True))
        ids = [t for t, _ in pairs if t >= 0]
        assert "".join(piece for _, piece in pairs) == tokenizer.decode(ids)
        split_seen |= any(piece == "" for _, piece in pairs)
    assert split_seen  # some token ended inside a character and its piece waited for the rest


def test_seeds_repeat_samples_and_jsonl_reports_each(tmp_path, tokenizer, capsys):
    model_dir(tmp_path / "m", tokenizer)
    args = ["--model", str(tmp_path / "m"), "the", "--seed", "5", "--samples", "3", "--temperature", "1.5",
            "--max-new-tokens", "12", "--jsonl", "--ignore-eos"]
    code, out, _ = run(capsys, *args)
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert [r["seed"] for r in rows] == [5, 6, 7]
    assert all(r["completion_tokens"] == 12 and r["finish_reason"] == "length" for r in rows)
    assert len({r["text"] for r in rows}) > 1
    _, again, _ = run(capsys, *args)
    assert again.splitlines()[0].split('"seconds"')[0] == out.splitlines()[0].split('"seconds"')[0]
    # the second sample of a run is the first sample of a run seeded one higher
    _, shifted, _ = run(capsys, *[a if a != "5" else "6" for a in args])
    assert json.loads(shifted.splitlines()[0])["text"] == rows[1]["text"]


def test_stops_at_the_configured_end_and_at_the_context(tmp_path, tokenizer, capsys):
    model = model_dir(tmp_path / "m", tokenizer, max_seq_len=16)
    prompt = tokenizer.encode("the cat")
    greedy = generate(model, prompt, 6, temperature=0, vocab_limit=tokenizer.vocab_size)
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"eos_token_id": [1, greedy[2]]}))
    gen = TextGenerator(tmp_path / "m")
    assert gen.eos_ids == [1, greedy[2]]
    done = gen.complete(prompt, max_new_tokens=6, temperature=0)
    assert done.ids == greedy[: greedy.index(greedy[2])] and done.finish_reason == "eos"
    done = gen.complete(prompt, max_new_tokens=50, temperature=0, ignore_eos=True)
    assert len(prompt) + len(done.ids) == 16 and done.finish_reason == "context"


def test_end_of_text_comes_from_tokenizer_config_or_endoftext(tmp_path, tokenizer):
    model_dir(tmp_path / "m", tokenizer)
    assert TextGenerator(tmp_path / "m").eos_ids == [tokenizer.eot_id]
    im_end = tokenizer.special_tokens["<|im_end|>"]
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|im_end|>"}}))
    gen = TextGenerator(tmp_path / "m")
    assert gen.eos_ids == [im_end]
    # an empty prompt starts where a document starts, after <|endoftext|>, not after a chat
    # turn's end: a stop id such as <|im_end|> is only the last resort
    assert gen.encode_prompt("") == [tokenizer.eot_id]


def test_imported_llama_with_a_begin_of_text_template_matches_transformers(tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers, processors, trainers

    hf_tok = HFTokenizer(models.BPE())
    hf_tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    hf_tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|begin_of_text|>", "<|end_of_text|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    hf_tok.train_from_iterator(CORPUS, trainer)
    hf_tok.post_processor = processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                          special_tokens=[("<|begin_of_text|>", 0)])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=hf_tok, bos_token="<|begin_of_text|>",
                                                eos_token="<|end_of_text|>")
    cfg = transformers.LlamaConfig(vocab_size=hf_tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                   max_position_embeddings=64, bos_token_id=0, eos_token_id=1)
    hf = scrambled(transformers.LlamaForCausalLM(cfg), 3)
    hf.save_pretrained(tmp_path / "hf")
    fast.save_pretrained(tmp_path / "hf")
    assert main(["import", "hf", str(tmp_path / "hf"), "--out", str(tmp_path / "ours")]) == 0
    capsys.readouterr()

    prompt = "the cat sat"
    ids = fast(prompt, return_tensors="pt").input_ids
    assert ids[0, 0] == 0  # transformers puts the begin-of-text token first
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=20, do_sample=False,
                      pad_token_id=1)[0, ids.shape[1]:]
    expected = fast.decode(out[:-1] if out[-1] == 1 else out)
    assert TextGenerator(tmp_path / "ours").encode_prompt(prompt) == ids[0].tolist()
    code, text, _ = run(capsys, "--model", str(tmp_path / "ours"), prompt, "--temperature", "0",
                        "--max-new-tokens", "20", "--no-echo")
    assert code == 0 and text == expected + "\n"


def test_a_tokenizer_with_unused_ids_never_has_them_drawn(tmp_path, tokenizer):
    ranks = {token: idx for token, idx in tokenizer.ranks.items() if idx < 256 or idx % 3}  # holes in the merges
    holed = Tokenizer(ranks, tokenizer.special_tokens, tokenizer.pattern)
    unused = set(holed.unused_ids())
    assert unused and all(i not in holed.ranks.values() for i in unused)
    model_dir(tmp_path / "m", holed, vocab_size=holed.vocab_size)
    gen = TextGenerator(tmp_path / "m")
    for seed in range(10):
        done = gen.complete(gen.encode_prompt("the"), max_new_tokens=20, temperature=5.0, seed=seed, ignore_eos=True)
        assert not unused & set(done.ids)


@pytest.mark.parametrize(
    ("setup", "argv", "message"),
    [
        (None, ["--model", "{m}", "x", "--temperature", "-1"], "temperature must be ≥ 0"),
        (None, ["--model", "{m}", "x", "--top-p", "1.5"], "top_p must be in (0, 1]"),
        (None, ["--model", "{m}", "x", "--samples", "0"], "samples must be ≥ 1"),
        (None, ["--model", "{m}", "x", "--prompt-file", "{m}/config.json"], "not both"),
        (None, ["--model", "{m}", "x <|endoftext|>"], "disallowed special token"),
        (None, ["--model", "{m}", "x" * 400], "the model reads at most 64"),
        (None, ["--model", "{m}", "--prompt-file", "{m}/model.safetensors"], "not UTF-8 text"),
        (None, ["--model", "{m}/missing", "x"], "not a model directory"),
        (None, ["x"], "needs a model directory"),
        ("no-tokenizer", ["--model", "{m}", "x"], "holds no tokenizer.json; name one with --tokenizer"),
        ("small-model", ["--model", "{m}", "x"], "the tokenizer has 300 ids but the model only 200"),
        ("bad-eos", ["--model", "{m}", "x"], "eos_token_id 999 is not in the tokenizer"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(tmp_path, tokenizer, capsys, setup, argv, message):
    m = tmp_path / "m"
    model_dir(m, tokenizer, vocab_size=200 if setup == "small-model" else None)
    if setup == "no-tokenizer":
        (m / "tokenizer.json").unlink()
    if setup == "bad-eos":
        (m / "generation_config.json").write_text('{"eos_token_id": 999}')
    code, out, err = run(capsys, *[a.replace("{m}", str(m)) for a in argv])
    assert code == 2 and out == ""
    assert err.startswith("scratchlm: error:") and message in err and err.count("\n") == 1


def test_special_token_text_is_allowed_or_plain_on_request(tmp_path, tokenizer, capsys):
    model_dir(tmp_path / "m", tokenizer)
    gen = TextGenerator(tmp_path / "m")
    assert gen.encode_prompt("a<|endoftext|>", "allow")[-1] == tokenizer.eot_id
    assert tokenizer.eot_id not in gen.encode_prompt("a<|endoftext|>", "plain")
    code, out, _ = run(capsys, "--model", str(tmp_path / "m"), "a<|endoftext|>", "--plain-special",
                       "--max-new-tokens", "3", "--seed", "1")
    assert code == 0 and out.startswith("a<|endoftext|>")


def test_prompt_from_stdin_and_a_latest_pointer_as_the_model(tmp_path, tokenizer, capsys, monkeypatch):
    import io
    import sys

    run_dir = tmp_path / "run"
    model = model_dir(run_dir / "checkpoints" / "step-000004", tokenizer)
    (run_dir / "checkpoints" / "latest").write_text("step-000004\n")
    ids = generate(model, tokenizer.encode("señor"), 8, temperature=0, eos_id=tokenizer.eot_id,
                   vocab_limit=tokenizer.vocab_size)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("señor".encode())))
    code, out, _ = run(capsys, "--model", str(run_dir / "checkpoints" / "latest"), "--prompt-file", "-", "--temperature", "0",
                       "--max-new-tokens", "8")
    assert code == 0 and out == "señor" + tokenizer.decode(ids) + "\n"


def with_post_processor(path, tokenizer, processor):
    data = json.loads(tokenizer.to_hf_json())
    data["post_processor"] = processor
    (path / "tokenizer.json").write_text(json.dumps(data))


def template(single, table=None):
    return {"type": "TemplateProcessing", "single": single, "pair": [], "special_tokens": table or {}}


def test_begin_of_text_ids_follow_the_template_as_transformers_does(tmp_path, tokenizer):
    model_dir(tmp_path / "m", tokenizer)
    eot, im_start = tokenizer.eot_id, tokenizer.special_tokens["<|im_start|>"]
    bos = {"SpecialToken": {"id": "<|im_start|>", "type_id": 0}}
    text = {"Sequence": {"id": "A", "type_id": 0}}
    cases = [
        (template([bos, text]), [im_start]),
        # the template's own ids win over the tokenizer's (transformers reads them from the template)
        (template([bos, text], {"<|im_start|>": {"id": "<|im_start|>", "ids": [eot], "tokens": ["<|im_start|>"]}}),
         [eot]),
        ({"type": "Sequence", "processors": [{"type": "ByteLevel"}, template([bos, text])]}, [im_start]),
        (template([text, bos]), []),  # a suffix closes a text; a prompt is continued
        ({"type": "RobertaProcessing", "cls": ["<|im_start|>", im_start], "sep": ["<|endoftext|>", eot]}, [im_start]),
        ({"type": "ByteLevel"}, []),
    ]
    for processor, prefix in cases:
        with_post_processor(tmp_path / "m", tokenizer, processor)
        gen = TextGenerator(tmp_path / "m")
        assert gen.prefix_ids == prefix, processor
        assert gen.encode_prompt("the") == prefix + tokenizer.encode("the")


@pytest.mark.parametrize(
    "processor",
    [
        {"type": "Sequence", "processors": 5},
        template(5),
        template([{"SpecialToken": {"id": ["x"]}}]),
        template([{"SpecialToken": {"id": "<|nope|>"}}]),
        template([{"SpecialToken": {"id": "<|pad|>"}}], {"<|pad|>": {"ids": [10**6]}}),
        {"type": "RobertaProcessing", "cls": "<s>"},
    ],
)
def test_a_malformed_template_is_a_one_line_error(tmp_path, tokenizer, capsys, processor):
    model_dir(tmp_path / "m", tokenizer)
    with_post_processor(tmp_path / "m", tokenizer, processor)
    code, out, err = run(capsys, "--model", str(tmp_path / "m"), "the", "--max-new-tokens", "1")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err.startswith("scratchlm: error:") and "tokenizer.json" in err


def test_an_empty_prompt_starts_from_the_configured_begin_of_text(tmp_path, tokenizer):
    model_dir(tmp_path / "m", tokenizer)
    pad = tokenizer.special_tokens["<|pad|>"]
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"bos_token_id": pad, "eos_token_id": 3}))
    gen = TextGenerator(tmp_path / "m")
    assert gen.encode_prompt("") == [pad] and gen.eos_ids == [3]


def test_the_prompt_must_be_utf8_however_it_is_given_and_a_bom_is_dropped(tmp_path, tokenizer, capsys):
    model_dir(tmp_path / "m", tokenizer)
    m = str(tmp_path / "m")
    code, out, err = run(capsys, "--model", m, "--set", 'prompt="a\udcffb"')
    assert code == 2 and "the prompt is not UTF-8: byte 0xff at offset 1" in err
    (tmp_path / "p.txt").write_text("\ufeffthe cat", encoding="utf-8")
    code, out, _ = run(capsys, "--model", m, "--prompt-file", str(tmp_path / "p.txt"), "--jsonl",
                       "--max-new-tokens", "1", "--seed", "0")
    row = json.loads(out)
    assert row["prompt"] == "the cat" and row["prompt_tokens"] == len(tokenizer.encode("the cat"))


def test_a_prompt_typed_on_the_command_line_replaces_either_form_in_the_config_file(tmp_path, tokenizer, capsys):
    model_dir(tmp_path / "m", tokenizer)
    (tmp_path / "p.txt").write_text("from the file")
    (tmp_path / "text.toml").write_text(f'model = "{tmp_path / "m"}"\nprompt = "from the config"\n')
    (tmp_path / "file.toml").write_text(f'model = "{tmp_path / "m"}"\nprompt_file = "{tmp_path / "p.txt"}"\n')
    common = ["--jsonl", "--max-new-tokens", "1", "--seed", "0"]
    for config, argv, expected in [
        ("text.toml", ["--prompt-file", str(tmp_path / "p.txt")], "from the file"),
        ("file.toml", ["typed"], "typed"),
        ("text.toml", [], "from the config"),
    ]:
        code, out, err = run(capsys, "--config", str(tmp_path / config), *argv, *common)
        assert code == 0, err
        assert json.loads(out)["prompt"] == expected
    code, _, err = run(capsys, "--model", str(tmp_path / "m"), "x", "--prompt-file", str(tmp_path / "p.txt"))
    assert code == 2 and "not both" in err


def test_jsonl_stays_json_when_standard_output_is_not_utf8(tmp_path, tokenizer):
    """An ASCII stdout used to get Python's escapes (\\xf1) in the JSON lines, which no JSON reader takes."""
    model_dir(tmp_path / "m", tokenizer)
    prompt = "señor 漢字 😀"
    done = subprocess.run(
        [sys.executable, "-m", "scratchlm", "generate", "--model", str(tmp_path / "m"), prompt, "--jsonl",
         "--seed", "1", "--samples", "2", "--temperature", "3", "--max-new-tokens", "12", "--ignore-eos"],
        capture_output=True, env={**os.environ, "PYTHONIOENCODING": "ascii"}, timeout=120,
    )
    assert done.returncode == 0, done.stderr.decode()
    rows = [json.loads(line) for line in done.stdout.decode("ascii").splitlines()]
    assert [row["prompt"] for row in rows] == [prompt, prompt]
    gen = TextGenerator(tmp_path / "m")
    for row in rows:
        same = gen.complete(gen.encode_prompt(prompt), max_new_tokens=12, temperature=3, top_k=200,
                            seed=row["seed"], ignore_eos=True)
        assert row["text"] == same.text and any(ord(c) > 127 for c in row["text"])


def test_seeds_may_reach_the_top_of_torchs_range(tmp_path, tokenizer, capsys):
    from scratchlm.errors import ConfigError
    from scratchlm.infer.text import GenerateConfig

    GenerateConfig(model="m", seed=2**63 - 2, samples=2).validate()
    with pytest.raises(ConfigError, match="seed must be in"):
        GenerateConfig(model="m", seed=2**63 - 1, samples=2).validate()
    with pytest.raises(ConfigError, match=f"got seed 0 with samples {10**20}"):  # the samples are the fault
        GenerateConfig(model="m", seed=0, samples=10**20).validate()
    model_dir(tmp_path / "m", tokenizer)
    code, out, _ = run(capsys, "--model", str(tmp_path / "m"), "x", "--seed", str(2**63 - 2), "--samples", "2",
                       "--jsonl", "--max-new-tokens", "2")
    assert code == 0 and [json.loads(line)["seed"] for line in out.splitlines()] == [2**63 - 2, 2**63 - 1]


def test_a_pointer_file_that_is_not_text_is_a_one_line_error(tmp_path, tokenizer, capsys):
    model_dir(tmp_path / "run" / "checkpoints" / "step-000001", tokenizer)
    (tmp_path / "run" / "checkpoints" / "latest").write_bytes(b"\xff\xfe")
    code, _, err = run(capsys, "--model", str(tmp_path / "run" / "checkpoints" / "latest"), "x")
    assert code == 2 and "not UTF-8 text" in err and err.count("\n") == 1


def test_the_python_api_refuses_bad_settings_instead_of_turning_them_off(tmp_path, tokenizer):
    from scratchlm.errors import ConfigError

    model_dir(tmp_path / "m", tokenizer)
    gen = TextGenerator(tmp_path / "m")
    prompt = gen.encode_prompt("the")
    for bad in (dict(top_p=1.5), dict(top_k=-1), dict(temperature=-1.0)):
        settings = {"temperature": 1.0, **bad}
        with pytest.raises(ConfigError):
            gen.complete(prompt, max_new_tokens=2, **settings)
    assert len(gen.complete(prompt, max_new_tokens=2, temperature=1.0, top_k=0, top_p=1.0,
                            seed=0, ignore_eos=True).ids) == 2


def test_a_prompt_file_is_read_exactly_line_ends_included(tmp_path, tokenizer, capsys):
    """The file's CRLF and CR line ends used to be turned into LF (stdin kept them): a model trained
    on CRLF text was prompted with other bytes than it learned from."""
    model_dir(tmp_path / "m", tokenizer)
    text = "line one\r\nline two\rthree"
    (tmp_path / "p.txt").write_bytes(text.encode())
    code, out, _ = run(capsys, "--model", str(tmp_path / "m"), "--prompt-file", str(tmp_path / "p.txt"), "--jsonl",
                       "--max-new-tokens", "1", "--seed", "0")
    row = json.loads(out)
    assert code == 0 and row["prompt"] == text and row["prompt_tokens"] == len(tokenizer.encode(text))


def test_the_prompt_is_checked_before_the_weights_are_read(tmp_path, tokenizer, capsys):
    """A prompt the model cannot take (special-token text, too many tokens) was refused only after
    the weights were read: seconds for a large model, and a damaged weights file hid the mistake."""
    model_dir(tmp_path / "m", tokenizer)
    (tmp_path / "m" / "model.safetensors").write_bytes(b"not weights")
    m = str(tmp_path / "m")
    for prompt, message in (("x <|endoftext|>", "disallowed special token"), ("x" * 400, "the model reads at most 64")):
        code, out, err = run(capsys, "--model", m, prompt)
        assert code == 2 and out == "" and message in err, err
    code, _, err = run(capsys, "--model", m, "x")
    assert code == 2 and "not a readable safetensors file" in err


def test_a_closed_stdin_as_the_prompt_file_is_a_one_line_error(tmp_path, tokenizer, capsys, monkeypatch):
    """A process started with `<&-` has sys.stdin None; reading the prompt from it was a traceback."""
    import sys

    model_dir(tmp_path / "m", tokenizer)
    monkeypatch.setattr(sys, "stdin", None)  # what Python sets when file descriptor 0 is closed
    code, out, err = run(capsys, "--model", str(tmp_path / "m"), "--prompt-file", "-")
    assert code == 2 and out == ""
    assert err.startswith("scratchlm: error: stdin is closed") and err.count("\n") == 1


def test_a_closed_stdout_discards_the_streamed_text_as_it_does_the_echo(tmp_path, tokenizer, capsys, monkeypatch):
    """A process started with `>&-` has sys.stdout None: `print` (the echo, the summary) writes
    nothing, but each streamed piece was written to it directly, an AttributeError traceback."""
    import sys

    model_dir(tmp_path / "m", tokenizer)
    monkeypatch.setattr(sys, "stdout", None)  # what Python sets when file descriptor 1 is closed
    code = main(["generate", "--model", str(tmp_path / "m"), "the cat", "--max-new-tokens", "5", "--ignore-eos"])
    monkeypatch.undo()
    assert code == 0
    assert "5 new tokens after" in capsys.readouterr().err


def test_an_empty_prompt_falls_back_to_tokenizer_configs_bos_token_before_endoftext(tmp_path, tokenizer):
    """The order the guide gives: generation_config's bos_token_id, then tokenizer_config's
    bos_token, then <|endoftext|>."""
    model_dir(tmp_path / "m", tokenizer)
    (tmp_path / "m" / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>"}))
    assert TextGenerator(tmp_path / "m").encode_prompt("") == [tokenizer.special_tokens["<|im_start|>"]]
    (tmp_path / "m" / "generation_config.json").write_text(json.dumps({"bos_token_id": 5}))
    assert TextGenerator(tmp_path / "m").encode_prompt("") == [5]
