import pytest
import torch
import torch.nn.functional as F

from scratchlm.model.activation import gelu_tanh, soft_cap
from scratchlm.model.config import ModelConfig
from scratchlm.model.gpt import GPT, MLP


def test_eager_gelu_is_pytorchs_own():
    x = torch.randn(64, 48, generator=torch.Generator().manual_seed(0)) * 4
    assert torch.equal(gelu_tanh(x), F.gelu(x, approximate="tanh"))


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)])
def test_compiled_gpt2_mlp_computes_the_same_gelu_without_tanh(dtype, tolerance):
    """Compiled, the GPT-2 MLP's activation is x·σ(2u), never tanh (slow on CPU), with the eager
    output and gradients; wide inputs cover the tails where 1 + tanh(u) cancels."""
    from torch._inductor.compile_fx import compile_fx

    traced: list[str] = []

    def inductor_recording_ops(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes)
        return compile_fx(gm, example_inputs)

    cfg = ModelConfig(vocab_size=32, n_layer=1, n_head=2, d_model=16, d_ff=64, max_seq_len=8, mlp="gelu",
                      pos="learned", norm="layernorm")
    torch.manual_seed(0)
    mlp = MLP(cfg).to(dtype)
    x = (torch.randn(2, 8, 16) * 3).to(dtype)
    grad_out = torch.randn(2, 8, 16).to(dtype)

    def forward_backward(fn):
        mlp.zero_grad(set_to_none=True)
        xs = x.clone().requires_grad_()
        y = fn(xs)
        y.backward(grad_out)
        return y.detach(), xs.grad, mlp.fc.weight.grad

    eager = forward_backward(mlp)
    torch._dynamo.reset()
    compiled = forward_backward(torch.compile(mlp, backend=inductor_recording_ops, fullgraph=True))
    assert any("sigmoid" in target for target in traced), traced
    assert not any("gelu" in target or "tanh" in target for target in traced), traced
    for name, got, want in zip(("y", "dx", "dW"), compiled, eager):
        torch.testing.assert_close(got, want, rtol=tolerance, atol=tolerance, msg=name)


def test_soft_cap_is_cap_times_tanh_with_its_gradient():
    z = torch.cat([torch.linspace(-400, 400, 4001), torch.linspace(-1e-3, 1e-3, 101)]).requires_grad_()
    capped = soft_cap(z, 30.0)
    capped.backward(torch.ones_like(capped))
    zd = z.detach().double().requires_grad_()
    want = 30.0 * torch.tanh(zd / 30.0)
    want.backward(torch.ones_like(want))
    torch.testing.assert_close(capped.double(), want, rtol=0, atol=1e-5)
    torch.testing.assert_close(z.grad.double(), zd.grad, rtol=0, atol=1e-6)
    assert capped.abs().max() <= 30.0


def test_soft_capped_loss_and_logits_never_evaluate_tanh():
    """Soft-capping runs once per logit, where PyTorch's CPU tanh would cost most (module doc)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpNames(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.names: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.names.append(str(func))
            return func(*args, **(kwargs or {}))

    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=16, d_ff=32, max_seq_len=8, logit_softcap=5.0)
    torch.manual_seed(0)
    model = GPT(cfg)
    idx = torch.randint(0, 64, (2, 8))
    with OpNames() as seen:
        model(idx, targets=idx).objective.backward()
        logits = model(idx)
    assert not any("tanh" in name for name in seen.names), [n for n in seen.names if "tanh" in n]
    assert logits.abs().max() <= 5.0


def test_soft_cap_of_bf16_logits_is_computed_wide_and_rounded_once():
    """In bf16 the σ form passed near ±cap, where bf16 keeps steps of 1/8: 0.1 and 1.3 came out
    0.0 and 1.375, and greedy decoding of a bf16 soft-capped model went wrong from the first token."""
    z = torch.tensor([0.1, 0.3, -0.7, 1.3, 25.0, -40.0])
    exact = 30.0 * torch.tanh(z.double() / 30.0)
    capped = soft_cap(z.bfloat16(), 30.0)
    assert capped.dtype == torch.bfloat16
    torch.testing.assert_close(capped.double(), exact.bfloat16().double(), rtol=0, atol=0)  # the exact value, rounded once
    torch.testing.assert_close(soft_cap(z, 30.0).double(), exact, rtol=0, atol=1e-5)
