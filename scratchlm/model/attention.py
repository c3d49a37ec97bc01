"""Scaled dot-product attention, run by the kernel that is fastest for its precision and shape.

Why this exists: on CPU, PyTorch's flash-attention backward is much slower in bfloat16 than in
float32 for short sequences (fwd + bwd on an AVX-512 BF16 machine: 1.2–3.4× at T ≤ 256 and
head_dim ≤ 64; even at T = 512; bf16 ahead from T = 1024; forward alone is not slower). So under
CPU autocast, attention that will be backpropagated at T ≤ 256 does not run SDPA's bf16 kernel:

- Causal self-attention without a mask or dropout (every pretraining step) with head_dim ≥ 32
  runs over materialized scores (`scores_attention`): one batched product makes all the scores,
  in float32; the softmax runs in float32; the products with V and the gradients' products run in
  bf16 on bf16 probabilities, which is how SDPA's own bf16 kernel rounds them. At these lengths
  the scores are small (256 × 256 floats a head), and a few large batched products beat the flash
  kernel's many small tiles: on 2 cores 1.3–1.8× SDPA's float32 kernel at head_dim 32–64 and
  1.7× its bf16 kernel at 128. At head_dim 16 the scores' elementwise work outweighs the products
  and the two tie, so the float32 kernel keeps those. At T = 512 the scores were faster still, but
  the probabilities saved for backward (T² per head) would then outweigh the rest of a layer's
  activations, so the rule stops at 256.
- The rest at T ≤ 256 (a mask, dropout, head_dim below 32) runs SDPA's float32 kernel on
  float32 copies: the exact float32 answer, rounded once. Above head_dim 64 that kernel lost, so these cases
  keep SDPA's bf16 kernel there.

Everything else (GPUs, inference, long sequences, plain float32) calls SDPA unchanged.
`benchmarks/attention.py` times all three kernels on each shape and checks the rule's pick.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

SHORT_SEQ_LEN = 256  # up to here SDPA's bf16 training kernel was the slowest of the three
FLOAT32_MAX_HEAD_DIM = 64  # SDPA's float32 kernel beat its bf16 one up to this head size
SCORES_MIN_HEAD_DIM = 32  # materialized scores beat both kernels from this head size


def choose_kernel(q: torch.Tensor, k: torch.Tensor, *, mask: torch.Tensor | None, is_causal: bool, dropout_p: float) -> str:
    """Which kernel `attend` runs: "sdpa" (SDPA in q's dtype), "scores" (`scores_attention`) or
    "float32" (`float32_attention`); see the module doc."""
    reduced_precision_training = (
        q.device.type == "cpu"
        and q.dtype in (torch.bfloat16, torch.float16)
        and torch.is_grad_enabled()
        and (q.requires_grad or k.requires_grad)
    )
    head_dim = q.shape[-1]
    if not reduced_precision_training or max(q.shape[-2], k.shape[-2]) > SHORT_SEQ_LEN:
        return "sdpa"
    plain_causal = mask is None and is_causal and dropout_p == 0.0 and q.shape[-2] == k.shape[-2]
    if plain_causal and head_dim >= SCORES_MIN_HEAD_DIM:
        return "scores"
    return "float32" if head_dim <= FLOAT32_MAX_HEAD_DIM else "sdpa"


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
    kernel = choose_kernel(q, k, mask=mask, is_causal=is_causal, dropout_p=dropout_p)
    if kernel == "scores":
        return scores_attention(q, k, v)
    sdpa = float32_attention if kernel == "float32" else F.scaled_dot_product_attention
    return sdpa(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal, enable_gqa=enable_gqa)


def float32_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **sdpa_args) -> torch.Tensor:
    """SDPA run by its float32 kernel on float32 copies of q, k, v; the result in q's dtype."""
    with torch.autocast(q.device.type, enabled=False):
        y = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), **sdpa_args)
    return y.to(q.dtype)


