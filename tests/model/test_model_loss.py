"""The fused head + cross-entropy gives the textbook loss and gradients, in every variant the
model and trainer use, and the sparse token-embedding gradient always lands as a dense one."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from scratchlm.model import GPT, ModelConfig
from scratchlm.model.loss import IGNORE_INDEX, head_cross_entropy

VOCAB = 97


def reference(hidden, weight, targets, softcap=None, z_loss=0.0):
    """Logits materialised whole, then PyTorch's own cross-entropy (and z-loss on kept rows)."""
    logits = (hidden @ weight.t()).float()
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    flat, flat_targets = logits.reshape(-1, logits.shape[-1]), targets.reshape(-1)
    loss = F.cross_entropy(flat, flat_targets, ignore_index=IGNORE_INDEX)
    kept = flat_targets != IGNORE_INDEX
    z = torch.logsumexp(flat[kept], dim=-1).square().mean()
    return loss, loss + z_loss * z


def leaves(*shapes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g).requires_grad_() for s in shapes]


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_loss_and_gradients_equal_the_materialised_cross_entropy(softcap, z_loss):
    hidden, weight = leaves((3, 40, 16), (VOCAB, 16))
    targets = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(1))
    targets[0, :7] = IGNORE_INDEX
    ref_loss, ref_objective = reference(hidden, weight, targets, softcap, z_loss)
    (0.5 * ref_objective).backward()  # an upstream factor, as with gradient accumulation
    ref_grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None

    out = head_cross_entropy(hidden, weight, targets, softcap=softcap, z_loss=z_loss)
    (0.5 * out.objective).backward()
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert out.objective.item() == pytest.approx(ref_objective.item(), rel=1e-6)
    assert not out.loss.requires_grad
    torch.testing.assert_close(hidden.grad, ref_grads[0], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weight.grad, ref_grads[1], rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("softcap", [None, 5.0])
@pytest.mark.parametrize("z_loss", [0.0, 1e-2])
def test_the_plain_ops_run_under_torch_compile_give_the_same_loss_and_gradients(softcap, z_loss):
    """`_composite_loss` is what `head_cross_entropy` becomes inside torch.compile."""
    from scratchlm.model.loss import _composite_loss

    hidden, weight = leaves((3, 40, 16), (VOCAB, 16), seed=9)
    targets = torch.randint(0, VOCAB, (3, 40), generator=torch.Generator().manual_seed(2))
    targets[1, 5:30] = IGNORE_INDEX
    ref_loss, ref_objective = reference(hidden, weight, targets, softcap, z_loss)
    ref_grads = torch.autograd.grad(0.5 * ref_objective, (hidden, weight))
    out = _composite_loss(hidden.flatten(0, 1), weight, targets.flatten(), softcap, z_loss, IGNORE_INDEX)
    grads = torch.autograd.grad(0.5 * out.objective, (hidden, weight))
    assert out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert out.objective.item() == pytest.approx(ref_objective.item(), rel=1e-6)
    assert not out.loss.requires_grad
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_the_plain_ops_give_zero_not_nan_when_every_row_is_ignored():
    from scratchlm.model.loss import _composite_loss

    hidden, weight = leaves((12, 8), (VOCAB, 8))
    out = _composite_loss(hidden, weight, torch.full((12,), IGNORE_INDEX), None, 1e-2, IGNORE_INDEX)
    grads = torch.autograd.grad(out.objective, (hidden, weight))
    assert out.loss.item() == 0.0 and out.objective.item() == 0.0
    assert all(g.abs().sum() == 0 for g in grads)


def test_targets_far_below_the_top_logit_give_the_exact_large_loss():
    """The log-normaliser comes from the largest probability, so a target whose own probability
    underflows float32 (here e^-300) still gets its true loss of about 300 nats, not inf."""
    hidden = torch.zeros(4, 2)
    hidden[:, 0] = 1.0
    weight = torch.zeros(VOCAB, 2)
    weight[0, 0], weight[1, 0] = 300.0, 150.0  # target logits: 0 (rows 0, 1), 150 (row 2), 300 (row 3)
    targets = torch.tensor([5, 6, 1, 0])
    hidden.requires_grad_()
    weight.requires_grad_()
    out = head_cross_entropy(hidden, weight, targets, z_loss=1e-4)
    ref_loss, ref_objective = reference(hidden, weight, targets, z_loss=1e-4)
    assert math.isfinite(out.loss.item()) and out.loss.item() == pytest.approx(ref_loss.item(), rel=1e-6)
    assert out.loss.item() == pytest.approx((300 + 300 + 150 + 0) / 4, rel=1e-6)
    assert out.objective.item() == pytest.approx(ref_objective.item(), rel=1e-6)


def test_rows_are_processed_in_blocks_without_changing_the_result(monkeypatch):
    """Block boundaries (here 7 rows of a 50-row batch) must not leak into the result."""
    import scratchlm.model.loss as loss_module

    hidden, weight = leaves((50, 8), (VOCAB, 8), seed=3)
    targets = torch.randint(0, VOCAB, (50,))
    targets[10:20] = IGNORE_INDEX  # an ignored run that crosses a block boundary
    whole = head_cross_entropy(hidden, weight, targets, z_loss=1e-2)
    whole_grads = torch.autograd.grad(whole.objective, (hidden, weight))
    monkeypatch.setattr(loss_module, "_BLOCK_BYTES", 7 * 4 * VOCAB)
    blocked = head_cross_entropy(hidden, weight, targets, z_loss=1e-2)
    blocked_grads = torch.autograd.grad(blocked.objective, (hidden, weight))
    assert blocked.loss.item() == pytest.approx(whole.loss.item(), rel=1e-6)
    assert blocked.objective.item() == pytest.approx(whole.objective.item(), rel=1e-6)
    for got, want in zip(blocked_grads, whole_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_blocks_are_cache_sized_on_cpu_and_launch_few_kernels_elsewhere():
    from scratchlm.model.loss import _rows_per_block

    gpt2_vocab, gpt2_rows = 50304, 16 * 1024
    assert _rows_per_block(torch.device("cpu"), gpt2_vocab) == 20  # 4 MiB of float32
    on_gpu = _rows_per_block(torch.device("cuda", 0), gpt2_vocab)
    assert math.ceil(gpt2_rows / on_gpu) == 13
    assert _rows_per_block(torch.device("cpu"), 10**9) == 1  # a huge vocabulary still makes progress


def test_bf16_autocast_matches_autocast_linear_then_float32_cross_entropy():
    hidden, weight = leaves((4, 64, 32), (VOCAB, 32), seed=2)
    targets = torch.randint(0, VOCAB, (4, 64))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = F.linear(hidden, weight)
        out = head_cross_entropy(hidden, weight, targets)
    assert logits.dtype == torch.bfloat16
    ref = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-3)
    out.objective.backward()
    assert hidden.grad.dtype == torch.float32 and weight.grad.dtype == torch.float32
    ref_hidden, ref_weight = (g.detach() for g in torch.autograd.grad(ref, (hidden, weight)))
    torch.testing.assert_close(hidden.grad, ref_hidden, rtol=0.05, atol=2e-4)
    torch.testing.assert_close(weight.grad, ref_weight, rtol=0.05, atol=2e-4)


def test_bf16_table_cast_in_vocab_slices_gives_the_whole_table_result(monkeypatch):
    """Under autocast the float32 table is cast and used a slice of rows at a time (here 10 rows
    of 97, the last slice short): logits, loss and gradients must not depend on the slicing,
    beyond the float32 accumulation of the hidden gradient's partial products."""
    import scratchlm.model.loss as loss_module

    hidden, weight = leaves((3, 20, 32), (VOCAB, 32), seed=4)
    targets = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(6))

    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = head_cross_entropy(hidden, weight, targets, z_loss=1e-3)
        return out, torch.autograd.grad(out.objective, (hidden, weight))

    whole, whole_grads = run()
    assert len(loss_module._vocab_slices(weight, torch.bfloat16)) == 1
    monkeypatch.setattr(loss_module, "_CAST_SLICE_BYTES", 10 * 32 * 2)
    assert len(loss_module._vocab_slices(weight, torch.bfloat16)) == 10
    assert len(loss_module._vocab_slices(weight, torch.float32)) == 1  # nothing to cast
    sliced, sliced_grads = run()
    assert sliced.loss.item() == whole.loss.item()  # the logits are bit for bit the same
    assert sliced.objective.item() == whole.objective.item()
    assert torch.equal(sliced_grads[1], whole_grads[1])  # each row of Gᵀh is one slice's product
    assert sliced_grads[0].dtype == torch.float32
    # the whole-table product is rounded to bf16 once, the slices' partial products each time:
    # both within bf16 rounding (2^-8) of the largest element
    scale = whole_grads[0].abs().max().item()
    torch.testing.assert_close(sliced_grads[0], whole_grads[0], rtol=0, atol=2**-8 * scale)


