"""The benchmark scripts' own behaviour (not their timings): work dirs, arguments, written files."""

from __future__ import annotations

import gzip
import importlib
import json
import random
import tempfile
from pathlib import Path
from types import ModuleType

import pytest

from scratchlm.train.trainer import WARMUP_STEPS_FOR_SPEED

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Import a benchmark script as the scripts import each other (their folder on sys.path), with
    temp dirs made under this test's own folder so that what a script leaves behind can be seen."""
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()

    def load(name: str) -> ModuleType:
        return importlib.import_module(name)

    return load


def small_corpus(path: Path) -> Path:
    rng = random.Random(0)
    words = ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(2, 7))) for _ in range(200)]
    path.write_text("\n\n".join(" ".join(rng.choices(words, k=60)) for _ in range(120)), encoding="utf-8")
    return path


def left_in_temp(tmp_path: Path) -> list[str]:
    """What the scripts left in the temp folder (torch's own compile cache aside)."""
    return sorted(p.name for p in (tmp_path / "tmp").iterdir() if not p.name.startswith("torchinductor"))


TINY_RUN = [
    "--set", "train.max_steps=2", "--set", "train.micro_batch=2", "--set", "train.seq_len=32",
    "--set", "train.batch_tokens=64", "--set", "model.max_seq_len=32", "--set", "model.n_layer=1", "--set", "train.warmup_steps=0",
]  # fmt: skip


def test_shakespeare_removes_its_temp_work_dir(bench, tmp_path: Path) -> None:
    shakespeare = bench("shakespeare")
    data = small_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "result.json"
    assert shakespeare.main(["--data", str(data), "--vocab-size", "300", "--json", str(out), *TINY_RUN]) == 0
    assert out.is_file()
    assert left_in_temp(tmp_path) == []  # tokens, tokenizer and the run's checkpoint are gone


def test_shakespeare_keeps_a_given_work_dir(bench, tmp_path: Path) -> None:
    shakespeare = bench("shakespeare")
    data = small_corpus(tmp_path / "corpus.txt")
    work = tmp_path / "work"
    assert shakespeare.main(["--data", str(data), "--vocab-size", "300", "--work", str(work), *TINY_RUN]) == 0
    assert (work / "bpe" / "tokens" / "meta.json").is_file() and (work / "run").is_dir()


