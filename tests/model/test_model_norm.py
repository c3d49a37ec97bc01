"""RMSNorm with a hand-written gradient: same values, gradients, dtypes and state dict as
`nn.RMSNorm` (under torch.compile: tests/model/test_model_loss.py)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from scratchlm.model.norm import RMSNorm, rms_norm

EPS = 1e-5


def pair(dim: int, seed: int = 0) -> tuple[RMSNorm, nn.RMSNorm]:
    torch.manual_seed(seed)
    ours, ref = RMSNorm(dim, eps=EPS), nn.RMSNorm(dim, eps=EPS)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


@pytest.fixture(autouse=True)
def _quiet_mixed_dtype_warning():
    with warnings.catch_warnings():  # torch.rms_norm's notice that bf16 x with a float32 weight is not fused
        warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
        yield


def value_and_grads(norm: nn.Module, x: torch.Tensor, grad_out: torch.Tensor):
    x = x.detach().clone().requires_grad_()
    norm.zero_grad(set_to_none=True)
    y = norm(x)
    y.backward(grad_out)
    return y.detach(), x.grad, norm.weight.grad


@pytest.mark.parametrize("shape", [(3, 8), (2, 5, 16), (2, 4, 3, 32)])  # last: per-head q/k norm
def test_values_and_gradients_equal_nn_rmsnorm(shape):
    ours, ref = pair(shape[-1])
    x, g = torch.randn(shape) * 3, torch.randn(shape)
    for got, want in zip(value_and_grads(ours, x, g), value_and_grads(ref, x, g)):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gradients_pass_gradcheck_in_float64():
    x = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    w = torch.rand(6, dtype=torch.float64).add_(0.5).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: rms_norm(a, b, EPS), (x, w))


@pytest.mark.parametrize("x_dtype,w_dtype", [(torch.bfloat16, torch.float32), (torch.bfloat16, torch.bfloat16),
                                             (torch.float16, torch.float16)])
def test_half_precision_input_gives_torch_rms_norm_bits(x_dtype, w_dtype):
    ours, ref = pair(16)
    ours.to(w_dtype), ref.to(w_dtype)
    x, g = torch.randn(2, 7, 16).to(x_dtype), torch.randn(2, 7, 16).to(x_dtype)
    y, gx, gw = value_and_grads(ours, x, g)
    y_ref, gx_ref, gw_ref = value_and_grads(ref, x, g)
    assert y.dtype == y_ref.dtype == gx.dtype == x_dtype and gw.dtype == w_dtype
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # one rounding of the same float32 result
    torch.testing.assert_close(gx.float(), gx_ref.float(), rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(gw.float(), gw_ref.float(), rtol=2e-2, atol=2e-2)


def test_only_the_wanted_gradients_are_computed():
    ours, _ = pair(8)
    ours.weight.requires_grad_(False)  # a frozen norm, as under LoRA
    x = torch.randn(3, 8, requires_grad=True)
    ours(x).sum().backward()
    assert x.grad is not None and ours.weight.grad is None

    ours.weight.requires_grad_(True)
    ours(torch.randn(3, 8)).sum().backward()  # input without gradient: only the weight's
    assert ours.weight.grad is not None and ours.weight.grad.abs().sum() > 0


def test_is_an_nn_rmsnorm_with_the_same_state_dict():
    ours, ref = pair(8)
    assert isinstance(ours, nn.RMSNorm)
    assert ours.state_dict().keys() == ref.state_dict().keys() == {"weight"}



def test_other_devices_use_torch_rms_norm():
    """Off the CPU (GPUs have a fused kernel) the call is `F.rms_norm`'s, shown on the meta device."""
    x, w = torch.empty(2, 5, 8, device="meta"), torch.empty(8, device="meta", requires_grad=True)
    y = rms_norm(x, w, EPS)
    assert y.device.type == "meta" and y.shape == x.shape
    assert "_RMSNorm" not in type(y.grad_fn).__name__
