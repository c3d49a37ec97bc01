"""Peak FLOP/s lookup and measurement, and the MFU arithmetic."""

import time

import pytest
import torch

from scratchlm.train.mfu import gpu_peak_from_table, measure_matmul_flops, mfu, peak_flops_per_s


def test_mfu_arithmetic():
    # 124M-param model: ~6 * 124e6 FLOPs/token; 100k tokens/s on a 989 TFLOP/s H100 is ~7.5%.
    assert mfu(6 * 124e6, 1e5, 989.4e12) == pytest.approx(6 * 124e6 * 1e5 / 989.4e12)
    assert mfu(1e9, 10.0, 2e10) == 0.5
    assert mfu(1e9, 10.0, 0.0) == 0.0


@pytest.mark.parametrize(
    ("name", "dtype", "tf32", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", torch.bfloat16, False, 989.4),
        ("NVIDIA H100 PCIe", torch.bfloat16, False, 756.0),
        ("NVIDIA H100 NVL", torch.float16, False, 835.0),
        ("NVIDIA H200", torch.bfloat16, False, 989.4),
        ("NVIDIA A100-SXM4-80GB", torch.bfloat16, False, 312.0),
        ("NVIDIA A100-SXM4-80GB", torch.float32, False, 19.5),
        ("NVIDIA A100-SXM4-80GB", torch.float32, True, 156.0),
        ("NVIDIA L4", torch.bfloat16, False, 121.0),
        ("NVIDIA L40S", torch.bfloat16, False, 362.0),
        ("NVIDIA A10", torch.bfloat16, False, 125.0),
        ("NVIDIA GeForce RTX 4090", torch.bfloat16, False, 165.2),
        ("NVIDIA GeForce RTX 3090", torch.float16, False, 71.0),
        ("NVIDIA L40", torch.bfloat16, False, 181.0),  # was given the L4's figures
        ("NVIDIA GH200 480GB", torch.bfloat16, False, 989.4),
    ],
)
def test_gpu_table(name, dtype, tf32, tflops):
    assert gpu_peak_from_table(name, dtype, tf32=tf32) == pytest.approx(tflops * 1e12)


def test_unknown_gpus_and_missing_formats_fall_back_to_measurement():
    assert gpu_peak_from_table("Imaginary Accelerator 9000", torch.bfloat16) is None
    assert gpu_peak_from_table("NVIDIA A10G", torch.bfloat16) is None  # not confused with the A10
    assert gpu_peak_from_table("NVIDIA RTX A1000", torch.bfloat16) is None  # was given the A100's figures
    assert gpu_peak_from_table("NVIDIA RTX A4000", torch.float32) is None  # nor a 4090's, by "RTX" and "40"
    assert gpu_peak_from_table("Tesla V100-SXM2-16GB", torch.bfloat16) is None  # no bf16 on Volta
    assert gpu_peak_from_table("Tesla V100-SXM2-16GB", torch.float16) == pytest.approx(125e12)


def test_cpu_peak_is_measured_once_per_process():
    measure_matmul_flops.cache_clear()
    start = time.perf_counter()
    first = peak_flops_per_s(torch.device("cpu"), torch.float32)
    first_seconds = time.perf_counter() - start
    start = time.perf_counter()
    again = peak_flops_per_s(torch.device("cpu"), None)  # None means fp32
    assert again == first
    assert time.perf_counter() - start < first_seconds / 10
    # Any real CPU does between 1 GFLOP/s and 100 TFLOP/s on a 1024x1024 fp32 matmul.
    assert 1e9 < first < 1e14


def test_measured_peak_matches_a_timed_matmul():
    peak = measure_matmul_flops("cpu", torch.float32)
    a, b = torch.randn(512, 512), torch.randn(512, 512)
    start = time.perf_counter()
    for _ in range(4):
        a @ b
    achieved = 4 * 2 * 512**3 / (time.perf_counter() - start)
    # A smaller matmul cannot run far beyond the measured peak (slack for a machine shared while measuring).
    assert achieved < 10 * peak


def test_a_train_rows_rate_counts_step_time_only():
    """Whatever happens between rows (an evaluation, a checkpoint save) is not training time:
    counted, the row after it showed a fraction of the run's MFU and could set off the
    low-throughput diagnosis. A skipped batch's time counts, its tokens do not."""
    from scratchlm.train.trainer import Session

    session = Session(base_elapsed=0.0)
    for applied in (True, False, True):
        session.count_attempt(0.25)
        if applied:
            session.count_step(3.0, 0.25, batch_tokens=100)
    assert session.tokens_per_s_since_last_row(100) == pytest.approx(200 / 0.75)
    session.count_attempt(0.5)
    session.count_step(3.0, 0.5, batch_tokens=100)
    assert session.tokens_per_s_since_last_row(100) == pytest.approx(100 / 0.5)  # counted from the last row
    assert session.attempted == 4 and session.applied == 3
