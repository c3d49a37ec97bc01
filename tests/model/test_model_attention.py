"""attend(): SDPA, with CPU reduced-precision training attention run by a faster kernel:
materialized scores for plain causal attention, SDPA's float32 kernel for the rest."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model.attention import (
    FLOAT32_MAX_HEAD_DIM,
    SCORES_MIN_HEAD_DIM,
    SHORT_SEQ_LEN,
    attend,
    choose_kernel,
    scores_attention,
)


def qkv(B=2, H=4, KV=2, T=32, hd=16, dtype=torch.bfloat16, grad=True):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, T, hd, generator=g).to(dtype) for h in (H, KV, KV))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def kernel(q, k, mask=None, is_causal=True, dropout_p=0.0):
    return choose_kernel(q, k, mask=mask, is_causal=is_causal, dropout_p=dropout_p)


def test_the_kernel_rule_covers_short_reduced_precision_cpu_training_only():
    wide = SCORES_MIN_HEAD_DIM
    assert kernel(*qkv(hd=wide)[:2]) == "scores"
    assert kernel(*qkv(hd=wide, dtype=torch.float16)[:2]) == "scores"
    assert kernel(*qkv(hd=2 * FLOAT32_MAX_HEAD_DIM, B=1, H=1, KV=1)[:2]) == "scores"
    assert kernel(*qkv(T=SHORT_SEQ_LEN, hd=wide, B=1, H=1, KV=1)[:2]) == "scores"
    assert kernel(*qkv(hd=SCORES_MIN_HEAD_DIM // 2)[:2]) == "float32"  # narrow heads: the fused kernel wins
    q, k, _ = qkv(hd=wide)
    mask = torch.ones(32, 32, dtype=torch.bool).tril()
    assert kernel(q, k, mask=mask, is_causal=False) == "float32"  # masks and dropout: SDPA's float32 kernel
    assert kernel(q, k, dropout_p=0.1) == "float32"
    assert kernel(q, k[:, :, :16]) == "float32"  # queries and keys of different lengths
    q, k, _ = qkv(hd=2 * FLOAT32_MAX_HEAD_DIM, B=1, H=1, KV=1)
    assert kernel(q, k, mask=torch.ones(32, 32, dtype=torch.bool), is_causal=False) == "sdpa"
    assert kernel(*qkv(T=SHORT_SEQ_LEN + 1, hd=wide, B=1, H=1, KV=1)[:2]) == "sdpa"  # long: bf16 SDPA
    assert kernel(*qkv(hd=wide, dtype=torch.float32)[:2]) == "sdpa"  # already float32
    assert kernel(*qkv(hd=wide, grad=False)[:2]) == "sdpa"  # inference: the bf16 forward is as fast
    with torch.no_grad():
        assert kernel(q, k) == "sdpa"


def _forward_backward(attention, q, k, v, grad_out):
    q, k, v = (t.detach().requires_grad_() for t in (q, k, v))
    y = attention(q, k, v)
    y.backward(grad_out.to(y.dtype))
    return [t.double() for t in (y, q.grad, k.grad, v.grad)]


@pytest.mark.parametrize("H,KV,T", [(4, 4, 32), (4, 2, 33), (6, 1, 17)])
def test_scores_attention_is_sdpa_and_as_accurate_as_its_bf16_kernel(H, KV, T):
    """MHA, GQA and MQA, output and all three gradients: equal to SDPA in float64 (up to the float32
    scores), and in bf16 no further from the float64 answer than SDPA's own bf16 kernel."""
    q, k, v = qkv(H=H, KV=KV, T=T, hd=32, dtype=torch.float64)
    grad_out = torch.randn(q.shape[0], T, H, 32, generator=torch.Generator().manual_seed(1),
                           dtype=torch.float64).transpose(1, 2)  # strided, as the model's gradient arrives
    def sdpa(q, k, v):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=KV != H)

    truth = _forward_backward(sdpa, q, k, v, grad_out)
    exact = _forward_backward(scores_attention, q, k, v, grad_out)
    for ours, ref in zip(exact, truth):
        assert (ours - ref).abs().max() <= 1e-5 * ref.abs().max()

    low = [t.to(torch.bfloat16) for t in (q, k, v)]
    ours = _forward_backward(scores_attention, *low, grad_out)
    theirs = _forward_backward(sdpa, *low, grad_out)
    for name, a, b, ref in zip(("y", "dq", "dk", "dv"), ours, theirs, truth):
        our_err, their_err = (a - ref).norm() / ref.norm(), (b - ref).norm() / ref.norm()
        assert our_err <= 1.25 * their_err, (name, our_err.item(), their_err.item())


def test_attend_under_autocast_runs_the_scores_kernel():
    """Through `attend`, under autocast, as the model calls it: the scores kernel's result."""
    q, k, v = qkv(hd=32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, k, v, mask=None, is_causal=True, dropout_p=0.0, enable_gqa=True)
    assert y.dtype == torch.bfloat16 and "_ScoresAttentionBackward" in str(y.grad_fn.next_functions)
    assert torch.equal(y, scores_attention(q, k, v))


