"""Device and precision resolution: the single place that decides where and in what format we run."""

import pytest
import torch

from scratchlm.device import Precision, autocast, cpu_supports_bf16, resolve_device, resolve_precision
from scratchlm.errors import ConfigError


def test_auto_device_matches_cuda_availability():
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected
    assert resolve_device().type == expected
    assert resolve_device("cpu") == torch.device("cpu")


def test_bad_device_names_are_config_errors():
    with pytest.raises(ConfigError, match="unknown device"):
        resolve_device("tpu-of-dreams")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="CUDA is not available"):
            resolve_device("cuda")


def test_cpu_precisions():
    cpu = torch.device("cpu")
    assert resolve_precision(cpu, "fp32") == Precision("fp32", None, False)
    assert resolve_precision(cpu, "bf16") == Precision("bf16", torch.bfloat16, False)
    auto = resolve_precision(cpu, "auto")
    assert auto.name == ("bf16" if cpu_supports_bf16() else "fp32")
    assert not auto.use_grad_scaler
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        resolve_precision(cpu, "fp16")
    with pytest.raises(ConfigError, match="unknown precision"):
        resolve_precision(cpu, "fp8")


def test_cpu_bf16_detection_follows_cpuinfo_flags():
    try:
        text = open("/proc/cpuinfo").read()
    except OSError:
        pytest.skip("no /proc/cpuinfo here")
    flags_line = next((line for line in text.splitlines() if line.startswith("flags")), "")
    flags = set(flags_line.split(":", 1)[-1].split())
    assert cpu_supports_bf16() == bool(flags & {"avx512_bf16", "amx_bf16"})


def test_autocast_changes_matmul_dtype_only_when_asked():
    cpu = torch.device("cpu")
    a, b = torch.randn(4, 4), torch.randn(4, 4)
    with autocast(cpu, resolve_precision(cpu, "fp32")):
        assert (a @ b).dtype == torch.float32
    with autocast(cpu, resolve_precision(cpu, "bf16")):
        assert (a @ b).dtype == torch.bfloat16


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_precisions():
    cuda = resolve_device("cuda")
    fp16 = resolve_precision(cuda, "fp16")
    assert fp16.autocast_dtype == torch.float16 and fp16.use_grad_scaler
    assert resolve_precision(cuda, "auto").name in ("bf16", "fp16")