@pytest.mark.parametrize("hidden_needs_grad", [True, False])
def test_the_table_is_cast_again_only_for_the_hidden_gradient(monkeypatch, hidden_needs_grad):
    """G·W (the hidden state's gradient) casts the table's slices again, all but the forward's
    last; with a frozen hidden state the gradient needs no slice of the table, so none is cast."""
    from torch.utils._python_dispatch import TorchDispatchMode

    import scratchlm.model.loss as loss_module

    class TableCasts(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._to_copy.default and args[0].dim() == 2 and args[0].shape[-1] == 32:
                self.count += args[0].shape[0] <= 10  # one vocab slice of the (97, 32) table
            return func(*args, **(kwargs or {}))

    monkeypatch.setattr(loss_module, "_CAST_SLICE_BYTES", 10 * 32 * 2)
    hidden, weight = leaves((3, 20, 32), (VOCAB, 32), seed=4)
    hidden.requires_grad_(hidden_needs_grad)
    targets = torch.randint(0, VOCAB, (3, 20), generator=torch.Generator().manual_seed(6))
    with TableCasts() as casts, torch.autocast("cpu", dtype=torch.bfloat16):
        head_cross_entropy(hidden, weight, targets).objective.backward()
    assert casts.count == (19 if hidden_needs_grad else 10)  # 97 rows in slices of 10
    assert weight.grad is not None and (hidden.grad is not None) == hidden_needs_grad


def test_z_loss_of_a_uniform_softmax_is_log_vocab_squared():
    hidden = torch.randn(2, 5, 8)
    weight = torch.zeros(VOCAB, 8)  # every logit 0: the normaliser is log(VOCAB)
    out = head_cross_entropy(hidden, weight, torch.zeros(2, 5, dtype=torch.long), z_loss=0.1)
    assert out.loss.item() == pytest.approx(math.log(VOCAB))
    assert (out.objective - out.loss).item() == pytest.approx(0.1 * math.log(VOCAB) ** 2)


def test_all_rows_ignored_gives_zero_loss_and_zero_gradients():
    hidden, weight = leaves((2, 6, 8), (VOCAB, 8))
    out = head_cross_entropy(hidden, weight, torch.full((2, 6), IGNORE_INDEX))
    out.objective.backward()
    assert out.loss.item() == 0.0
    assert hidden.grad.abs().sum() == 0 and weight.grad.abs().sum() == 0


def test_without_grad_only_the_loss_is_computed():
    hidden, weight = leaves((2, 6, 8), (VOCAB, 8))
    targets = torch.randint(0, VOCAB, (2, 6))
    with torch.no_grad():
        out = head_cross_entropy(hidden, weight, targets)
    assert out.loss.item() == pytest.approx(reference(hidden, weight, targets)[0].item(), rel=1e-6)
    assert out.objective.grad_fn is None


@pytest.mark.parametrize("frozen", ["weight", "hidden"])
def test_a_frozen_input_gets_no_gradient_and_its_matmul_is_skipped(frozen):
    """A frozen head (LoRA, frozen embeddings) costs two matmuls, not three; the other gradient
    is unchanged."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class CountMatmuls(TorchDispatchMode):
        count = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func in (torch.ops.aten.mm.default, torch.ops.aten.mm.out):
                CountMatmuls.count += 1
            return func(*args, **(kwargs or {}))

    hidden, weight = leaves((2, 6, 8), (VOCAB, 8), seed=8)
    targets = torch.randint(0, VOCAB, (2, 6))
    ref = torch.autograd.grad(reference(hidden, weight, targets)[0], (hidden, weight))
    (hidden if frozen == "hidden" else weight).requires_grad_(False)
    with CountMatmuls():
        out = head_cross_entropy(hidden, weight, targets)
    assert CountMatmuls.count == 2
    out.objective.backward()
    frozen_tensor, trained, expected = (
        (weight, hidden, ref[0]) if frozen == "weight" else (hidden, weight, ref[1])
    )
    assert frozen_tensor.grad is None
    torch.testing.assert_close(trained.grad, expected, rtol=1e-5, atol=1e-7)


def model_pair(tie: bool, family: str, qk_norm: bool = False) -> GPT:
    extra = dict(pos="rope", norm="rmsnorm", mlp="swiglu", bias=False) if family == "llama" else {}
    cfg = ModelConfig(
        vocab_size=VOCAB, n_layer=2, n_head=4, n_kv_head=2 if family == "llama" else 4, d_model=32,
        d_ff=64, max_seq_len=32, tie_embeddings=tie, qk_norm=qk_norm, **extra,
    )
    torch.manual_seed(0)
    return GPT(cfg)


@pytest.mark.parametrize("tie,family", [(True, "gpt2"), (False, "llama")])
@pytest.mark.parametrize("keep_buffers", [False, True])
def test_model_loss_gradients_equal_logits_then_cross_entropy(tie, family, keep_buffers):
    """Two accumulated backward passes, with gradients freed or kept (zeroed) between steps:
    the sparse embedding path must leave exactly the dense reference gradient."""
    model = model_pair(tie, family)
    g = torch.Generator().manual_seed(5)
    batches = [(torch.randint(0, VOCAB, (2, 16), generator=g), torch.randint(0, VOCAB, (2, 16), generator=g))
               for _ in range(2)]

    def run(fused: bool) -> dict[str, torch.Tensor]:
        model.zero_grad(set_to_none=True)
        if keep_buffers:  # a previous step's buffers, zeroed
            for p in model.parameters():
                p.grad = torch.zeros_like(p)
        for x, y in batches:
            if fused:
                loss = model(x, targets=y).objective
            else:
                loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
            (loss / 2).backward()
        return {n: p.grad.clone() for n, p in model.named_parameters()}

    ref, fused = run(False), run(True)
    emb = model.tok_emb.weight.grad
    assert emb.layout == torch.strided and emb.count_nonzero() > 0
    for name in ref:
        torch.testing.assert_close(fused[name], ref[name], rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("tie,family,scale", [(True, "gpt2", 1.0), (False, "llama", 0.5)])
def test_a_second_backward_through_the_loss_is_a_clear_error_once_its_gradients_were_spent(tie, family, scale):
    """The saved gradients are scaled in place (or lent to the tied embedding), so a retained graph
    cannot be backpropagated again; torch's own error would point at an unnamed in-place op."""
    model = model_pair(tie, family)
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    objective = model(x, targets=x).objective * scale
    objective.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="allows one backward pass per forward"):
        objective.backward()


