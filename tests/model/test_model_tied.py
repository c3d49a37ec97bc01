"""A tied token table gets one gradient, built in place from the head's: no vocab-sized temporary."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scratchlm.model import GPT, ModelConfig
from scratchlm.model.tied import GradientHandoff, tied_embedding

VOCAB, WIDTH = 211, 24


class VocabSizedOps(TorchDispatchMode):
    """Records every op that returns a new tensor of the table's shape (an allocation that size)."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        aliases_an_input = func._schema.returns[0].alias_info is not None  # views, in-place, out=
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (VOCAB, WIDTH) and not aliases_an_input:
            self.ops.append(str(func))
        return out


def tied_model() -> GPT:
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=VOCAB, n_layer=2, n_head=4, d_model=WIDTH, d_ff=48, max_seq_len=16,
                      tie_embeddings=True)
    return GPT(cfg)


@pytest.mark.parametrize("keep_buffers", [False, True])
def test_backward_makes_no_vocab_sized_tensor_beyond_the_heads_gradient(keep_buffers):
    model = tied_model()
    x, y = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    if keep_buffers:
        model(x, targets=y).objective.backward()
        model.zero_grad(set_to_none=False)
    out = model(x, targets=y)  # forward makes the head's gradient (one matmul): not counted
    with VocabSizedOps() as seen:
        out.objective.backward()
    # The head's gradient is the table's gradient: neither a zero-filled embedding gradient nor an
    # out-of-place sum of the two. With a kept buffer it is added into it in place.
    assert seen.ops == [], seen.ops

    reference = tied_model()
    F.cross_entropy(reference(x).flatten(0, 1), y.flatten()).backward()
    torch.testing.assert_close(model.tok_emb.weight.grad, reference.tok_emb.weight.grad, rtol=1e-5, atol=1e-7)


def test_the_old_sparse_path_would_have_made_one():
    """The recorder is not blind: autograd's dense + sparse sum of a tied table is out of place."""
    weight = torch.randn(VOCAB, WIDTH, requires_grad=True)
    idx = torch.randint(0, VOCAB, (8,))
    hidden = F.embedding(idx, weight, sparse=True) * 2
    objective = (hidden @ weight.t()).logsumexp(-1).sum()
    with VocabSizedOps() as seen:
        objective.backward()
    assert seen.ops, "expected autograd to allocate a vocab-sized sum"


def test_embedding_alone_gives_the_plain_gradient_when_nothing_was_handed_over():
    weight = torch.randn(VOCAB, WIDTH, requires_grad=True)
    idx = torch.tensor([[3, 5, 3], [0, 210, 5]])
    grad_out = torch.randn(2, 3, WIDTH)
    tied_embedding(idx, weight, GradientHandoff()).backward(grad_out)
    ours = weight.grad.clone()
    weight.grad = None
    F.embedding(idx, weight).backward(grad_out)
    torch.testing.assert_close(ours, weight.grad)
    assert torch.equal(tied_embedding(idx, weight, GradientHandoff()), F.embedding(idx, weight))


def test_an_upstream_factor_scales_both_parts_of_the_tied_gradient():
    model, reference = tied_model(), tied_model()
    x, y = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    (0.25 * model(x, targets=y).objective).backward()
    (0.25 * F.cross_entropy(reference(x).flatten(0, 1), y.flatten())).backward()
    for (name, p), q in zip(model.named_parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-7, msg=name)
