"""Checkpoint directories: complete or invisible, `latest` always names a whole one, pruning
keeps the newest and the best, and RNG/optimizer state round-trips without unpickling."""

from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from scratchlm.errors import CheckpointError
from scratchlm.fsutil import remove_abandoned_temp_dirs
from scratchlm.train import checkpoint as ckpt


def adamw_state() -> dict:
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))], lr=0.1)
    opt.param_groups[0]["params"][0].grad = torch.ones(2)
    opt.step()
    return opt.state_dict()


def save_step(root: Path, step: int, val_loss: float | None = None, optimizer_state: dict | None = None) -> Path:
    weights = {"w": torch.full((2, 2), float(step))}
    # A plain stand-in for optimizer state keeps the subprocess test free of torch.optim's imports.
    optimizer_state = optimizer_state or {"state": {0: {"exp_avg": torch.zeros(2)}}, "param_groups": []}
    return ckpt.save_checkpoint(
        root,
        step,
        weights,
        {"n_layer": 1},
        optimizer_state,
        [ckpt.capture_rng()],
        {"step": step, "val_loss": val_loss},
    )


def test_roundtrip_restores_rng_and_optimizer_with_weights_only(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    path = save_step(tmp_path, 5, optimizer_state=adamw_state())
    expected = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)
    loaded = ckpt.load_checkpoint(path)
    ckpt.restore_rng(loaded["rng"]["rank0"])
    assert (random.random(), np.random.rand()) == expected[:2]
    assert torch.equal(torch.rand(3), expected[2])
    assert loaded["train_state"]["step"] == 5
    assert torch.equal(loaded["model"]["w"], torch.full((2, 2), 5.0))
    assert loaded["optimizer"]["state"][0]["exp_avg"].shape == (2,)
    assert loaded["optimizer"]["param_groups"][0]["lr"] == 0.1
    # optimizer.pt and rng.pt load under weights_only=True: nothing in them needs unpickling code
    torch.load(path / "optimizer.pt", weights_only=True)
    torch.load(path / "rng.pt", weights_only=True)


KILL_DURING_SAVE = """
import os, signal, sys, torch
sys.path.insert(0, sys.argv[2])
from test_train_checkpoint import save_step
from pathlib import Path
root = Path(sys.argv[1])
save_step(root, 1)
real_save = torch.save
def die_midway(obj, f, *a, **k):
    real_save(obj, f, *a, **k)        # optimizer.pt lands, the rest never does
    os.kill(os.getpid(), signal.SIGKILL)
torch.save = die_midway
save_step(root, 2)
"""


def test_process_killed_while_saving_leaves_latest_on_the_previous_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_SAVE, str(root), str(Path(__file__).parent)], capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    partial = [p for p in root.iterdir() if p.name.startswith(".step-000002")]
    assert partial, "the interrupted save should have left its temp dir behind"
    assert (partial[0] / "model.safetensors").is_file()
    assert (root / "latest").read_text().strip() == "step-000001"
    assert ckpt.find_latest(root).name == "step-000001"
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1]


KILL_DURING_PRUNE = """
import os, signal, sys
sys.path.insert(0, sys.argv[2])
from test_train_checkpoint import save_step
from pathlib import Path
from scratchlm.train import checkpoint as ckpt
root = Path(sys.argv[1])
save_step(root, 1)
written = save_step(root, 2)
real_unlink = os.unlink
def die_after_one(*a, **k):
    real_unlink(*a, **k)              # one file of step 1 goes, the rest never does
    os.kill(os.getpid(), signal.SIGKILL)
os.unlink = die_after_one
ckpt.prune_checkpoints(root, keep_last=1, written=written)
"""


