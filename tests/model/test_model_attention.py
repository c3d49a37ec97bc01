"""attend(): SDPA, with CPU reduced-precision training attention run through the float32 kernel."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model.attention import FLOAT32_MAX_HEAD_DIM, FLOAT32_MAX_SEQ_LEN, attend, float32_is_faster


def qkv(B=2, H=4, KV=2, T=32, hd=16, dtype=torch.bfloat16, grad=True):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, T, hd, generator=g).to(dtype) for h in (H, KV, KV))
    return tuple(t.requires_grad_(grad) for t in (q, k, v))


def test_float32_kernel_is_chosen_only_for_short_reduced_precision_cpu_training():
    q, k, _ = qkv()
    assert float32_is_faster(q, k)
    assert float32_is_faster(*qkv(dtype=torch.float16)[:2])
    assert not float32_is_faster(*qkv(dtype=torch.float32)[:2])  # already float32
    assert not float32_is_faster(*qkv(grad=False)[:2])  # inference: bf16 forward is as fast
    with torch.no_grad():
        assert not float32_is_faster(q, k)
    assert not float32_is_faster(*qkv(T=FLOAT32_MAX_SEQ_LEN + 1, B=1, H=1, KV=1)[:2])
    assert not float32_is_faster(*qkv(hd=2 * FLOAT32_MAX_HEAD_DIM, B=1, H=1, KV=1)[:2])
    assert float32_is_faster(*qkv(T=FLOAT32_MAX_SEQ_LEN, hd=FLOAT32_MAX_HEAD_DIM, B=1, H=1, KV=1)[:2])


@pytest.mark.parametrize("H,KV", [(4, 4), (4, 2), (4, 1)])
def test_bf16_training_attention_equals_the_float32_kernel_rounded_once(H, KV):
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
