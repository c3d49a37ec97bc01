"""One gradient for a token embedding tied to the output head, built in place.

Why: a tied table is used twice, so autograd receives two gradients for it and adds them. The
head's is a dense vocab × width matrix; the embedding's touches only the rows of the batch's
tokens. Sent dense, the embedding's gradient is a second zero-filled vocab × width matrix; sent
sparse, autograd adds it out of place, copying the head's (for GPT-2 124M either costs 154 MB
of fresh memory a step). Here the head's backward hands its gradient over instead of returning
it, and the embedding's backward, which autograd always runs later (the embeddings feed every
layer the head depends on), adds its rows into that same tensor and returns it: the weight gets
one dense gradient, and no vocab-sized temporary is made.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class GradientHandoff:
    """Holds the head's weight gradient between the head's backward and the embedding's."""

    def __init__(self) -> None:
        self.grad: torch.Tensor | None = None

    def put(self, grad: torch.Tensor) -> None:
        self.grad = grad

    def take(self) -> torch.Tensor | None:
        grad, self.grad = self.grad, None
        return grad


class _TiedEmbedding(torch.autograd.Function):
    @staticmethod
    def forward(ctx, idx, weight, handoff):
        ctx.save_for_backward(idx)
        ctx.handoff = handoff
        ctx.weight_shape, ctx.weight_dtype = weight.shape, weight.dtype
        return F.embedding(idx, weight)

    @staticmethod
    def backward(ctx, grad_out):
        (idx,) = ctx.saved_tensors
        grad = ctx.handoff.take()
        if grad is None:  # the head's gradient did not come this way (its loss was not backpropagated)
            grad = grad_out.new_zeros(ctx.weight_shape, dtype=ctx.weight_dtype)
        grad.index_add_(0, idx.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1]).to(grad.dtype))
        return None, grad, None


def tied_embedding(idx: torch.Tensor, weight: torch.Tensor, handoff: GradientHandoff) -> torch.Tensor:
    """`F.embedding(idx, weight)` whose backward adds into the gradient `handoff` carries."""
    return _TiedEmbedding.apply(idx, weight, handoff)
