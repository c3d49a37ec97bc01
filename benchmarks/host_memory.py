"""CPU pretraining with glibc's defaults beside `train.keep_host_memory = true`: speed and heap.

    python benchmarks/host_memory.py --data ../shared/data/tinyshakespeare.txt --seconds 150 --rounds 2

Why: `train/host_memory.py` makes glibc keep freed memory in the process, so the large tensors a
CPU step frees and re-allocates are not page-faulted in again every step. Its risk is heap
fragmentation: if the heap kept growing, a long run would end out of memory. This runs real
`scratchlm pretrain` processes, the two settings taking turns, on a model whose logits and
gradients are tens of MB (the sizes that glibc would otherwise hand back to the kernel), with
evaluation and checkpoints interleaved so that the allocation pattern changes during the run.
The resident set size (RSS) of each process is sampled every 0.2 s; "growth" compares the
largest RSS of the last third of the run with that of the middle third. Prints a table and
writes it to benchmarks/results/host-memory.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_report import (  # benchmarks/bench_report.py
    at_least,
    header_lines,
    positive_number,
    publish,
    table,
    work_dir,
)
from shakespeare import build_tokens  # benchmarks/shakespeare.py

REPO = Path(__file__).resolve().parents[1]

# A ~16M-parameter Llama-style model at batch 8 x 256: logits 2,048 x 8,192 (64 MB in fp32).
RUN_SETTINGS = [
    "model.n_layer=6", "model.n_head=8", "model.n_kv_head=4", "model.d_model=384", "model.d_ff=1024",
    "model.max_seq_len=256", 'model.pos="rope"', 'model.norm="rmsnorm"', 'model.mlp="swiglu"',
    "model.tie_embeddings=false",
    "train.micro_batch=8", "train.seq_len=256", "train.batch_tokens=2048", "train.optimizer=\"adamw\"",
    "train.lr=1e-3", "train.warmup_steps=10", "train.eval_every=20", "train.eval_batches=4",
    "train.checkpoint_every=40", "train.log_every=10",
]  # fmt: skip


def resident_mb(pid: int) -> float | None:
    """The process's resident set size in MB, or None once it has exited."""
    try:
        with open(f"/proc/{pid}/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


def train_once(tokens: Path, out: Path, keep: bool, seconds: float, precision: str) -> dict:
    """One `scratchlm pretrain` process; its summary plus the RSS samples taken while it ran."""
    overrides = [
        f"data.tokens={json.dumps(str(tokens))}", f"train.out={json.dumps(str(out))}",
        f"train.max_seconds={seconds}", f"train.keep_host_memory={'true' if keep else 'false'}",
        f'train.precision="{precision}"', *RUN_SETTINGS,
    ]
    cmd = [sys.executable, "-m", "scratchlm", "pretrain", "--config", str(REPO / "configs" / "shakespeare.toml")]
    for item in overrides:
        cmd += ["--set", item]
    samples: list[float] = []
    with tempfile.TemporaryFile("w+") as stdout, tempfile.TemporaryFile("w+") as stderr:
        proc = subprocess.Popen(cmd, stdout=stdout, stderr=stderr, text=True)
        while proc.poll() is None:
            rss = resident_mb(proc.pid)
            if rss is not None:
                samples.append(rss)
            time.sleep(0.2)
        stdout.seek(0)
        stderr.seek(0)
        text, errors = stdout.read(), stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"pretrain failed (exit {proc.returncode}): {errors.strip().splitlines()[-1:]}")
    summary = json.loads(text[text.rindex("\n{") + 1 :] if "\n{" in text else text)
    return {"summary": summary, "rss": samples}


def row(label: str, result: dict) -> tuple[str, ...]:
    s, rss = result["summary"], result["rss"]
    third = max(1, len(rss) // 3)
    middle, last = max(rss[third : 2 * third] or rss), max(rss[2 * third :] or rss)
    return (
        label, f"{s['steps']}", f"{s['tokens_per_s']:,.0f}", f"{max(rss):,.0f}", f"{middle:,.0f}", f"{last:,.0f}",
        f"{last - middle:+,.0f}",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="tinyshakespeare.txt")
    parser.add_argument("--seconds", type=positive_number, default=150.0, help="training wall clock per process")
    parser.add_argument("--rounds", type=at_least(1), default=2, help="processes per setting, taking turns")
    parser.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--work", metavar="DIR", help="keep tokens and runs here (default: a temp dir, removed at the end)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "host-memory.md"))
    args = parser.parse_args()
    if not Path(args.data).is_file():
        parser.error(f"--data {args.data}: no such file")

    text = Path(args.data).read_text(encoding="utf-8")
    rows = []
    with work_dir(args.work, "scratchlm-host-memory-") as work:
        tokens, _ = build_tokens(text, work / "bpe", 8192)
        for r in range(args.rounds):
            for keep in (False, True):
                label = ("keep_host_memory" if keep else "glibc defaults") + f", run {r + 1}"
                result = train_once(tokens, work / f"run-{r}-{int(keep)}", keep, args.seconds, args.precision)
                rows.append(row(label, result))
                print(" | ".join(rows[-1]), flush=True)

    header = ("setting", "steps", "tokens/s", "peak RSS MB", "max RSS, middle third", "max RSS, last third", "growth MB")
    lines = [
        *header_lines("CPU pretraining: glibc malloc defaults vs train.keep_host_memory"),
        f"- `scratchlm pretrain`, {args.seconds:g} s per process, precision {args.precision}, Tiny Shakespeare "
        "(BPE 8,192); model and schedule: " + ", ".join(RUN_SETTINGS),
        "- RSS sampled every 0.2 s from /proc; growth = max of the last third minus max of the middle third",
        "",
        *table(header, rows),
    ]
    publish(lines, args.out)


if __name__ == "__main__":
    main()
