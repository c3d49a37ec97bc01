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


def test_frozen_weight_and_input_without_gradient_match_nn_rmsnorm():
    """The two backward branches taken alone: a frozen norm (as under LoRA) gives the input's
    gradient only, an input without gradient the weight's only, each equal to nn.RMSNorm's."""
    ours, ref = pair(8)
    x, g = torch.randn(3, 8), torch.randn(3, 8)
    for norm in (ours, ref):
        norm.weight.requires_grad_(False)
    (_, gx, gw), (_, gx_ref, _) = value_and_grads(ours, x, g), value_and_grads(ref, x, g)
    assert gw is None
    torch.testing.assert_close(gx, gx_ref, rtol=1e-5, atol=1e-5)

    grads = []
    for norm in (ours, ref):
        norm.weight.requires_grad_(True)
        norm(x).backward(g)  # x does not require a gradient
        grads.append(norm.weight.grad)
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-5, atol=1e-5)


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


def test_default_eps_is_the_dtype_epsilon_as_in_nn_rmsnorm():
    ours, ref = RMSNorm(8), nn.RMSNorm(8)  # eps None: torch.finfo(x.dtype).eps
    x = torch.randn(3, 8) * 1e-4  # small enough that eps matters
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=0)
    assert not torch.allclose(ours(x), rms_norm(x, ours.weight, 1e-5), rtol=1e-3)


def test_compiled_gradients_equal_nn_rmsnorm():
    """Under torch.compile the norm is the compiler's: torch 2.11 traced the hand-written gradient
    as zeros for both x and the weight, and every layer below a norm then learned nothing."""
    ours, ref = pair(16)
    x = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(1))
    grad_out = torch.randn(3, 5, 16, generator=torch.Generator().manual_seed(2))
    torch._dynamo.reset()
    got = value_and_grads(torch.compile(ours, backend="aot_eager"), x, grad_out)
    want = value_and_grads(ref, x, grad_out)
    for g, w, name in zip(got, want, ("y", "x.grad", "weight.grad")):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6, msg=name)
