"""An untied token embedding whose gradient is sparse rows when a dense buffer will take them.

Why: only the rows of the batch's tokens get a gradient, yet the dense form zero-fills and adds
a whole vocab × width matrix each step (for a 50K-word, 768-wide table, 154 MB). A sparse
gradient avoids that, but only where autograd adds it into a dense `.grad` in place; landing on
an empty `.grad`, it would become the weight's gradient itself, and AdamW and gradient clipping
refuse sparse gradients. Whether a dense buffer is there is decided when the gradient is made,
in backward: a loop that zeroes with `set_to_none=True` between forward and backward (the usual
"forward, zero_grad, backward, step") has no buffer then, though it had one at the forward.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class _BufferedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight):
        ctx.save_for_backward(idx)
        ctx.weight = weight  # the parameter itself: its `.grad` is looked at in backward
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        weight = ctx.weight
        rows = grad_out.reshape(-1, grad_out.shape[-1])
        buffer = weight.grad
        if buffer is not None and buffer.layout == torch.strided:  # added in place: rows suffice
            grad = torch.sparse_coo_tensor(
                idx.reshape(1, -1).to(torch.int64), rows, weight.shape, dtype=weight.dtype, check_invariants=False
            )  # the ids index the table (the forward's lookup checked them): no check needed
        else:
            grad = torch.ops.aten.embedding_dense_backward(rows, idx.reshape(-1), weight.shape[0], -1, False)
        return None, grad


def buffered_embedding(idx: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """`F.embedding(idx, weight)`, with its gradient sparse only where a dense `.grad` absorbs it."""
    return _BufferedEmbedding.apply(idx, weight)
