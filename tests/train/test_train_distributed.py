"""Data parallelism: a real 2-process gloo job on CPU against single-process arithmetic."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn
from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
from torch.distributed.fsdp import fully_shard
from train_core_helpers import build_tokens_dir, free_port, tiny_config, write_toml

from scratchlm.errors import ConfigError
from scratchlm.train.distributed import (
    DistInfo,
    all_reduce_mean,
    barrier,
    cleanup,
    init_distributed,
    is_main_process,
    sync_gradients,
    unwrap_model,
    wrap_model,
)
from scratchlm.train.optim import build_optimizer

WORLD, ACCUM = 2, 2


def make_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def micro_batch(rank: int, micro_step: int):
    g = torch.Generator().manual_seed(100 * rank + micro_step)
    return torch.randn(4, 6, generator=g), torch.randn(4, 3, generator=g)


def loss_of(model, x, y):
    return ((model(x) - y) ** 2).mean() / ACCUM


def launch(worker_fn, *args) -> None:
    """Start WORLD processes like torchrun would. Fork reuses the already-imported torch, but not
    where CUDA is present: there autograd's device threads, started by any earlier backward in
    this process, cannot cross a fork."""
    forkable = "fork" in mp.get_all_start_methods() and not torch.cuda.is_available()
    method = "fork" if forkable else "spawn"
    mp.start_processes(worker_fn, args=(free_port(), *args), nprocs=WORLD, join=True, start_method=method)


def torchrun_env(rank: int, port: int) -> None:
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(WORLD),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)


def worker(rank: int, port: int, out_dir: str) -> None:
    torchrun_env(rank, port)
    info = init_distributed("cpu")
    model = wrap_model(make_model(), info, "ddp")
    communications = []

    def counting_allreduce(state, bucket):
        communications.append(bucket.index())
        return allreduce_hook(state, bucket)

    model.register_comm_hook(torch.distributed.group.WORLD, counting_allreduce)
    record = {"info": (info.rank, info.world_size, info.backend, info.is_main)}
    for micro_step in range(ACCUM):
        last = micro_step == ACCUM - 1
        with sync_gradients(model, enabled=last):
            loss_of(model, *micro_batch(rank, micro_step)).backward()
        record[f"comms_after_{micro_step}"] = len(communications)
        record[f"grads_after_{micro_step}"] = [p.grad.clone() for p in model.parameters()]
    value = torch.tensor([float(rank + 1)])
    record["mean"] = all_reduce_mean(value).item()
    barrier()
    record["unwrapped"] = type(unwrap_model(model)).__name__
    torch.save(record, os.path.join(out_dir, f"rank{rank}.pt"))
    cleanup()


@pytest.fixture(scope="module")
def ddp_records(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    launch(worker, str(out_dir))
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]


def reference_grads():
    """One process, all WORLD x ACCUM micro-batches accumulated, then averaged over ranks."""
    model = make_model()
    for rank in range(WORLD):
        for micro_step in range(ACCUM):
            loss_of(model, *micro_batch(rank, micro_step)).backward()
    return [p.grad / WORLD for p in model.parameters()]


def test_ranks_know_who_they_are(ddp_records):
    assert [r["info"] for r in ddp_records] == [(0, 2, "gloo", True), (1, 2, "gloo", False)]
    assert all(r["unwrapped"] == "Sequential" for r in ddp_records)


def test_ddp_gradients_equal_single_process_average(ddp_records):
    expected = reference_grads()
    for record in ddp_records:
        for got, want in zip(record[f"grads_after_{ACCUM - 1}"], expected):
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-7)


def test_non_final_micro_steps_do_not_communicate(ddp_records):
    for record in ddp_records:
        assert record["comms_after_0"] == 0
        assert record[f"comms_after_{ACCUM - 1}"] >= 1
    # Without sync, each rank holds only its own local gradient after the first micro-step.
    first = [r["grads_after_0"][0] for r in ddp_records]
    assert not torch.allclose(first[0], first[1])


def test_all_reduce_mean_averages_over_ranks(ddp_records):
    assert [r["mean"] for r in ddp_records] == [1.5, 1.5]


def test_single_process_is_a_no_op(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    info = init_distributed("cpu")
    assert info == DistInfo(0, 0, 1, torch.device("cpu"), True, None)
    model = make_model()
    assert wrap_model(model, info, "ddp") is model
    with sync_gradients(model, enabled=False):
        pass
    t = torch.tensor([3.0])
    assert all_reduce_mean(t).item() == 3.0
    barrier()


def test_fsdp_on_cpu_and_unknown_strategy_are_config_errors():
    info = DistInfo(0, 0, 1, torch.device("cpu"), True, None)
    with pytest.raises(ConfigError, match="FSDP"):
        wrap_model(make_model(), info, "fsdp")
    with pytest.raises(ConfigError, match="unknown parallel strategy"):
        wrap_model(make_model(), info, "zero3")


def test_bad_torchrun_environment_is_a_config_error(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="WORLD_SIZE"):
        init_distributed("cpu")


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WORLD_SIZE": "2"}, "WORLD_SIZE=2 is set but RANK, MASTER_ADDR, MASTER_PORT are not"),
        ({"WORLD_SIZE": "2", "RANK": "1", "MASTER_PORT": "29500"}, "MASTER_ADDR is not"),
        ({"WORLD_SIZE": "0"}, "WORLD_SIZE=0 is not a number of processes"),
    ],
)
def test_a_torchrun_environment_without_its_rendezvous_is_a_config_error(monkeypatch, env, message):
    """A WORLD_SIZE left in a shell ended in torch's ValueError traceback about MASTER_ADDR."""
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=message):
        init_distributed("cpu")


