"""The training-state check that refuses a model the machine cannot hold, before building it."""

from __future__ import annotations

import pytest
import torch

from scratchlm.errors import ConfigError
from scratchlm.model import ModelConfig
from scratchlm.train.memory_fit import available_host_bytes, check_training_fits, training_bytes_per_parameter

GIB = 2**30


@pytest.fixture(autouse=True)
def nothing_held_yet(monkeypatch):
    """Each test starts as a fresh process would: no training state held before."""
    from scratchlm.train import memory_fit

    monkeypatch.setattr(memory_fit, "_held", {"host": 0, "device": 0})


def test_bytes_per_parameter_count_weight_gradient_and_moments():
    assert training_bytes_per_parameter("adamw") == 16
    assert training_bytes_per_parameter("muon") == 12


def test_cpu_training_needs_the_whole_state_in_host_memory():
    params = GIB // 16  # exactly 1 GiB of AdamW training state
    check_training_fits(params, "adamw", torch.device("cpu"), host_available=GIB)
    with pytest.raises(ConfigError) as info:
        check_training_fits(params + 1, "adamw", torch.device("cpu"), host_available=GIB)
    message = str(info.value)
    assert "67,108,865 parameters" in message and "1.0 GiB of memory available" in message
    assert "\n" not in message
    # two processes on one host each hold a full copy (DDP on CPU)
    with pytest.raises(ConfigError, match="in each of 2 processes need 2.0 GiB"):
        check_training_fits(params, "adamw", torch.device("cpu"), processes_on_host=2, host_available=GIB)


def test_gpu_training_needs_the_weights_on_the_host_and_the_state_on_the_gpu():
    cuda = torch.device("cuda", 0)
    params = GIB // 16
    # the host only builds the float32 weights (a quarter of the state) before moving them
    check_training_fits(params, "adamw", cuda, host_available=GIB // 4, device_available=GIB)
    with pytest.raises(ConfigError, match="built on the host first"):
        check_training_fits(params, "adamw", cuda, host_available=GIB // 4 - 1, device_available=GIB)
    with pytest.raises(ConfigError, match=r"1\.0 GiB per GPU.*torchrun with train.strategy = fsdp"):
        check_training_fits(params, "adamw", cuda, host_available=GIB, device_available=GIB - 1)
    # FSDP divides the state among the processes
    check_training_fits(params, "adamw", cuda, shards=2, host_available=GIB, device_available=GIB // 2)
    with pytest.raises(ConfigError, match="over more GPUs"):
        check_training_fits(params, "adamw", cuda, shards=2, host_available=GIB, device_available=GIB // 2 - 1)
    # however many shards, each GPU holds the whole float32 model once, before it is sharded
    check_training_fits(params, "adamw", cuda, shards=8, host_available=GIB, device_available=GIB // 4)
    with pytest.raises(ConfigError, match="per GPU"):
        check_training_fits(params, "adamw", cuda, shards=8, host_available=GIB, device_available=GIB // 4 - 1)


def test_host_memory_is_read_from_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal:       24684100 kB\nMemFree:  100 kB\nMemAvailable:    2048 kB\n")
    available = available_host_bytes(str(meminfo))
    assert available is not None and 0 <= available <= 2048 * 1024  # a container limit may lower it


def test_this_machine_reports_some_memory_on_linux():
    import sys

    if not sys.platform.startswith("linux"):
        pytest.skip("MemAvailable is Linux's")
    available = available_host_bytes()
    assert available is not None and available > 64 * 2**20


def test_a_layer_count_with_zeros_too_many_is_refused_before_anything_is_built():
    config = ModelConfig(vocab_size=512, n_layer=200_000, n_head=4, d_model=64, max_seq_len=128)
    with pytest.raises(ConfigError, match=f"has {config.num_params():,} parameters"):
        check_training_fits(config.num_params(), "adamw", torch.device("cpu"), host_available=64 * GIB)


def test_a_containers_page_cache_counts_as_available(tmp_path):
    """memory.current counts the page cache (the tokens just written), which the kernel gives up
    on demand: a run that fits was refused in a container right after `data tokenize`."""
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(f"MemAvailable: {64 * GIB // 1024} kB\n")
    (tmp_path / "memory.max").write_text(f"{8 * GIB}\n")
    (tmp_path / "memory.current").write_text(f"{7 * GIB}\n")
    (tmp_path / "memory.stat").write_text(f"anon {GIB // 2}\nfile {6 * GIB}\nkernel 1234\n")
    files = ((str(tmp_path / "memory.max"), str(tmp_path / "memory.current"), str(tmp_path / "memory.stat"), "file"),)
    assert available_host_bytes(str(meminfo), files) == 7 * GIB  # 8 GiB limit − 1 GiB not cache
    (tmp_path / "memory.max").write_text("max\n")  # no limit: the host's figure
    assert available_host_bytes(str(meminfo), files) == 64 * GIB


def test_a_later_run_in_the_same_process_may_reuse_what_an_earlier_one_held():
    """`sweep-lr` trains every rate in one process; the allocator keeps the first rate's memory,
    which the machine then no longer counts as free, and the second rate was refused."""
    from scratchlm.train.memory_fit import remember_held

    params = GIB // 16
    needs = check_training_fits(params, "adamw", torch.device("cpu"), host_available=GIB)
    assert needs == (GIB, 0)
    with pytest.raises(ConfigError):  # checked alone, nothing is held
        check_training_fits(params, "adamw", torch.device("cpu"), host_available=GIB // 8)
    remember_held(needs)  # the model was built
    check_training_fits(params, "adamw", torch.device("cpu"), host_available=GIB // 8)  # the rest is this process's
    with pytest.raises(ConfigError):
        check_training_fits(4 * params, "adamw", torch.device("cpu"), host_available=GIB // 8)
