"""The ordered parallel map that `data prepare` and `data tokenize` share."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
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
    """
    pending: deque[tuple[Key, Future]] = deque()
    try:
        for key, argument in jobs:
            pending.append((key, pool.submit(function, argument)))
            if len(pending) >= in_flight:
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    except BrokenProcessPool:
        raise ScratchLMError(
            f"a {stage} worker process died (killed or out of memory?); retry, or use workers=1"
        ) from None
    finally:
        for _, future in pending:
            future.cancel()