def scores_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Causal self-attention of q (B, H, T, d) over k, v (B, H_kv, T, d), H a multiple of H_kv, by
    materialized scores (module doc). Equals `F.scaled_dot_product_attention(q, k, v,
    is_causal=True, enable_gqa=True)` up to the rounding of the probabilities to q's dtype."""
    batch, heads, seq_len, head_dim = q.shape
    kv_heads = k.shape[1]
    # The query heads sharing one K/V head are stacked (rows g·T + t), so a group's scores are a
    # single product and K/V are never repeated.
    grouped = (
        q.reshape(batch * kv_heads, heads // kv_heads * seq_len, head_dim),
        k.reshape(batch * kv_heads, seq_len, head_dim),
        v.reshape(batch * kv_heads, seq_len, head_dim),
    )
    if torch.compiler.is_compiling():
        y, _ = _scores_attention_op(*grouped)
    else:
        y = _ScoresAttention.apply(*grouped)
    return y.view(q.shape)


_causal_biases: dict[tuple[int, int, torch.device], torch.Tensor] = {}


def _causal_bias(group: int, seq_len: int, device: torch.device) -> torch.Tensor:
    """0 where a query may look, −inf after it: (group · T, T), the T × T mask once per query head
    of a group, as the group's queries are stacked into one product."""
    key = (group, seq_len, device)
    if key not in _causal_biases:
        future = torch.ones(seq_len, seq_len, dtype=torch.bool, device=device).triu_(1)
        bias = torch.zeros(seq_len, seq_len, device=device).masked_fill_(future, float("-inf"))
        _causal_biases[key] = bias.repeat(group, 1)
    return _causal_biases[key]


def _scores_forward(qg: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Grouped q (B·H_kv, group·T, d), k and v (B·H_kv, T, d) → (output like q, probabilities in
    q's dtype, saved for backward)."""
    group, seq_len = qg.shape[1] // kg.shape[1], kg.shape[1]
    with torch.autocast(qg.device.type, enabled=False):
        bias = _causal_bias(group, seq_len, qg.device)
        scores = torch.baddbmm(bias, qg.float(), kg.float().transpose(1, 2), alpha=qg.shape[-1] ** -0.5)
        torch.softmax(scores, dim=-1, out=scores)
        probs = scores.to(qg.dtype)
        return torch.bmm(probs, vg), probs


def _scores_backward(qg, kg, vg, probs, grad_y) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale = qg.shape[-1] ** -0.5
    with torch.autocast(qg.device.type, enabled=False):
        grad_y = grad_y.to(probs.dtype)
        grad_v = torch.bmm(probs.transpose(1, 2), grad_y)
        grad_probs = torch.bmm(grad_y, vg.transpose(1, 2))
        # softmax backward, d(scores) = p · (dp − Σ p·dp), in one pass (PyTorch's own kernel)
        grad_scores = torch._softmax_backward_data(grad_probs, probs, -1, probs.dtype)
        grad_q = torch.bmm(grad_scores, kg).mul_(scale)
        grad_k = torch.bmm(grad_scores.transpose(1, 2), qg).mul_(scale)
    return grad_q, grad_k, grad_v


class _ScoresAttention(torch.autograd.Function):
    """The eager route: an autograd.Function costs less per call than the registered op below
    (about 50 µs of a layer's attention, measured at the tiny shape)."""

    @staticmethod
    def forward(ctx, qg, kg, vg):
        y, probs = _scores_forward(qg, kg, vg)
        ctx.save_for_backward(qg, kg, vg, probs)
        return y

    @staticmethod
    def backward(ctx, grad_y):
        return _scores_backward(*ctx.saved_tensors, grad_y)


# Under `torch.compile` the same kernel is a registered op, which the compiler keeps whole (an
# opaque call) instead of tracing into it or falling back to SDPA: measured on 2 cores, bf16
# autocast, the compiled training step of the 10M shape ran 1.05× (GPT-2) and 1.10× (Llama) its
# eager speed with it, and 0.95× and 0.82× without. It returns the probabilities too, because an
# op's backward may keep only its inputs and outputs.
@torch.library.custom_op("scratchlm::scores_attention", mutates_args=())
def _scores_attention_op(qg: torch.Tensor, kg: torch.Tensor, vg: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return _scores_forward(qg, kg, vg)


@_scores_attention_op.register_fake
def _(qg, kg, vg):
    return qg.new_empty(qg.shape), qg.new_empty(*qg.shape[:2], kg.shape[1])


def _save_for_backward(ctx, inputs, output) -> None:
    ctx.save_for_backward(*inputs, output[1])
    ctx.mark_non_differentiable(output[1])
    ctx.set_materialize_grads(False)  # else backward gets a zero-filled gradient for the probabilities


_scores_attention_op.register_autograd(
    lambda ctx, grad_y, _grad_probs: _scores_backward(*ctx.saved_tensors, grad_y), setup_context=_save_for_backward
)
