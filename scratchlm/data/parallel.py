"""The ordered parallel map that `data prepare`, `data tokenize` and `tokenizer train` share, the
way to stop its process pool at once, how the latter two start their workers, and how every
worker ends with the process that started it."""

from __future__ import annotations

import contextlib
import ctypes
import multiprocessing
import os
import signal
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import TypeVar

from scratchlm.errors import ScratchLMError

Key = TypeVar("Key")
Argument = TypeVar("Argument")
Result = TypeVar("Result")


def ordered_map(
    pool: Executor,
    function: Callable[[Argument], Result],
    jobs: Iterable[tuple[Key, Argument]],
    in_flight: int,
    stage: str,
) -> Iterator[tuple[Key, Result]]:
    """`(key, function(argument))` for each `(key, argument)` job, in job order.

    At most `in_flight` jobs are submitted ahead of the one being waited for: enough to keep
    every worker busy, few enough that memory stays bounded. A worker process that dies (killed,
    out of memory) ends the stage with one clear error instead of a traceback.

    Interrupts belong to this process: workers start (inside `submit`) with Ctrl-C held, so one
    pressed in a terminal, which reaches the whole process group, stops the stage here instead of
    killing workers halfway through their start-up with tracebacks of their own. Whatever ends
    the stage early, the pool is stopped at once (`stop_pool_now`).
    """
    pending: deque[tuple[Key, Future]] = deque()
    try:
        for key, argument in jobs:
            with ctrl_c_held():
                pending.append((key, pool.submit(function, argument)))
            if len(pending) >= in_flight:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    except BrokenProcessPool:
        stop_pool_now(pool)
        raise ScratchLMError(
            f"a {stage} worker process died (killed or out of memory?); retry, or use workers=1"
        ) from None
    except BaseException:
        stop_pool_now(pool)
        raise


@contextlib.contextmanager
def ctrl_c_held() -> Iterator[None]:
    """SIGINT blocked in this thread meanwhile: processes started now inherit the mask, so they
    never see it; here one that arrives is only delayed, to the end of the block."""
    if not hasattr(signal, "pthread_sigmask"):  # not POSIX: no process-group Ctrl-C to keep out
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


_MANAGER_EXIT_S = 10.0  # the pool's manager thread ends within milliseconds once its workers are gone


def stop_pool_now(pool: Executor) -> None:
    """End a pool's work now: its queued jobs are dropped, and a process pool's workers are
    terminated (killed if they linger) and its threads wound down before this returns.

    Why not `shutdown(wait=True)`: that lets the workers finish every queued job first, seconds
    of work for a stage being abandoned and rolled back. Queued jobs are not cancelled here
    either: the pool's manager thread fails them itself once it sees the workers gone, and in
    Python 3.11 a job cancelled under it crashes that thread (InvalidStateError) before it
    unblocks the feeder thread, which then stays stuck writing a batch into a pipe no worker
    reads, and the interpreter waits for it at exit for ever.
    """
    if not isinstance(pool, ProcessPoolExecutor):
        pool.shutdown(wait=False, cancel_futures=True)
        return
    # CPython's own attributes (3.9-3.13), read before `shutdown` drops them; defensively, as
    # they are not public API.
    processes = list((getattr(pool, "_processes", None) or {}).values())
    call_queue = getattr(pool, "_call_queue", None)
    result_queue = getattr(pool, "_result_queue", None)
    manager = getattr(pool, "_executor_manager_thread", None)
    pool.shutdown(wait=False)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join(timeout=_MANAGER_EXIT_S)
        if process.is_alive():
            process.kill()
            process.join(timeout=_MANAGER_EXIT_S)
    # A worker killed while sending a result leaves half a message in the result pipe, and the
    # manager thread would wait for its end for ever: this process holds a write end too. Closed,
    # the read ends at EOF once the workers are gone, which the manager takes as a broken pool.
    writer = getattr(result_queue, "_writer", None)
    if writer is not None:
        writer.close()
    # With its workers gone the manager thread fails the queued jobs, closes the pipe's read end
    # (so the feeder's blocked write fails and it ends) and joins the feeder. Waited for here:
    # left running, it races Python's exit hooks (an "Exception ignored ... Bad file descriptor").
    if manager is not None:
        manager.join(timeout=_MANAGER_EXIT_S)
    if call_queue is not None and (manager is None or manager.is_alive()):
        call_queue.cancel_join_thread()  # last resort: never wait at exit for a feeder stuck for good


_PR_SET_PDEATHSIG = 1  # prctl(2): the signal this process gets when its parent thread ends


def die_with_parent(signal_number: int = signal.SIGKILL) -> None:
    """Run first in each pool worker: on Linux, have the kernel kill it when the process that
    started it dies. Why: a stage killed outright (`kill -9`, the out-of-memory killer) runs no
    clean-up, and its workers would wait for work for ever on pipes they hold open themselves,
    keeping their memory and, in `data tokenize`, the output's lock, so the re-run that rolls an
    interrupted append back was refused as busy. The signal comes when the thread that started
    the worker ends: the one running the stage (the CLI's main thread), which outlives its pool.
    A torchrun worker asks for SIGTERM instead (`train/distributed.py`): it then saves a checkpoint."""
    if not sys.platform.startswith("linux"):
        return
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal_number, 0, 0, 0)
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # it died before the request was made
        os._exit(1)


def pool_context() -> multiprocessing.context.BaseContext:
    """Fork on Linux: a forked worker starts in milliseconds with the parent's objects (a
    tokenizer, say) already in memory. Elsewhere (macOS, Windows) fork is unsafe or missing, so
    workers are spawned and must load what they need themselves (`forks` tells which)."""
    return multiprocessing.get_context("fork" if forks() else "spawn")


def forks() -> bool:
    """Whether `pool_context()` forks its workers on this platform."""
    return sys.platform.startswith("linux")
