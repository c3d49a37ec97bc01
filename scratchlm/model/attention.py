"""Scaled dot-product attention, run in the precision whose kernel is faster.

Why this exists: on CPU, PyTorch's flash-attention backward is much slower in bfloat16 than in
float32 for short sequences (fwd + bwd on an AVX-512 BF16 machine: 1.2–3.4× at T ≤ 256 and
head_dim ≤ 64; even at T = 512; bf16 ahead from T = 1024 or head_dim 128; forward alone is not
slower). Under CPU autocast, which would run SDPA in bfloat16, attention that will be
backpropagated at those short shapes runs through the float32 kernel instead: faster, and the
result is the exact float32 answer rounded once. Everything else (GPUs, inference, long
sequences, plain float32) calls SDPA unchanged. `benchmarks/attention.py` re-measures the rule.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# Up to these sizes the float32 kernel was measured faster for forward + backward.
FLOAT32_MAX_SEQ_LEN = 256
FLOAT32_MAX_HEAD_DIM = 64


def float32_is_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """True for reduced-precision CPU attention that needs gradients, at short sequences."""
    return (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad)
        and q.shape[-1] <= FLOAT32_MAX_HEAD_DIM
        and max(q.shape[-2], k.shape[-2]) <= FLOAT32_MAX_SEQ_LEN
    )


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None,
    is_causal: bool,
    dropout_p: float,
    enable_gqa: bool,
) -> torch.Tensor:
    """`F.scaled_dot_product_attention(q, k, v, ...)`, in q's dtype, through the faster kernel."""
    kernel = float32_attention if float32_is_faster(q, k) else F.scaled_dot_product_attention
    return kernel(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=enable_gqa)


def float32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **sdpa_args) -> torch.Tensor:
    """SDPA run by its float32 kernel on float32 copies of q, k, v; the result in q's dtype."""
    with torch.autocast(q.device.type, enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **sdpa_args)
    return y.to(q.dtype)
