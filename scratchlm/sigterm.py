"""SIGTERM stops a CLI stage as Ctrl-C does: `Terminated` (a KeyboardInterrupt) raised where the
main thread is, so the stage's clean-up and roll-back run and the CLI exits 143.

One exception: not while a module is being imported. Module set-up code may swallow any
exception, and the signal would then be lost, the stage running on to the end. Cython's does,
around its `Sequence.register` calls, and `data prepare` first imports such a module
(numpy.random) mid-stage. There the stop is held back and the signal sent again shortly, as a
real signal to the main thread (so a blocking read there is interrupted as the first one was),
until the import is over or `MAX_HOLD_S` has passed. A stop still held when the stage ends
is reported by `main` as terminated all the same.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading
import time
from types import FrameType

from scratchlm.errors import Terminated

# The modules whose frames run an import. `_frozen_importlib*` are their names before `importlib`
# itself is imported, which renames them.
_IMPORT_MACHINERY = frozenset(
    {"importlib._bootstrap", "importlib._bootstrap_external", "_frozen_importlib", "_frozen_importlib_external"}
)
RESEND_S = 0.01  # how often a held-back stop tries again
MAX_HOLD_S = 1.0  # after this the stop is raised even inside an import: an import may never end


class SigtermStop:
    """SIGTERM's handler for one `main()` call, whose frame is `main_frame` (module doc)."""

    def __init__(self, main_frame: FrameType | None) -> None:
        self.main_pid = os.getpid()
        self.main_frame = main_frame
        self.held_since: float | None = None  # when a stop was first held back by an import
        self.raised = False

    @property
    def held(self) -> bool:
        """Whether a SIGTERM came while an import ran (whether or not it was raised since)."""
        return self.held_since is not None

    def __call__(self, signum: int, frame: FrameType | None) -> None:
        if os.getpid() != self.main_pid:  # a forked worker: end as SIGTERM would have ended it
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if _importing(frame, self.main_frame):
            if self.held_since is None:
                self.held_since = time.monotonic()
            if time.monotonic() - self.held_since < MAX_HOLD_S:
                again = threading.Timer(RESEND_S, self._send_again, (signum,))
                again.daemon = True  # it must never hold the process open
                again.start()
                return
        self.raised = True  # no more re-sends: they would interrupt the clean-up
        raise Terminated

    def _send_again(self, signum: int) -> None:
        """The held-back signal again, while this handler is still the one installed."""
        if self.raised or signal.getsignal(signal.SIGTERM) is not self:
            return  # raised, or `main` is over (it reports the held stop itself)
        if hasattr(signal, "pthread_kill"):
            signal.pthread_kill(threading.main_thread().ident, signum)
        else:  # threads cannot be signalled here: the handler runs at the next bytecode instead
            _thread.interrupt_main(signum)


def _importing(frame: FrameType | None, stop: FrameType | None) -> bool:
    """Whether `frame` runs inside an import begun after `stop`, its caller's frame."""
    while frame is not None and frame is not stop:
        if frame.f_globals.get("__name__") in _IMPORT_MACHINERY:
            return True
        frame = frame.f_back
    return False