def test_an_untied_loss_backpropagated_unscaled_can_be_backpropagated_again():
    model = model_pair(False, "llama")
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(5))
    objective = model(x, targets=x).objective
    objective.backward(retain_graph=True)
    once = {n: p.grad.clone() for n, p in model.named_parameters()}
    objective.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[name], msg=name)


@pytest.mark.parametrize("tie,family", [(True, "gpt2"), (False, "llama")])
def test_model_loss_under_torch_compile_matches_eager(tie, family, monkeypatch):
    """Also the hand-written autograd pieces (tied hand-off, RMSNorm with q/k norm) traced by
    dynamo; the loss there is the plain-ops form, never the hand-fused one."""
    import scratchlm.model.loss as loss_module

    model = model_pair(tie, family, qk_norm=family == "llama")
    x, y = torch.randint(0, VOCAB, (2, 16)), torch.randint(0, VOCAB, (2, 16))
    eager = model(x, targets=y).objective
    eager.backward()
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)

    def not_under_compile(*args):
        raise AssertionError("the hand-fused loss ran inside torch.compile")

    monkeypatch.setattr(loss_module._FusedHeadCrossEntropy, "forward", staticmethod(not_under_compile))
    compiled = torch.compile(model)(x, targets=y).objective
    compiled.backward()
    assert compiled.item() == pytest.approx(eager.item(), rel=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_without_grad_mode_the_loss_makes_only_the_logits_product():
    """Under no_grad (evaluation) the weights still require gradients, and the loss used to make the
    two gradient products of the head as well: three times the head's work for a validation loss."""
    from torch.utils.flop_counter import FlopCounterMode

    rows, width, vocab = 24, 16, 40
    hidden = torch.randn(rows, width, requires_grad=True)
    weight = torch.randn(vocab, width, requires_grad=True)
    targets = torch.randint(0, vocab, (rows,))
    one_product = 2 * rows * width * vocab
    for grad_mode, products in ((torch.no_grad, 1), (torch.enable_grad, 3)):
        with grad_mode(), FlopCounterMode(display=False) as counter:
            loss = head_cross_entropy(hidden, weight, targets)
        assert counter.get_total_flops() == products * one_product
        assert loss.objective.requires_grad == (products == 3)
    expected = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets)
    with torch.no_grad():
        torch.testing.assert_close(head_cross_entropy(hidden, weight, targets).loss, expected.detach())