def test_a_process_killed_while_pruning_leaves_nothing_the_next_run_does_not_clear(tmp_path):
    """A kill (or a second Ctrl-C) in the middle of deleting an old checkpoint left a step folder
    missing some of its files: passed over as incomplete, never pruned, it kept its gigabytes for
    good. What a resume clears first (`remove_abandoned_temp_dirs`) now takes it away."""
    root = tmp_path / "checkpoints"
    proc = subprocess.run(
        [sys.executable, "-c", KILL_DURING_PRUNE, str(root), str(Path(__file__).parent)], capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    remove_abandoned_temp_dirs(root)
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000002"]


def test_stale_or_missing_pointer_falls_back_to_newest_complete(tmp_path):
    root = tmp_path / "checkpoints"
    save_step(root, 1)
    save_step(root, 2)
    broken = root / "step-000003"
    broken.mkdir()
    (broken / "model.safetensors").write_bytes(b"half")
    (root / "latest").write_text("step-000003\n")
    assert ckpt.find_latest(root).name == "step-000002"
    (root / "latest").unlink()
    assert ckpt.find_latest(root).name == "step-000002"
    with pytest.raises(CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(broken)
    assert ckpt.find_latest(tmp_path / "nothing") is None


def test_prune_keeps_last_k_and_the_best(tmp_path):
    root = tmp_path / "checkpoints"
    for step, val in [(1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, None)]:
        save_step(root, step, val)
    ckpt.prune_checkpoints(root, keep_last=2)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [2, 4, 5]
    assert (root / "best").read_text().strip() == "step-000002"


def test_pruning_keeps_the_checkpoint_just_written_over_a_dead_runs_higher_steps(tmp_path):
    """A run killed after writing step 6 but before pointing `latest` at it resumes from step 4;
    its step 5 was deleted at once, being older than the abandoned step 6 (keep_last = 1)."""
    root = tmp_path / "checkpoints"
    for step, val in [(2, 3.0), (4, 2.5), (6, 0.5)]:
        save_step(root, step, val)
    written = save_step(root, 5, 2.0)
    ckpt.prune_checkpoints(root, keep_last=1, written=written)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [5]
    assert (root / "best").read_text().strip() == "step-000005"


def test_a_val_loss_that_is_no_number_is_not_a_candidate_for_best(tmp_path):
    """A hand-edited or foreign train_state.json with `"val_loss": "2.5"` ended the run at its next
    save with "TypeError: '<' not supported between instances of 'str' and 'float'" (and every resume
    at the save after it); `true` counted as a loss of 1."""
    root = tmp_path / "checkpoints"
    save_step(root, 1, 2.0)
    save_step(root, 2, "0.5")
    written = save_step(root, 3, True)
    ckpt.prune_checkpoints(root, keep_last=1, written=written)
    assert [s for s, _ in ckpt.list_checkpoints(root)] == [1, 3]
    assert (root / "best").read_text().strip() == "step-000001"


def write_plain_pickle(path: Path) -> None:
    import pickle

    path.write_bytes(pickle.dumps({"state": {}, "param_groups": []}))


@pytest.mark.parametrize(
    ("name", "damage"),
    [
        ("optimizer.pt", lambda p: p.write_bytes(bytes(range(256)) * 4)),
        ("optimizer.pt", write_plain_pickle),
        ("optimizer.pt", lambda p: torch.save({"step": 3}, p)),
        ("rng.pt", lambda p: p.write_bytes(b"")),
        ("rng.pt", lambda p: torch.save([1, 2, 3], p)),
        ("rng.pt", lambda p: torch.save({"rank0": [torch.zeros(3)]}, p)),
    ],
    ids=["optimizer-garbage", "optimizer-plain-pickle", "optimizer-no-state", "rng-empty", "rng-list", "rng-not-a-dict"],
)
def test_damaged_optimizer_or_rng_file_is_one_checkpoint_error_naming_it(tmp_path, name, damage):
    path = save_step(tmp_path, 1)
    damage(path / name)
    with pytest.raises(CheckpointError, match=name) as caught:
        ckpt.load_checkpoint(path)
    assert "\n" not in str(caught.value) and "weights_only" not in str(caught.value)


@pytest.mark.parametrize("where", ["weights-nan", "weights-inf", "optimizer-nan"])
def test_a_checkpoint_holding_values_no_run_trains_on_is_one_checkpoint_error(tmp_path, where):
    """A NaN in the weights or the optimizer's moments, or an infinite weight (a flipped bit, a
    hand edit, an update that overflowed before an evaluation stopped the run) was loaded, and the
    resumed run skipped five steps, then stopped blaming the learning rate."""
    optimizer = adamw_state()
    path = save_step(tmp_path, 1, optimizer_state=optimizer)
    if where.startswith("weights"):
        bad = float("nan") if where == "weights-nan" else float("inf")
        save_file({"w": torch.tensor([[1.0, bad], [0.0, 1.0]])}, str(path / "model.safetensors"))
        expected = r"model\.safetensors: tensor 'w' holds non-finite values"
    else:
        optimizer["state"][0]["exp_avg_sq"][1] = float("nan")
        torch.save(optimizer, path / "optimizer.pt")
        expected = r"optimizer\.pt: exp_avg_sq of parameter 0 holds NaN"
    with pytest.raises(CheckpointError, match=expected) as caught:
        ckpt.load_checkpoint(path)
    assert ckpt.DAMAGED_ADVICE in str(caught.value) and "\n" not in str(caught.value)


def test_an_infinite_second_moment_is_resumed(tmp_path):
    """An infinite second moment only freezes its weight (its update is 0), and a run can train on
    past it: refusing the checkpoint would lose the run."""
    optimizer = adamw_state()
    optimizer["state"][0]["exp_avg_sq"][1] = float("inf")
    path = save_step(tmp_path, 1, optimizer_state=optimizer)
    loaded = ckpt.load_checkpoint(path)
    assert torch.isinf(loaded["optimizer"]["state"][0]["exp_avg_sq"][1])


def test_a_file_that_cannot_be_read_is_a_read_error_not_damage(tmp_path, monkeypatch):
    """EIO says nothing about the bytes: no advice to set the checkpoint aside."""
    import errno

    path = save_step(tmp_path, 1)

    def unreadable(*args, **kwargs):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(torch, "load", unreadable)
    with pytest.raises(CheckpointError, match=r"optimizer\.pt: cannot be read \(Input/output error\)$") as caught:
        ckpt.load_checkpoint(path)
    assert "damaged" not in str(caught.value) and "move" not in str(caught.value)


def test_running_out_of_memory_while_loading_is_not_blamed_on_the_file(tmp_path, monkeypatch):
    path = save_step(tmp_path, 1)

    def out_of_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(torch, "load", out_of_memory)
    with pytest.raises(MemoryError):
        ckpt.load_checkpoint(path)


def test_rng_states_of_more_gpus_than_this_machine_has_restore_those_it_has(monkeypatch):
    """A torchrun worker sees every GPU of its node and saves each one's state; resuming on a
    machine with fewer (another node, CUDA_VISIBLE_DEVICES=0) failed with "rng.pt: holds RNG
    states that cannot be restored (IndexError ...)", and no run could continue. This machine has
    no GPU: a CPU generator stands in torch's own table of CUDA generators, where the real
    `torch.cuda.set_rng_state` finds and sets it as an initialised CUDA would."""
    state = ckpt.capture_rng()  # before CUDA is made to look present: capturing would initialise it
    saved = [torch.Generator().manual_seed(seed).get_state() for seed in (1, 2)]  # a node of two GPUs
    the_one_gpu = torch.Generator()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "default_generators", (the_one_gpu,))
    monkeypatch.setattr(torch.cuda.random, "_lazy_call", lambda callback: callback())
    ckpt.restore_rng({**state, "cuda": saved})
    assert torch.equal(the_one_gpu.get_state(), saved[0])


def test_a_step_dir_left_incomplete_by_a_copy_is_replaced(tmp_path):
    root = tmp_path / "checkpoints"
    save_step(root, 4)
    (root / "step-000004" / "train_state.json").unlink()  # a copy interrupted before its last file
    assert ckpt.find_latest(root) is None
    save_step(root, 4)
    assert ckpt.find_latest(root).name == "step-000004"


def test_optimizer_state_of_other_shapes_or_groups_does_not_fit(tmp_path):
    saved = adamw_state()  # one parameter of shape (2,)
    other_shape = torch.optim.AdamW([torch.nn.Parameter(torch.ones(3))])
    with pytest.raises(CheckpointError, match=r"does not fit .*exp_avg of shape \(2,\) for a parameter of shape \(3,\)"):
        ckpt.check_optimizer_fits(saved, other_shape, tmp_path / "optimizer.pt")
    two_params = torch.optim.AdamW([torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))])
    with pytest.raises(CheckpointError, match="parameter groups differ"):
        ckpt.check_optimizer_fits(saved, two_params, tmp_path / "optimizer.pt")
    ckpt.check_optimizer_fits(saved, torch.optim.AdamW([torch.nn.Parameter(torch.ones(2))]), tmp_path / "optimizer.pt")


