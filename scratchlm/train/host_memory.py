"""Keep freed host memory inside the process, so large CPU tensors are not page-faulted anew
every training step.

Why: glibc's malloc hands every block above a threshold (at most 32 MB) straight back to the
kernel when it is freed. A CPU training step frees and re-allocates the same large tensors every
time (the vocab × width gradients, autocast's bf16 weight copies, activations), and touching a
freshly mapped block costs one page fault per 4 KB page. On the 2-core development VM a
154 MB gradient took 0.2–0.28 s to zero-fill for that reason alone. With this setting the
model benchmark's steps got faster where tensors are large (GPT-2 124M shape in bf16: 258 → 326
tokens/s; 10M Llama shape in fp32: 2,300 → 3,385; benchmarks/RESULTS.md). The price: the
process keeps its peak heap size until it exits, and glibc's heap can fragment: a small
allocation placed inside a freed large block makes the next large request grow the heap (and
fault) after all, which a test probe showed in 1 of 6 processes on the first reuse. That growth
is a one-off: the next requests reuse the new block. Measured over whole `scratchlm pretrain`
runs (`benchmarks/host_memory.py`: evaluation every 20 steps and a checkpoint every 40
interleaved), the resident size stayed flat (0 MB growth from the middle to the last third of
each run) while training ran 15–18% faster (sixth session, 150 s runs; peak 980–996 MB against
960–976 MB with glibc's defaults). Since the trainer also frees gradients between steps under
this setting: 1.07–1.10× faster on a faster machine, with a lower peak (941–949 against
1,003–1,005 MB; twenty-first session, 120 s runs). So CPU runs apply it by default;
`train.keep_host_memory = false` turns it off, e.g. for a run inside a process that must give
memory back (a notebook doing other work afterwards).

Linux with glibc only; elsewhere this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's malloc.h
_M_MMAP_MAX = -4
_applied = False


def keep_freed_memory() -> bool:
    """Make glibc serve large allocations from its heap and never trim it; True if applied.

    Process-wide and irreversible, so call it only in a process that exists to train.
    """
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1) == 1
    _applied = ok
    return ok