def test_gpu_124m_smoke_run_removes_its_temp_work_dir(bench, tmp_path: Path) -> None:
    gpu_124m = bench("gpu_124m")
    out = tmp_path / "result.json"
    assert gpu_124m.main(["--shape", "tiny", "--steps", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["steps"] == 1 + WARMUP_STEPS_FOR_SPEED
    assert left_in_temp(tmp_path) == []  # its tokens dir and the run's checkpoint are gone


def test_gpu_124m_trace_with_too_few_steps_is_refused_before_the_run(bench, tmp_path: Path, capsys) -> None:
    gpu_124m = bench("gpu_124m")
    with pytest.raises(SystemExit) as stop:
        gpu_124m.main(["--shape", "tiny", "--steps", "1", "--trace", str(tmp_path / "t.json.gz")])
    assert stop.value.code == 2
    assert f"--trace needs --steps {gpu_124m.TRACE_MIN_STEPS} or more" in capsys.readouterr().err
    assert left_in_temp(tmp_path) == []  # refused before any tokens were made


@pytest.mark.parametrize("name", ["trace", "trace.json.gz"])
def test_gpu_124m_trace_is_written_whatever_its_name(bench, tmp_path: Path, name: str) -> None:
    gpu_124m = bench("gpu_124m")
    trace = tmp_path / name
    steps = str(gpu_124m.TRACE_MIN_STEPS)
    assert gpu_124m.main(["--shape", "tiny", "--steps", steps, "--trace", str(trace)]) == 0
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert any(event.get("name", "").startswith("ProfilerStep#") for event in events)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["tmp", name])  # no plain JSON beside it
    assert left_in_temp(tmp_path) == []


@pytest.mark.parametrize("row", ["fused:0", "fused:", "fast:16"])
def test_gpu_step_breakdown_refuses_a_bad_row_before_looking_for_a_gpu(bench, row: str, capsys) -> None:
    breakdown = bench("gpu_step_breakdown")
    with pytest.raises(SystemExit) as stop:
        breakdown.main(["--rows", row])
    assert stop.value.code == 2
    assert f"--rows: {row!r} is not variant:micro-batch" in capsys.readouterr().err


def test_gpu_step_breakdown_refuses_a_file_as_the_trace_folder(bench, tmp_path: Path, capsys) -> None:
    breakdown = bench("gpu_step_breakdown")
    (tmp_path / "traces").write_text("not a folder")
    with pytest.raises(SystemExit) as stop:
        breakdown.main(["--trace", str(tmp_path / "traces")])
    assert stop.value.code == 2
    assert "is a file" in capsys.readouterr().err


def test_a_trace_goes_into_a_folder_not_yet_made(bench, tmp_path: Path) -> None:
    """gpu_step_breakdown's --trace DIR: the traces are written after minutes of GPU work, so a
    folder not made beforehand must not lose them."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    bench_report = bench("bench_report")
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        torch.ones(4, 4).matmul(torch.ones(4, 4))
    trace = tmp_path / "traces" / "fused-16.json.gz"
    bench_report.export_gzipped_trace(profiler, trace)
    assert json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    assert left_in_temp(tmp_path) == []


def test_gpu_124m_default_shape_without_a_gpu_is_refused(bench, tmp_path: Path, capsys) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is here: the 124M run would start")
    gpu_124m = bench("gpu_124m")
    assert gpu_124m.main(["--steps", "1"]) == 2
    assert "--shape 124m needs a CUDA GPU" in capsys.readouterr().err
    assert left_in_temp(tmp_path) == []


def test_a_report_replaces_the_old_one_whole(bench, tmp_path: Path) -> None:
    """A reader of the earlier report (or a run stopped mid-write) never sees a half-written file:
    the new report is a new file renamed over the old, not the old one truncated and rewritten."""
    bench_report = bench("bench_report")
    out = tmp_path / "results" / "model.md"
    bench_report.publish(["# earlier run"], out)
    with open(out, encoding="utf-8") as earlier:
        bench_report.publish(["# this run", "| a | b |"], out)
        assert earlier.read() == "# earlier run\n"
    assert out.read_text(encoding="utf-8") == "# this run\n| a | b |\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["model.md"]


def test_shakespeare_json_replaces_the_old_one_whole(bench, tmp_path: Path) -> None:
    shakespeare = bench("shakespeare")
    data = small_corpus(tmp_path / "corpus.txt")
    out = tmp_path / "result.json"
    out.write_text('{"val_bpb": 9.0}\n')
    with open(out, encoding="utf-8") as earlier:
        assert shakespeare.main(["--data", str(data), "--vocab-size", "300", "--json", str(out), *TINY_RUN]) == 0
        assert earlier.read() == '{"val_bpb": 9.0}\n'
    assert json.loads(out.read_text())["steps"] == 2


BAD_ARGUMENTS = [
    ("generate", ["--sizes", "tiny", "--families", "gpt2", "--new-tokens", "2", "--rounds", "0"],
     "argument --rounds: must be 1 or more, not 0"),
    ("generate", ["--sizes", "tiny", "--families", "llama", "--new-tokens", "100"],
     "--new-tokens 100 exceed the tiny llama model's context of 128 tokens"),
    ("model", ["--sizes", "tiny", "--families", "gpt2", "--compile-sizes", "--no-bf16", "--threads", "0"],
     "argument --threads: must be 1 or more, not 0"),
    ("matmul", ["--no-model", "--rounds", "0"], "argument --rounds: must be 1 or more, not 0"),
    ("tokenizer", ["--mb", "0"], "argument --mb: must be a number above 0, not 0"),
    ("shakespeare", ["--data", "missing.txt"], "--data missing.txt: no such file"),
    ("shakespeare", ["--data", "CORPUS", "--vocab-size", "300", "--set", "train.no_such_key=1"],
     "unknown config key 'train.no_such_key'"),
    ("host_memory", ["--data", "CORPUS", "--rounds", "0"], "argument --rounds: must be 1 or more, not 0"),
]  # fmt: skip


@pytest.mark.parametrize(("script", "argv", "message"), BAD_ARGUMENTS)
def test_bad_arguments_are_one_line_errors_before_any_work(
    bench, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys, script: str, argv: list[str], message: str
) -> None:
    module = bench(script)
    corpus = str(small_corpus(tmp_path / "corpus.txt"))
    argv = [corpus if arg == "CORPUS" else arg for arg in argv]
    out = ["--out", str(tmp_path / "report.md")] if script not in ("shakespeare", "tokenizer") else []
    monkeypatch.setattr("sys.argv", [f"{script}.py", *argv, *out])
    with pytest.raises(SystemExit) as stop:
        module.main()
    err = capsys.readouterr().err
    assert stop.value.code == 2
    assert err.strip().splitlines()[-1].startswith(f"{script}.py: error: ") and message in err
    assert not (tmp_path / "report.md").exists() and left_in_temp(tmp_path) == []


def test_compile_modes_shows_why_a_case_failed(bench) -> None:
    """Each case runs in a child process; its failure must carry the child's own error."""
    compile_modes = bench("compile_modes")
    with pytest.raises(SystemExit) as stop:
        compile_modes.run_case("no-such-case", "defaults", 1)
    assert "no-such-case with malloc defaults failed" in str(stop.value.code)
    assert "invalid choice: 'no-such-case'" in str(stop.value.code)
