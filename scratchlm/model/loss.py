"""Next-token cross-entropy fused with the output head's matmul.

Why fuse: the head turns N hidden states into N × vocab logits, by far the largest activation of
a small model (256 tokens × 50,257 words is 51 MB in fp32). The textbook path — logits, a float32
copy, log-softmax, then in backward a zero-filled gradient, the log-softmax backward and a cast
back — allocates and streams several tensors of that size. Here the logits are made once in the
compute dtype and each block of rows is turned, in place, from logits into d(loss)/d(logits)
(softmax minus one-hot) while it is still small and warm in cache, in float32. The two matmuls
of the backward then run right away, so backward only scales the stored gradients.

Under autocast the head's float32 table is cast to the compute dtype a slice of vocab rows at a
time, each slice used while it is in cache, and the table's gradient is written back to float32
slice by slice: neither a whole low-precision copy of the table nor a whole low-precision
gradient is ever made (for GPT-2 124M, 77 MB each, fresh memory every step).

The result equals `F.cross_entropy(logits.float(), targets, ignore_index=...)` (mean over the
targets that are not ignored) up to float rounding, with the same matmul FLOPs: nothing is
recomputed. Options: tanh soft-capping of the logits (Gemma 2) and the z-loss (PaLM), the mean
squared log-normaliser, added with a weight to the objective.

Under `torch.compile` the same loss is written as plain tensor ops instead (`_composite_loss`):
the compiler fuses softmax, gather and their gradients into a few kernels of its own, and the
hand-made blocks only get in its way. Measured on 2 CPU cores, 10M shape, bf16 autocast: the
compiled training step's lead over `transformers` went from 1.05–1.08× to 1.10–1.14× (Llama)
and from 1.06–1.07× to 1.10× (GPT-2); float32 was no different (benchmarks/RESULTS.md).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from scratchlm.model.activation import soft_cap
from scratchlm.model.matmul import linear, weight_gradient
from scratchlm.model.tied import GradientHandoff

IGNORE_INDEX = -100  # the target value that contributes nothing (padding, prompt tokens)
_BLOCK_BYTES = 4 << 20  # CPU float32 work block: small enough to stay in cache and reuse freed memory
# Elsewhere (GPUs) each block costs several kernel launches and there is no cache to fit: blocks
# only bound the float32 temporaries' memory (GPT-2's 16 × 1,024 rows: 13 blocks, not 820).
_ACCELERATOR_BLOCK_BYTES = 256 << 20
_CAST_SLICE_BYTES = 8 << 20  # compute-dtype copy of one slice of the table's rows


class HeadLoss(NamedTuple):
    """`objective` is what to backpropagate (cross-entropy + z_loss · z); `loss` is the plain mean
    cross-entropy, detached, for logging."""

    objective: torch.Tensor
    loss: torch.Tensor


class _FusedHeadCrossEntropy(torch.autograd.Function):
    """Forward returns (objective, loss) and, when gradients are wanted, also computes them."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, softcap, z_weight, ignore_index, compute_dtype, handoff, grad_enabled):
        ctx.handoff = handoff
        # Which gradients to make now: `needs_input_grad` says only which inputs require them, and
        # stays true under no_grad (evaluation), where no backward can follow.
        wanted = tuple(grad_enabled and needed for needed in ctx.needs_input_grad[:2])
        with torch.autocast(hidden.device.type, enabled=False):
            return _forward(ctx, hidden, weight, targets, softcap, z_weight, ignore_index, compute_dtype, wanted)

    @staticmethod
    def backward(ctx, grad_objective, grad_loss):
        if getattr(ctx, "spent", False):
            raise RuntimeError(
                "the fused head loss allows one backward pass per forward (it scales its saved gradients "
                "in place); for backward(retain_graph=True) twice, take the loss from the logits "
                "(model(idx) then F.cross_entropy)"
            )
        grad_hidden, grad_weight = ctx.saved_tensors
        scaled = not _is_one(grad_objective)
        ctx.spent = scaled or ctx.handoff is not None  # the saved gradients are changed below
        if scaled:
            # Scaling in place: these are ours alone, and a fresh copy of a vocab × width
            # gradient would cost more than the scaling itself.
            for grad in (grad_hidden, grad_weight):
                if grad is not None:
                    grad.mul_(grad_objective.to(grad.dtype))
        if ctx.handoff is not None:  # a tied embedding's backward adds its rows and returns it
            ctx.handoff.put(grad_weight)
            grad_weight = None
        return grad_hidden, grad_weight, None, None, None, None, None, None, None


