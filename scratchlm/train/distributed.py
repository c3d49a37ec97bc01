"""Data parallelism on PyTorch's own engine: torchrun processes, DDP, and FSDP2 on CUDA.

Every process runs the same training script; `torchrun` starts them and tells each one who it is
through environment variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). Run as a
plain `python`/`scratchlm` command, the same code is a single process and nothing here talks to
anybody.

- DDP keeps a full copy of the model on every process and averages gradients during backward.
  With gradient accumulation, gradients are only averaged on the last micro-step
  (`sync_gradients(model, enabled=is_last)`), which saves one all-reduce per extra micro-step.
- FSDP2 (`fully_shard`) shards parameters, gradients and optimizer state across processes, for
  models that do not fit one GPU. Each transformer block is sharded on its own, then the root.
- Backends: gloo on CPU, NCCL on CUDA.

One machine, 8 processes (one per GPU; on CPU, pick a count that divides the cores):

    torchrun --standalone --nproc_per_node=8 -m scratchlm pretrain --config configs/gpt2-124m.toml

Several machines (run the same command on each; `--node_rank` differs, the rendezvous endpoint is
one reachable host:port, typically node 0; torchrun's c10d rendezvous needs no extra service):

    torchrun --nnodes=4 --nproc_per_node=8 --node_rank=$NODE_RANK \\
        --rdzv_backend=c10d --rdzv_id=my-run --rdzv_endpoint=$HEAD_NODE:29500 \\
        -m scratchlm pretrain --config configs/llama-1b.toml

With `--rdzv_backend=c10d`, `--node_rank` may be left out and `--nnodes=MIN:MAX` makes the job
elastic. All nodes must see the same tokens dir and config; only rank 0 writes logs and
checkpoints, so the output dir should be on storage every node can read when resuming. Set
`NCCL_SOCKET_IFNAME` (or `GLOO_SOCKET_IFNAME` on CPU) if the machines have several network
interfaces and the wrong one is picked.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import os
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from scratchlm.data.parallel import die_with_parent
from scratchlm.device import resolve_device
from scratchlm.errors import ConfigError, PeerFailed

STRATEGIES = ("ddp", "fsdp", "none")


@dataclass(frozen=True)
class DistInfo:
    """Who this process is in the job, and the device it computes on."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device
    is_main: bool
    backend: str | None  # None when running as a single process


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"environment variable {name}={value!r} is not an integer") from None


# What env:// rendezvous reads besides WORLD_SIZE: torchrun sets them all for every worker.
_JOB_VARIABLES = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def job_position() -> tuple[int, int, int]:
    """(world_size, rank, local_rank) of this process as the environment describes it, checked.

    WORLD_SIZE unset or 1 is a lone process, whatever RANK says. Why checked here: a WORLD_SIZE
    left in a shell without the rest ended in torch's traceback about MASTER_ADDR, and a RANK not
    below WORLD_SIZE waited for a peer that never comes (torch's 30 minutes), deaf to SIGTERM; a RANK
    with no WORLD_SIZE trained as the only process but printed no summary, as if another spoke for it."""
    world_size = _env_int("WORLD_SIZE", 1)
    if world_size < 1:
        raise ConfigError(f"environment variable WORLD_SIZE={world_size} is not a number of processes")
    if world_size == 1:
        return 1, 0, 0
    missing = [name for name in _JOB_VARIABLES if not os.environ.get(name)]
    if missing:
        raise ConfigError(
            f"WORLD_SIZE={world_size} is set but {', '.join(missing)} {'is' if len(missing) == 1 else 'are'} not: "
            "start several processes with torchrun (it sets them all), or unset WORLD_SIZE for one"
        )
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    if not 0 <= rank < world_size:
        raise ConfigError(f"RANK={rank} but WORLD_SIZE={world_size}: a rank runs from 0 to {world_size - 1}")
    if not 0 <= local_rank <= rank:
        raise ConfigError(f"LOCAL_RANK={local_rank} with RANK={rank}: a local rank runs from 0 to the rank")
    return world_size, rank, local_rank