@pytest.mark.parametrize("fused", [False, True])
def test_gradients_zeroed_between_forward_and_backward_leave_a_dense_embedding_gradient(fused):
    """The usual loop "forward, zero_grad() (set_to_none), backward, step": the sparse choice was
    made at the forward, where last step's buffer still existed, so from the second step on the
    untied table's `.grad` was sparse, and AdamW and gradient clipping refused it."""
    model = model_pair(False, "llama")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        x, y = torch.randint(0, VOCAB, (2, 16), generator=g), torch.randint(0, VOCAB, (2, 16), generator=g)
        loss = model(x, targets=y).objective if fused else F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        assert model.tok_emb.weight.grad.layout == torch.strided
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()


def test_targets_of_another_shape_than_the_ids_are_refused():
    """Flattened, a (2, 9) window's targets for (2, 8) ids paired the wrong rows and gave a wrong loss."""
    from scratchlm.errors import ModelError

    model = model_pair(False, "llama")
    window = torch.randint(0, VOCAB, (2, 9), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ModelError, match=r"targets must have the shape of idx, \(2, 8\), got \(2, 9\)"):
        model(window[:, :-1], targets=window)
    for shape in ((4, 4), (2, 8, 1)):
        with pytest.raises(ModelError, match="targets must have the shape of idx"):
            model(window[:, :-1], targets=window[:, 1:].reshape(shape))
