"""Benchmark: scratchlm's BPE trainer and encoder beside Hugging Face `tokenizers` (Rust).

Both train on the same corpus (the Python standard library's source, on every machine) with the
same pattern (gpt4), vocab size, special tokens and min_frequency, each in a fresh process so
that peak memory is its own. Then bytes per token is measured on held-out files and encoding
speed on one thread: ours (`Tokenizer.encode_ordinary`), the tiktoken `Encoding` it wraps, and
Hugging Face's encoder with its own trained vocab.

    python benchmarks/tokenizer.py [--mb 10] [--vocab 8192 32768] [--out benchmarks/results/tokenizer.md]

Targets (issue 3): training time <= 1.5x Hugging Face's; bytes per token within 1%; encoding
>= 10 MB/s per core.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

from bench_report import at_least, cpu_seconds, positive_number  # benchmarks/bench_report.py

from scratchlm.fsutil import atomic_write_text
from scratchlm.machine import cpu_model, usable_cores

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|im_start|>", "<|im_end|>"]


def corpus_files() -> list[Path]:
    root = Path(sysconfig.get_paths()["stdlib"])
    return sorted(p for p in root.rglob("*.py") if "site-packages" not in p.parts)


def load_corpus(train_mb: float, heldout_mb: float) -> tuple[list[str], list[str]]:
    """Training documents (first files) and held-out documents (the files after them)."""
    train, held, size = [], [], 0
    for path in corpus_files():
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if size < train_mb * 1e6:
            train.append(text)
        elif size < (train_mb + heldout_mb) * 1e6:
            held.append(text)
        else:
            break
        size += len(text.encode("utf-8"))
    return train, held


def peak_rss_mb() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024


def train_ours(args: argparse.Namespace, out: Path) -> dict:
    from scratchlm.tokenizer import Tokenizer

    train, _ = load_corpus(args.mb, args.heldout_mb)
    cpu = cpu_seconds()
    start = time.perf_counter()
    tok = Tokenizer.train(train, args.vocab_size, pattern="gpt4", workers=args.workers, show_progress=False)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    tok.save(out)
    return {"seconds": seconds, "cpu": cpu, "peak_mb": peak_rss_mb(), "vocab_size": tok.vocab_size}


def train_hf(args: argparse.Namespace, out: Path) -> dict:
    from scratchlm.tokenizer import GPT4_PATTERN
    from scratchlm.tokenizer.hf_reference import train_hf_reference

    train, _ = load_corpus(args.mb, args.heldout_mb)
    cpu = cpu_seconds()
    start = time.perf_counter()
    tok = train_hf_reference(train, args.vocab_size, SPECIALS, GPT4_PATTERN)
    seconds = time.perf_counter() - start
    cpu = cpu_seconds() - cpu
    tok.save(str(out / "tokenizer.json"))
    return {"seconds": seconds, "cpu": cpu, "peak_mb": peak_rss_mb(), "vocab_size": tok.get_vocab_size()}


def best_of(fn, repeats: int = 3) -> float:
    """Best CPU time of a single-threaded call (wall time would count other users' load)."""
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def measure_encoding(args: argparse.Namespace, ours_dir: Path, hf_dir: Path) -> dict:
    """Bytes per token on held-out text and single-thread encoding speed."""
    from tokenizers import Tokenizer as HFTokenizer

    from scratchlm.tokenizer import Tokenizer

    _, held = load_corpus(args.mb, args.heldout_mb)
    mb = sum(len(t.encode("utf-8")) for t in held) / 1e6
    ours = Tokenizer.load(ours_dir)
    hf = HFTokenizer.from_file(str(hf_dir / "tokenizer.json"))
    engine = ours._encoding  # the tiktoken Encoding our Tokenizer wraps
    ours_tokens = sum(len(ours.encode_ordinary(t)) for t in held)
    hf_tokens = sum(len(e.ids) for e in hf.encode_batch(held, add_special_tokens=False))
    return {
        "heldout_mb": mb,
        "ours_bpt": mb * 1e6 / ours_tokens,
        "hf_bpt": mb * 1e6 / hf_tokens,
        "ours_mbs": mb / best_of(lambda: [ours.encode_ordinary(t) for t in held]),
        "tiktoken_mbs": mb / best_of(lambda: [engine.encode_ordinary(t) for t in held]),
        "hf_mbs": mb / best_of(lambda: [hf.encode(t, add_special_tokens=False) for t in held]),
    }


def run_child(kind: str, args: argparse.Namespace, out: Path) -> dict:
    cmd = [
        sys.executable, __file__, "--child", kind, "--child-out", str(out), "--mb", str(args.mb),
        "--heldout-mb", str(args.heldout_mb), "--vocab-size", str(args.vocab_size), "--workers", str(args.workers),
    ]  # fmt: skip
    env = dict(os.environ, RAYON_NUM_THREADS=str(args.workers), TOKENIZERS_PARALLELISM="true")
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if result.returncode != 0:
        raise SystemExit(f"{kind} failed:\n{result.stderr}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=positive_number, default=10.0, help="training corpus size in MB")
    parser.add_argument("--heldout-mb", type=positive_number, default=1.0)
    parser.add_argument("--vocab", type=int, nargs="+", default=[8192, 32768])
    parser.add_argument("--workers", type=at_least(1), default=usable_cores(), help="processes/threads for both")
    parser.add_argument("--repeats", type=at_least(1), default=1, help="training runs per trainer (best is kept)")
    parser.add_argument("--out", type=Path, help="also write the Markdown table here")
    parser.add_argument("--child", choices=["ours", "hf", "encode"], help=argparse.SUPPRESS)
    parser.add_argument("--child-out", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--vocab-size", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "ours":
        print(json.dumps(train_ours(args, args.child_out)))
        return
    if args.child == "hf":
        print(json.dumps(train_hf(args, args.child_out)))
        return

    train, held = load_corpus(args.mb, args.heldout_mb)
    train_mb = sum(len(t.encode("utf-8")) for t in train) / 1e6
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for vocab in args.vocab:
            args.vocab_size = vocab
            ours_dir, hf_dir = Path(tmp, f"ours{vocab}"), Path(tmp, f"hf{vocab}")
            hf_dir.mkdir()
            ours_runs, hf_runs = [], []
            for _ in range(args.repeats):  # alternate, so a busy machine hurts both alike
                hf_runs.append(run_child("hf", args, hf_dir))
                ours_runs.append(run_child("ours", args, ours_dir))
            ours = min(ours_runs, key=lambda r: r["seconds"])
            hf = min(hf_runs, key=lambda r: r["seconds"])
            enc = measure_encoding(args, ours_dir, hf_dir)
            rows.append((vocab, ours, hf, enc))
            print(f"vocab {vocab}: ours {ours['seconds']:.2f}s, hf {hf['seconds']:.2f}s", file=sys.stderr)

    lines = [
        f"# Tokenizer benchmark ({datetime.date.today().isoformat()})",
        "",
        f"Machine: `nproc` = {usable_cores()}, CPU {cpu_model()}, Python {platform.python_version()}.",
        f"Corpus: Python {platform.python_version()} standard library source, {train_mb:.1f} MB for training "
        f"({len(train)} files), {enc['heldout_mb']:.2f} MB held out ({len(held)} files). Pattern gpt4, "
        f"min_frequency 2, 4 special tokens, {args.workers} worker processes (ours) / threads (HF). "
        f"Training wall time is the best of {args.repeats} run(s) (CPU s: all processes/threads of that run); "
        f"encoding speed is one thread, CPU time, best of 3.",
        "",
        "| vocab | train s (ours) | train s (HF) | ratio | CPU s (ours) | CPU s (HF) | CPU ratio "
        "| peak MB (ours) | peak MB (HF) | bytes/token (ours) | bytes/token (HF) | diff "
        "| encode MB/s ours | tiktoken | HF |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for vocab, ours, hf, enc in rows:
        diff = (enc["ours_bpt"] / enc["hf_bpt"] - 1) * 100
        lines.append(
            f"| {vocab:,} | {ours['seconds']:.2f} | {hf['seconds']:.2f} | {ours['seconds'] / hf['seconds']:.2f}x "
            f"| {ours['cpu']:.2f} | {hf['cpu']:.2f} | {ours['cpu'] / hf['cpu']:.2f}x "
            f"| {ours['peak_mb']:.0f} | {hf['peak_mb']:.0f} | {enc['ours_bpt']:.3f} | {enc['hf_bpt']:.3f} "
            f"| {diff:+.2f}% | {enc['ours_mbs']:.1f} | {enc['tiktoken_mbs']:.1f} | {enc['hf_mbs']:.1f} |"
        )
    lines += ["", "Targets (issue 3):"]
    for vocab, ours, hf, enc in rows:
        ratio = ours["seconds"] / hf["seconds"]
        diff = abs(enc["ours_bpt"] / enc["hf_bpt"] - 1) * 100
        lines.append(
            f"- vocab {vocab:,}: training {ratio:.2f}x HF's wall time (target <= 1.5x: "
            f"{'met' if ratio <= 1.5 else 'MISSED'}); bytes/token {diff:.2f}% from HF's (target <= 1%: "
            f"{'met' if diff <= 1 else 'MISSED'}); encoding {enc['ours_mbs']:.1f} MB/s per core "
            f"(target >= 10: {'met' if enc['ours_mbs'] >= 10 else 'MISSED'})"
        )
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        atomic_write_text(args.out, table)


if __name__ == "__main__":
    main()