@contextlib.contextmanager
def _native_prints_to_stderr() -> Iterator[None]:
    """Send what native code prints to stdout to stderr instead, while the group connects.

    Why: Gloo printed "[Gloo] Rank 0 is connected to 1 peer ranks ..." on stdout (torch 2.8),
    where `scratchlm pretrain` writes its JSON summary, which then no longer parsed. Where the C
    library can be loaded, its buffered output is flushed before file descriptor 1 is put back,
    so none of it lands there later."""
    if sys.stdout is not None:  # None: the process was started with stdout closed
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # no file descriptor 1 at all: nothing to keep clean
        yield
        return
    try:
        os.dup2(2, 1)
        yield
    finally:
        with contextlib.suppress(OSError, TypeError, AttributeError):  # no C library handle (Windows)
            ctypes.CDLL(None).fflush(None)
        os.dup2(saved, 1)
        os.close(saved)


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the torchrun job described by the environment, or describe a lone process.

    On CUDA each process uses GPU `LOCAL_RANK`. Calling it again after the group is up is harmless.
    The group lives as long as the process (left at exit): destroyed after one run and made again for
    the next (`sweep-lr`'s rates, two `train` calls), it hung the job, because a process that
    re-joined first read the store keys its slower peer's old group had left there.
    """
    world_size, rank, local_rank = job_position()
    device = resolve_device(device_name)
    if world_size <= 1:
        return DistInfo(0, 0, 1, device, True, None)
    if "TORCHELASTIC_RUN_ID" in os.environ:
        # Started by torchrun's agent: if it is killed outright, its workers trained on, unseen,
        # writing checkpoints and holding train.out, so the job's `--resume` was refused. Now its
        # death is a SIGTERM to every worker: they agree to stop, save a checkpoint and exit.
        die_with_parent(signal.SIGTERM)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPU(s) on this machine; "
                "use --nproc_per_node at most the GPU count"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        backend = "nccl"
    elif device.type == "cpu":
        backend = "gloo"
    else:
        raise ConfigError(f"multi-process training supports cpu and cuda devices, not {device.type}")
    if not dist.is_initialized():
        # Binding NCCL to our GPU up front lets it connect eagerly and makes barrier() use the right GPU.
        extra = {"device_id": device} if backend == "nccl" else {}
        with _native_prints_to_stderr():
            dist.init_process_group(backend=backend, rank=rank, world_size=world_size, **extra)
        atexit.register(cleanup)
    return DistInfo(rank, local_rank, world_size, device, rank == 0, backend)


def wrap_model(model: nn.Module, info: DistInfo, strategy: str = "ddp") -> nn.Module:
    """Make `model` data-parallel across the job; single-process runs get it back unchanged (DDP).

    "fsdp" shards every child of every nn.ModuleList (the transformer blocks), then the root,
    in place; it needs CUDA.
    """
    check_strategy(strategy, info.device)
    if strategy == "none":
        return model
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for module in list(model.modules()):
            if isinstance(module, nn.ModuleList):
                for block in module:
                    fully_shard(block)
        fully_shard(model)
        return model
    if info.world_size == 1:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids)


def check_strategy(strategy: str, device: torch.device) -> None:
    """One ConfigError where `strategy` cannot run on `device`: the rule `wrap_model` applies, kept
    here once so that `run_strategy` can apply it before a run writes anything."""
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown parallel strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if strategy == "fsdp" and device.type != "cuda":
        raise ConfigError(f"train.strategy = fsdp (FSDP) needs CUDA, not {device.type}; use train.strategy = ddp")


def run_strategy(strategy: str, device_name: str) -> str:
    """The strategy a run in this process applies ("none" alone, without torchrun), checked from
    the environment before the group starts. Why: refused only when the model was wrapped, a run
    had already made train.out, and the empty folder it left looked like a run's."""
    if job_position()[0] == 1:
        return "none"
    check_strategy(strategy, resolve_device(device_name))
    return strategy


def unwrap_model(model: nn.Module) -> nn.Module:
    """The user's module inside a DDP wrapper (FSDP2 shards in place, so it is returned as is)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def is_sharded(model: nn.Module) -> bool:
    """True for a module sharded in place by FSDP2's `fully_shard`."""
    return hasattr(model, "set_requires_gradient_sync") and hasattr(model, "reshard")


@contextlib.contextmanager
def sync_gradients(model: nn.Module, enabled: bool) -> Iterator[None]:
    """Run the enclosed backward with (enabled) or without gradient averaging across processes.

    Use `enabled=(micro_step == grad_accum - 1)`: earlier micro-steps only accumulate locally.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        with contextlib.nullcontext() if enabled else model.no_sync():
            yield
    elif is_sharded(model):
        model.set_requires_gradient_sync(enabled)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        yield


def is_distributed() -> bool:
    """True inside an initialized process group with more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def is_main_process() -> bool:
    """True for the process that speaks for the run (rank 0, or a run without torchrun): the
    others train alongside it, and their summaries would repeat its own on standard output."""
    return job_position()[1] == 0


def all_reduce_mean(t: torch.Tensor) -> torch.Tensor:
    """Average `t` over all processes, in place, and return it (no-op for a single process)."""
    if not is_distributed():
        return t
    if dist.get_backend() == "nccl" and not t.is_cuda:  # NCCL only moves GPU memory
        on_gpu = t.to(torch.device("cuda", torch.cuda.current_device()))
        dist.all_reduce(on_gpu, op=dist.ReduceOp.SUM)
        t.copy_(on_gpu)
    else:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    t.div_(dist.get_world_size())
    return t


def barrier() -> None:
    """Wait until every process gets here (no-op for a single process)."""
    if is_distributed():
        dist.barrier()


@contextlib.contextmanager
def failures_shared() -> Iterator[None]:
    """Run a block that may fail on some processes alone (rank 0's lock on train.out, its
    checkpoint write), then tell every process whether all of them got through: a process that
    failed raises its own error, the others a one-line `PeerFailed`. Why: the others went on to
    their next collective, and died there with a gloo "Connection reset by peer" traceback that
    buried the one line that said why. One gather per use (it also waits like `barrier`), never
    per step; the block must hold no collective, or a failed process would wait in this one while
    the others wait in that."""
    if not is_distributed():
        yield
        return
    try:
        yield
    except BaseException:
        with contextlib.suppress(RuntimeError):  # the others gone too: this error is the one to show
            _failed_ranks(ok=False)
            _let_gloo_release_its_work()
        raise
    failed = _failed_ranks(ok=True)
    if failed:
        _let_gloo_release_its_work()
        names = ", ".join(map(str, failed))
        raise PeerFailed(f"rank {names} failed: see its message" if len(failed) == 1 else
                         f"ranks {names} failed: see their messages")


# How long a process that is about to exit on an error leaves the GIL to the group's threads.
GLOO_RELEASE_S = 0.05


def _let_gloo_release_its_work() -> None:
    """Give the GIL away for a moment after the gather, when the process is about to end on an error.
    Why: gloo's worker thread frees the gather's work after `wait` returns, and freeing its tensors
    takes the GIL; a process that went straight from the gather to exit (its one error line, then
    interpreter shutdown within the 5 ms it may keep the GIL) had that thread take the GIL while
    the interpreter was finalizing, and died of SIGABRT ("terminate called without an active
    exception", exit -6 for a 2) in about one failed job in twenty (6 of 121 two-rank runs)."""
    time.sleep(GLOO_RELEASE_S)


def _failed_ranks(ok: bool) -> list[int]:
    """The ranks that said not ok, every process saying whether it is."""
    said: list[bool | None] = [None] * dist.get_world_size()
    dist.all_gather_object(said, ok)
    return [rank for rank, fine in enumerate(said) if not fine]


def leave_process_group() -> None:
    """Leave the group together, once a command's runs have ended on every process (they agree on
    every stop, so all of them get here): a barrier, then each destroys its group. Why not only at
    exit: there a process may tear its group down while its peer is still using or leaving its own,
    and once in CI a run that had finished ended with SIGABRT ("terminate called without an active
    exception") instead of exit 0. At exit (`cleanup`) stays for the ways out that skip this."""
    if is_distributed():
        barrier()
        cleanup()


def cleanup() -> None:
    """Leave the process group so the job exits cleanly (at exit for the group `init_distributed`
    made; a group is never re-made in one process, see there)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