def _is_one(grad: torch.Tensor) -> bool:
    """True when the incoming gradient is known to be exactly 1 without a device sync."""
    if torch.compiler.is_compiling() or grad.device.type != "cpu":
        return False
    return float(grad) == 1.0


def _vocab_slices(weight: torch.Tensor, compute_dtype: torch.dtype) -> list[slice]:
    """Row slices of the table to cast one at a time; the whole table when no cast is needed."""
    vocab, width = weight.shape
    if weight.dtype == compute_dtype:
        return [slice(0, vocab)]
    rows = max(1, _CAST_SLICE_BYTES // (width * torch.finfo(compute_dtype).bits // 8))
    return [slice(start, min(start + rows, vocab)) for start in range(0, vocab, rows)]


def _forward(ctx, hidden, weight, targets, softcap, z_weight, ignore_index, compute_dtype, wanted):
    h = hidden.to(compute_dtype)
    n_rows, vocab = h.shape[0], weight.shape[0]
    slices = _vocab_slices(weight, compute_dtype)
    # logits, then (block by block, in place) the gradient of the objective w.r.t. the logits
    work = None if len(slices) == 1 else torch.empty(n_rows, vocab, dtype=compute_dtype, device=h.device)
    for cols in slices:
        table_slice = weight[cols].to(compute_dtype)  # a no-op view when there is nothing to cast
        if work is None:  # nothing to cast: one product makes all the logits
            work = linear(h, table_slice)
        else:
            torch.mm(h, table_slice.t(), out=work[:, cols])
    valid = targets != ignore_index
    safe_targets = torch.where(valid, targets, 0).unsqueeze(1)
    inv_count = 1.0 / valid.sum().clamp(min=1).to(torch.float32)
    row_weight = valid.to(torch.float32) * inv_count  # each kept row's share of the mean
    want_grad = any(wanted)
    ce_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    z_total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    step = _rows_per_block(h.device, vocab)
    for start in range(0, n_rows, step):
        rows = slice(start, min(start + step, n_rows))
        block = work[rows]
        z = block if block.dtype == torch.float32 else block.float()
        if softcap is not None:
            z = soft_cap(z, softcap)
        # One fused softmax pass; the log-normaliser then comes from the largest probability,
        # exp(max − lse), which is at least 1 / vocab and so never underflows (unlike the
        # target's). amax, not max: max also finds the index, and that costs more than softmax.
        probs = torch.softmax(z, dim=-1)
        lse = z.amax(dim=-1) - probs.amax(dim=-1).log_()
        picked = z.gather(1, safe_targets[rows]).squeeze(1)
        share = row_weight[rows]
        ce_total += ((lse - picked) * share).sum()
        if z_weight:
            z_total += (lse.square() * share).sum()
        if not want_grad:
            continue
        # d/dz [lse − z_t + z_weight · lse²] = softmax · (1 + 2 · z_weight · lse) − onehot(t)
        scale = share * (1.0 + 2.0 * z_weight * lse) if z_weight else share
        probs.mul_(scale.unsqueeze(1))
        probs.scatter_add_(1, safe_targets[rows], -share.unsqueeze(1))
        if softcap is not None:  # through softcap · tanh(x / softcap): times 1 − tanh², tanh = z / softcap
            probs.mul_(1.0 - (z / softcap).square())
        block.copy_(probs)
    loss = ce_total
    objective = ce_total + z_weight * z_total if z_weight else ce_total.clone()
    if want_grad:
        grad_hidden, grad_weight = _matmul_grads(work, h, weight, slices, table_slice, *wanted)
        ctx.save_for_backward(None if grad_hidden is None else grad_hidden.to(hidden.dtype), grad_weight)
    ctx.mark_non_differentiable(loss)
    return objective, loss


def _rows_per_block(device: torch.device, vocab: int) -> int:
    """Rows of logits turned into gradients at a time: a float32 block of the device's size."""
    block_bytes = _BLOCK_BYTES if device.type == "cpu" else _ACCELERATOR_BLOCK_BYTES
    return max(1, block_bytes // (4 * vocab))


def _matmul_grads(work, h, weight, slices, last_slice, need_hidden: bool, need_weight: bool):
    """d(objective)/d(hidden) = G · W and d(objective)/d(W) = Gᵀ · h, for G = `work`, each only
    if wanted (a frozen head, as in LoRA, skips a third of the head's FLOPs).

    The table is cast slice by slice again, as in the forward: keeping every cast slice would be
    the whole low-precision table again. Going backwards, the forward's last cast slice
    (`last_slice`) is still at hand, so a table of one slice is cast once in all. d/dhidden is
    accumulated in float32; d/dW is one product (`weight_gradient`) when nothing was cast, else
    each slice's product is written into its rows of a table-sized gradient, cast to its dtype.
    """
    grad_hidden = None
    grad_weight = torch.empty_like(weight) if need_weight and len(slices) > 1 else None
    for cols in reversed(slices):
        part = work[:, cols]
        if need_hidden:  # only G·W needs the table
            table_slice = last_slice if cols is slices[-1] else weight[cols].to(work.dtype)
            product = linear(part, table_slice.t())  # G·W, written as a product with Wᵀ's transpose
            if grad_hidden is None:
                grad_hidden = product.float()  # accumulated in float32
            else:
                grad_hidden += product
        if need_weight and len(slices) == 1:  # nothing cast: the table's dtype, in one product
            grad_weight = weight_gradient(part, h)
        elif need_weight:
            grad_weight[cols] = part.t() @ h
    return grad_hidden, grad_weight


def head_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    softcap: float | None = None,
    z_loss: float = 0.0,
    ignore_index: int = IGNORE_INDEX,
    handoff: GradientHandoff | None = None,
) -> HeadLoss:
    """Mean next-token cross-entropy of `hidden` (..., d) through the head `weight` (vocab, d).

    Under autocast the matmuls run in the autocast dtype and the softmax in float32, like
    autocast would run `F.linear` + `F.cross_entropy(logits.float())`. Rows whose target is
    `ignore_index` count for nothing; if every row is ignored the loss is 0. With a `handoff`
    (a tied embedding, `model/tied.py`), the weight's gradient goes to the embedding's backward;
    under torch.compile it is not used, and autograd adds the two gradients itself.
    """
    device_type = hidden.device.type
    if torch.compiler.is_compiling():
        return _composite_loss(hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
                               softcap, float(z_loss), ignore_index)
    compute_dtype = weight.dtype
    if torch.is_autocast_enabled(device_type):
        compute_dtype = torch.get_autocast_dtype(device_type)
    objective, loss = _FusedHeadCrossEntropy.apply(
        hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1),
        softcap, float(z_loss), ignore_index, compute_dtype, handoff, torch.is_grad_enabled(),
    )
    return HeadLoss(objective, loss)


def _composite_loss(hidden, weight, targets, softcap, z_weight, ignore_index) -> HeadLoss:
    """The fused loss's result in plain ops, for the compiler to fuse (see the module doc).

    `F.cross_entropy` rather than logsumexp and gather: the compiler's code for its gradient was
    measured faster. Summed, then divided by the kept rows, so all-ignored targets give 0, not NaN."""
    z = linear(hidden, weight).float()  # the product in the compute dtype, the softmax in float32
    if softcap is not None:
        z = soft_cap(z, softcap)
    count = (targets != ignore_index).sum().clamp(min=1).to(torch.float32)
    ce = F.cross_entropy(z, targets, ignore_index=ignore_index, reduction="sum") / count
    if not z_weight:
        return HeadLoss(ce, ce.detach())
    lse = torch.logsumexp(z, dim=-1).masked_fill(targets == ignore_index, 0.0)
    return HeadLoss(ce + z_weight * lse.square().sum() / count, ce.detach())