@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_an_optimizer_state_saved_without_fsdp_loads_the_way_fsdp_loads_it(optimizer, tied):
    """FSDP loads a whole optimizer state keyed by parameter name; a run without FSDP saves one keyed
    by number, and resuming it with strategy fsdp failed with KeyError: 'state.0.step'. The loading
    call is FSDP's own (`set_optimizer_state_dict`), which needs no process group for a plain module."""
    import copy

    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_optimizer_state_dict,
        set_optimizer_state_dict,
    )

    from scratchlm.model import GPT, ModelConfig
    from scratchlm.train.optim import build_optimizer

    cfg = ModelConfig(vocab_size=64, n_layer=2, n_head=2, d_model=16, max_seq_len=16, tie_embeddings=tied)
    torch.manual_seed(0)
    model, ids = GPT(cfg), torch.randint(0, 64, (2, 8))
    opt = build_optimizer(model, optimizer, lr=1e-3)
    for _ in range(2):
        model(ids, targets=ids).objective.backward()
        opt.step()
        opt.zero_grad()
    saved = copy.deepcopy(opt.state_dict())
    assert all(isinstance(key, int) for key in saved["state"]) and len(opt.param_groups) > 1
    twin = GPT(cfg)
    twin.load_state_dict(model.state_dict())
    options = StateDictOptions(full_state_dict=True)
    with pytest.raises(KeyError):  # what FSDP made of the numbered state
        set_optimizer_state_dict(twin, build_optimizer(twin, optimizer, lr=1e-3), copy.deepcopy(saved), options=options)
    twin_opt = build_optimizer(twin, optimizer, lr=1e-3)
    by_name = ckpt.optimizer_state_by_name(saved, twin_opt, twin)
    # the names FSDP itself gives these parameters (a tied head is the embedding's one name)
    assert set(by_name["state"]) == set(get_optimizer_state_dict(model, opt, options=options)["state"])
    assert ckpt.optimizer_state_by_name(by_name, twin_opt, twin) is by_name  # FSDP's own: as it is
    set_optimizer_state_dict(twin, twin_opt, by_name, options=options)
    for param, twin_param in zip(model.parameters(), twin.parameters()):
        assert opt.state[param].keys() == twin_opt.state[twin_param].keys()
        for key, value in opt.state[param].items():
            restored = twin_opt.state[twin_param][key]
            assert torch.equal(value, restored) if isinstance(value, torch.Tensor) else value == restored, key