def test_a_rank_outside_the_world_is_one_line_not_a_wait(tmp_path):
    """RANK not below WORLD_SIZE joined the rendezvous as a peer no one waits for, and sat there for
    torch's 30 minutes, not even stopped by SIGTERM; it is refused before train.out is made."""
    out = tmp_path / "run"
    toml = write_toml(tiny_config(tmp_path / "no-tokens", out), tmp_path / "run.toml")
    env = {**os.environ, "WORLD_SIZE": "2", "RANK": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(free_port())}
    ran = subprocess.run([sys.executable, "-m", "scratchlm", "pretrain", "--config", str(toml)], capture_output=True,
                         text=True, env=env, timeout=60)
    assert ran.returncode == 2
    assert ran.stderr.strip().splitlines() == ["scratchlm: error: RANK=2 but WORLD_SIZE=2: a rank runs from 0 to 1"]
    assert not out.exists()


def test_a_rank_without_a_world_size_is_the_one_process_that_speaks(monkeypatch):
    """init_distributed makes RANK=1 without WORLD_SIZE a lone process, but `is_main_process` read
    RANK alone, so `pretrain` printed no summary and `sweep-lr` no table: no process spoke."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    monkeypatch.setenv("RANK", "1")
    assert init_distributed("cpu").is_main and is_main_process()


class BlockLM(nn.Module):
    """Embedding, a ModuleList of blocks with hidden matrices, norm and head: what FSDP and Muon see."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 8)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(8, 12), nn.ReLU(), nn.Linear(12, 8)) for _ in range(2)
        )
        self.norm = nn.LayerNorm(8)
        self.lm_head = nn.Linear(8, 10, bias=False)

    def forward(self, idx):
        h = self.embed(idx)
        for block in self.blocks:
            h = h + block(h)
        return self.lm_head(self.norm(h))


def lm_batch(seed: int):
    x = torch.randint(0, 10, (3, 5), generator=torch.Generator().manual_seed(seed))
    return x, (x + 1) % 10


def lm_loss(model, x, y):
    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


def sharded_muon_worker(rank: int, port: int, out_dir: str) -> None:
    torchrun_env(rank, port)
    torch.distributed.init_process_group("gloo")
    torch.manual_seed(0)
    model = BlockLM()
    # wrap_model only offers FSDP on CUDA; torch's FSDP2 also runs on gloo, which lets this CPU test
    # check that Muon orthogonalizes whole matrices and keeps only its shard.
    # A CPU mesh named outright: the default one takes CUDA wherever it is present, and a rank past
    # the machine's GPUs then has no device.
    mesh = torch.distributed.device_mesh.init_device_mesh("cpu", (WORLD,))
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = build_optimizer(model, "muon", lr=1e-2, muon_lr=0.02)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        lm_loss(model, *lm_batch(10 * step + rank)).backward()
        opt.step()
    weights = {k: v.full_tensor() for k, v in model.state_dict().items()}
    if rank == 0:
        torch.save(weights, os.path.join(out_dir, "sharded.pt"))
    cleanup()


def test_muon_on_fsdp2_shards_matches_one_process(tmp_path):
    launch(sharded_muon_worker, str(tmp_path))
    sharded = torch.load(tmp_path / "sharded.pt", weights_only=True)
    torch.manual_seed(0)
    model = BlockLM()
    opt = build_optimizer(model, "muon", lr=1e-2, muon_lr=0.02)
    for step in range(3):
        opt.zero_grad(set_to_none=True)
        sum(lm_loss(model, *lm_batch(10 * step + r)) / WORLD for r in range(WORLD)).backward()
        opt.step()
    for name, want in model.state_dict().items():
        torch.testing.assert_close(sharded[name], want, rtol=1e-5, atol=1e-6, msg=name)