def test_torch_compile_keeps_the_scores_kernel_and_its_gradients():
    """Compiled, bf16 training attention still runs the scores kernel (a registered op the compiler
    calls whole, not SDPA), with the eager kernel's output and gradients, MQA included."""
    from torch._inductor.compile_fx import compile_fx

    traced: list[str] = []

    def inductor_recording_ops(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes)
        return compile_fx(gm, example_inputs)

    def attention(q, k, v):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return attend(q, k, v, mask=None, is_causal=True, dropout_p=0.0, enable_gqa=True)

    q, k, v = qkv(H=4, KV=1, T=24, hd=32)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    eager = _forward_backward(attention, q, k, v, grad_out)
    torch._dynamo.reset()
    compiled = _forward_backward(torch.compile(attention, backend=inductor_recording_ops, fullgraph=True),
                                 q, k, v, grad_out)
    assert any("scores_attention" in t for t in traced), traced
    assert not any("scaled_dot_product" in t for t in traced), traced
    for name, got, want in zip(("y", "dq", "dk", "dv"), compiled, eager):
        torch.testing.assert_close(got, want, rtol=0.02, atol=0.02, msg=name)


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (4, 1)])
def test_bf16_training_attention_with_narrow_heads_equals_the_float32_kernel_rounded_once(H, KV):
    """Under autocast the result is exactly float32 SDPA on the same bf16 inputs, rounded to bf16
    at the end — output and all three gradients — so it is at least as accurate as bf16 SDPA."""
    q, k, v = qkv(H=H, KV=KV)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, k, v, mask=None, is_causal=True, dropout_p=0.0, enable_gqa=KV != H)
    assert y.dtype == torch.bfloat16
    y.backward(grad_out)

    q32, k32, v32 = (t.detach().float().requires_grad_() for t in (q, k, v))
    ref = F.scaled_dot_product_attention(q32, k32, v32, is_causal=True, enable_gqa=KV != H)
    ref.backward(grad_out.float())
    assert torch.equal(y, ref.to(torch.bfloat16))
    for ours, theirs in ((q.grad, q32.grad), (k.grad, k32.grad), (v.grad, v32.grad)):
        assert ours.dtype == torch.bfloat16
        assert torch.equal(ours, theirs.to(torch.bfloat16))

    # and closer to the float32 answer than SDPA run in bf16, as autocast would run it
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bf16 = F.scaled_dot_product_attention(q.detach(), k.detach(), v.detach(), is_causal=True, enable_gqa=KV != H)
    assert (y.float() - ref).abs().max() <= (bf16.float() - ref).abs().max()


def test_explicit_mask_and_other_cases_pass_through_to_sdpa_unchanged():
    q, k, v = qkv(dtype=torch.float32, KV=4)
    mask = torch.ones(32, 32, dtype=torch.bool).tril(diagonal=3)
    y = attend(q, k, v, mask=mask, is_causal=False, dropout_p=0.0, enable_gqa=False)
    assert torch.equal(y, F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    q, k, v = qkv(grad=False)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = attend(q, k, v, mask=None, is_causal=True, dropout_p=0.0, enable_gqa=True)
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
    assert torch.equal(y, ref)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_a_bf16_training_step_of_the_model_runs_scores_attention_and_matches_the_float32_route(family, monkeypatch):
    """Through the real model (fused qkv, RoPE, GQA): every layer's attention takes the scores
    kernel, and the step's loss and gradients agree with the float32-kernel route to bf16 accuracy."""
    import scratchlm.model.attention as attention
    from scratchlm.model import GPT, ModelConfig

    shape = dict(vocab_size=96, n_layer=2, n_head=4, d_model=128, d_ff=256, max_seq_len=48)
    if family == "gpt2":
        cfg = ModelConfig(**shape, pos="learned", norm="layernorm", mlp="gelu", bias=True, tie_embeddings=True)
    else:
        cfg = ModelConfig(**shape, n_kv_head=2, pos="rope", norm="rmsnorm", mlp="swiglu", bias=False,
                          tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():  # sharper attention than at init, so a wrong score or grouping shows
        for block in model.blocks:
            block.attn.qkv.weight.mul_(8.0)
    idx, targets = torch.randint(0, 96, (2, 2, 48), generator=torch.Generator().manual_seed(1))
    picked = []
    real_choice = attention.choose_kernel

    def step(route):
        def choose(q, k, **kwargs):
            kernel = real_choice(q, k, **kwargs)
            picked.append(kernel)
            return "float32" if route == "float32" and kernel == "scores" else kernel

        monkeypatch.setattr(attention, "choose_kernel", choose)
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = model(idx, targets=targets).objective
        loss.backward()
        return loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()}

    loss, grads = step("scores")
    assert picked == ["scores"] * cfg.n_layer
    ref_loss, ref_grads = step("float32")
    assert abs(loss - ref_loss) <= 1e-3 * abs(ref_loss)
    for name, grad in grads.items():
        assert (grad - ref_grads[name]).norm() <= 0.02 * ref_grads[name].norm(), name