FILE_SIZE_LIMITED = r"""
import resource, sys, torch
from pathlib import Path
from scratchlm.errors import CheckpointError
from scratchlm.fsutil import remove_abandoned_temp_dirs
from scratchlm.train import checkpoint as ckpt

root = Path(sys.argv[1])
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))  # files past 200 kB fail to write
small, big = {"w": torch.zeros(4)}, {"w": torch.zeros(100_000)}
state = dict(model_config={}, rng_states=[{}], train_state={"step": 1})
for step, weights, optimizer in ((1, big, {}), (1, small, {}), (2, small, big), (3, big, {})):
    try:
        ckpt.save_checkpoint(root, step, weights=weights, optimizer_state=optimizer, **state)
    except CheckpointError as e:
        print(e)
"""


def test_a_checkpoint_that_cannot_be_written_is_one_error_naming_the_one_to_resume_from(tmp_path):
    """A full disk used to end the run with safetensors' or torch's own traceback (torch.save reports
    a short write as a RuntimeError of its zip writer); now it is one error that says what survives."""
    done = subprocess.run([sys.executable, "-c", FILE_SIZE_LIMITED, str(tmp_path / "ckpt")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    root = tmp_path / "ckpt"
    first, second, third = done.stdout.splitlines()
    assert first == (f"{root / 'step-000001'}: the checkpoint could not be written (File too large); "
                     "no earlier checkpoint to resume from")
    # torch's own words for its short write (today "unexpected pos 704 vs 598"), without its C++ prefix
    assert re.fullmatch(re.escape(f"{root / 'step-000002'}: the checkpoint could not be written (")
                        + r"[^\[\n]+\); --resume continues from step-000001", second)
    assert third == (f"{root / 'step-000003'}: the checkpoint could not be written (File too large); "
                     "--resume continues from step-000001")
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-000001"]  # no partial directory
    assert ckpt.find_latest(root) == root / "step-000001"


def test_a_fault_that_is_not_a_failed_write_stays_itself(tmp_path, monkeypatch):
    """A device fault surfacing in torch.save (a CUDA error while copying the optimizer state to
    the CPU, which this machine cannot make, so torch.save is made to raise one) is not reported as
    a full disk: it stays the RuntimeError it is, and no partial directory is left."""

    def device_fault(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(ckpt.torch, "save", device_fault)
    with pytest.raises(RuntimeError, match="illegal memory access"):
        ckpt.save_checkpoint(tmp_path, 1, {"w": torch.zeros(2)}, {}, {}, [{}], {"step": 1})
    assert list(tmp_path.iterdir()) == []


def test_every_file_of_a_checkpoint_is_flushed_to_disk_before_it_is_renamed_into_place(tmp_path, monkeypatch):
    """safetensors and torch.save do not fsync, and only the directory was: after a power loss or a
    kernel crash, `latest` (fsynced) could name a step dir whose weights or optimizer state never
    reached the disk (empty files), with the older checkpoints already pruned. The real fsync runs;
    each call is recorded with the file it flushed and whether the checkpoint was in place yet."""
    import os

    root = tmp_path / "checkpoints"
    final = root / "step-000001"
    flushed: set[tuple[int, int]] = set()
    real_fsync = os.fsync

    def recording_fsync(fd):
        real_fsync(fd)
        if not final.exists():
            info = os.fstat(fd)
            flushed.add((info.st_dev, info.st_ino))

    monkeypatch.setattr(os, "fsync", recording_fsync)
    save_step(root, 1, optimizer_state=adamw_state())
    files = [p for p in final.rglob("*") if p.is_file()]
    assert {"model.safetensors", "optimizer.pt", "rng.pt"} <= {p.name for p in files}
    unflushed = [p.name for p in files if (p.stat().st_dev, p.stat().st_ino) not in flushed]
    assert not unflushed, f"written but not flushed before the rename: {unflushed}"