def two_runs_worker(rank: int, port: int, tokens: str, out_dir: str) -> None:
    from scratchlm.train.trainer import train

    torchrun_env(rank, port)
    first = train(tiny_config(Path(tokens), Path(out_dir) / "first", train={"max_steps": 2}))
    group = torch.distributed.group.WORLD
    # A run used to destroy the group it made, and the next run made another: a process that
    # re-joined first read its slower peer's old keys in the store, and `sweep-lr` hung.
    assert group is not None and torch.distributed.is_initialized(), "the first run left the process group"
    second = train(tiny_config(Path(tokens), Path(out_dir) / "second", train={"max_steps": 2}))
    assert torch.distributed.group.WORLD is group, "the second run made a process group of its own"
    torch.save({"steps": (first["steps"], second["steps"])}, os.path.join(out_dir, f"rank{rank}.pt"))


def test_runs_one_after_another_share_the_process_group(tmp_path):
    """Runs in the same processes (`sweep-lr`'s rates) keep the group the first one joined."""
    tokens = build_tokens_dir(tmp_path)
    launch(two_runs_worker, str(tokens), str(tmp_path))
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"rank{rank}.pt", weights_only=True) == {"steps": (2, 2)}
    assert (tmp_path / "second" / "checkpoints" / "step-000002" / "model.safetensors").is_file()


def cli_worker(rank: int, port: int, tokens: str, out_dir: str) -> None:
    from scratchlm.cli import main

    torchrun_env(rank, port)
    config = tiny_config(Path(tokens), Path(out_dir) / "run", train={"max_steps": 2})
    toml = write_toml(config, Path(out_dir) / f"{rank}.toml")
    code = main(["pretrain", "--config", str(toml)])
    torch.save({"code": code, "left": not torch.distributed.is_initialized()}, os.path.join(out_dir, f"cli{rank}.pt"))


def test_the_pretrain_command_leaves_the_process_group_before_it_returns(tmp_path):
    """Left at exit only, a process could tear its group down while its peer still used its own:
    a run that had finished once ended with SIGABRT in CI."""
    tokens = build_tokens_dir(tmp_path)
    launch(cli_worker, str(tokens), str(tmp_path))
    for rank in range(WORLD):
        assert torch.load(tmp_path / f"cli{rank}.pt", weights_only=True) == {"code": 0, "left": True}


def test_native_prints_while_connecting_go_to_stderr_and_a_closed_stdout_is_no_error():
    """Gloo printed its connection lines on stdout (torch 2.8), before pretrain's JSON summary."""
    printing = (
        "import os\nfrom scratchlm.train.distributed import _native_prints_to_stderr\n"
        "with _native_prints_to_stderr():\n    os.write(1, b'native\\n')\n"
        "print('summary')\n"
    )
    ran = subprocess.run([sys.executable, "-c", printing], capture_output=True, text=True, timeout=120)
    assert (ran.returncode, ran.stdout, ran.stderr) == (0, "summary\n", "native\n")
    quiet = "from scratchlm.train.distributed import _native_prints_to_stderr\nwith _native_prints_to_stderr():\n    pass\n"
    closed = subprocess.run(["sh", "-c", 'exec "$0" -c "$1" 1>&-', sys.executable, quiet], capture_output=True,
                            text=True, timeout=120)
    assert closed.returncode == 0, closed.stderr


def sweep_worker(rank: int, port: int, tokens: str, out_dir: str) -> None:
    from scratchlm.train.sweep import sweep_lr

    torchrun_env(rank, port)
    # Rank 1 gets a train.out of its own, as on a node that does not share rank 0's storage:
    # whatever it writes shows there.
    out = Path(out_dir) / ("sweep" if rank == 0 else "rank1-view")
    report = sweep_lr(tiny_config(Path(tokens), out), lrs=[1e-2], steps=2)
    for result in report["results"]:
        result.pop("out")  # the run folder, under each rank's own train.out
    torch.save({"report": json.dumps(report)}, os.path.join(out_dir, f"report{rank}.pt"))


def test_only_rank_0_writes_the_sweep_report_and_every_rank_returns_it(tmp_path):
    """Every rank wrote sweep.json, against the rule that only rank 0 writes a run's outputs."""
    tokens = build_tokens_dir(tmp_path)
    launch(sweep_worker, str(tokens), str(tmp_path))
    reports = [torch.load(tmp_path / f"report{rank}.pt", weights_only=True)["report"] for rank in range(WORLD)]
    assert reports[0] == reports[1] and json.loads(reports[0])["finished"]
    assert (tmp_path / "sweep" / "sweep.json").is_file()
    assert not (tmp_path / "rank1-view" / "sweep.json").exists()
