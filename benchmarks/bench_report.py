"""What every CPU benchmark shares: alternating timings and the Markdown report it writes."""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gzip
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from scratchlm.fsutil import atomic_write_bytes, atomic_write_text
from scratchlm.machine import describe_machine


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number of at least `minimum`. A count of rounds, steps or repeats
    of 0 otherwise ran the benchmark and then failed on an empty list of timings (or wrote an empty
    table), and a thread count of 0 was quietly taken as torch's default."""

    def parse(text: str) -> int:
        value = int(text)  # a ValueError: argparse's own "invalid int value"
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, not {value}")
        return value

    parse.__name__ = "int"
    return parse


def positive_number(text: str) -> float:
    """An argparse type: a finite number above 0 (seconds, megabytes)."""
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a number above 0, not {text}")
    return value


positive_number.__name__ = "float"


def alternate(
    fns: list[Callable[[], object]], rounds: int, warmup: int = 1, settle: int = 0
) -> list[list[float]]:
    """Seconds of each call of each function, the functions taking turns round by round, so that
    load from other processes on a shared machine hits all of them alike.

    `settle`: untimed calls at the start of each turn. A call that follows another function's
    first refills the caches that one evicted; where the thing measured runs alone in practice
    (a training loop runs one model), that refill is a cost of the alternation, not of either side.
    """
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for fn, samples in zip(fns, times):
            for _ in range(settle):
                fn()
            start = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - start)
    return times


def medians(fns: list[Callable[[], object]], rounds: int, warmup: int = 1) -> list[float]:
    """Median seconds of each function, timed by `alternate`."""
    return [statistics.median(samples) for samples in alternate(fns, rounds, warmup)]


def cpu_seconds() -> float:
    """CPU time of this process and its finished children (worker processes): a speed measure
    that other jobs on a shared machine do not inflate the way they inflate wall-clock time."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def header_lines(title: str) -> list[str]:
    """Title, date and machine (cores, CPU, Python, torch and its thread count)."""
    import torch  # here: the data benchmarks share this module without needing torch

    return [
        f"# {title}",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
        f"- machine: {describe_machine()}; torch {torch.__version__}, {torch.get_num_threads()} threads",
    ]


def table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> list[str]:
    """Lines of a Markdown table."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header), *("| " + " | ".join(r) + " |" for r in rows)]


def publish(lines: list[str], out: str | Path) -> None:
    """Print the report and write it to `out` (its folder made if missing) whole: a run stopped
    while writing leaves the earlier report, not a truncated one."""
    text = "\n".join(lines) + "\n"
    print(text)
    atomic_write_text(out, text)


@contextlib.contextmanager
def work_dir(given: str | None, prefix: str) -> Iterator[Path]:
    """The folder a benchmark builds its tokens and runs in: `given` (made if missing, and kept),
    else a temporary one removed when the block ends, on an error too. Runs hold checkpoints
    (gigabytes for host_memory.py), which left in /tmp would pile up run after run."""
    if given:
        path = Path(given)
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as temp:
        yield Path(temp)


def export_gzipped_trace(profiler: Any, trace: str | Path) -> None:
    """A torch.profiler run's Chrome trace, gzipped, written whole at `trace` (its folder made if
    missing). The plain JSON goes to a temp folder: named after `trace` minus its suffix, it was
    `trace` itself when that had none, and gzipping the file onto itself lost the trace."""
    with tempfile.TemporaryDirectory(prefix="scratchlm-trace-") as temp:
        plain = Path(temp) / "trace.json"
        profiler.export_chrome_trace(str(plain))
        atomic_write_bytes(trace, gzip.compress(plain.read_bytes()))
