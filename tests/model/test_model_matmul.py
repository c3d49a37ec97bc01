"""linear(): F.linear, with large float32 CPU products run by oneDNN — same values, same gradients."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from scratchlm.model import GPT, ModelConfig, matmul
from scratchlm.model.loss import head_cross_entropy
from scratchlm.model.matmul import (
    ONEDNN_FAST_MIN_MACS,
    ONEDNN_MIN_MACS,
    ONEDNN_MIN_WEIGHT,
    PROBE_MIN_SPEEDUP,
    WEIGHT_GRAD_MIN_MACS,
    Linear,
    linear,
    min_macs_for,
    onednn_available,
    onednn_min_macs,
    onednn_probe_speedup,
    packed_weights,
    set_onednn_matmul,
    uses_onednn,
    weight_gradient,
    weight_gradient_uses_onednn,
)

pytestmark = pytest.mark.skipif(not onednn_available(), reason="this PyTorch build has no oneDNN linear kernel")

ONEDNN_OP = "mkldnn._linear_pointwise.default"  # the oneDNN kernel, as eager calls reach it
REGISTERED_OP = "scratchlm.onednn_linear.default"  # what torch.compile traces instead
WIDTH, OUT = 128, 1024
ROWS = onednn_min_macs() // (WIDTH * OUT)  # the fewest rows whose product takes the oneDNN route here


class OpNames(TorchDispatchMode):
    """Records the name of every op dispatched while active."""

    def __init__(self) -> None:
        super().__init__()
        self.names: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture
def onednn_off():
    """Call inside a test to run the rest of it with the oneDNN route off."""
    previous = set_onednn_matmul(True)
    yield lambda: set_onednn_matmul(False)
    set_onednn_matmul(previous)


@pytest.fixture
def weight_grad_route(monkeypatch):
    """The weight-gradient route on, whatever this CPU's probe chose (it is off where oneDNN is slow),
    with the forward threshold that goes with it: the probe sets both from one measurement."""
    monkeypatch.setattr(matmul, "_WEIGHT_GRAD_ROUTE", True)
    monkeypatch.setattr(matmul, "_MIN_MACS", matmul.ONEDNN_FAST_MIN_MACS)


def operands(rows: int, width: int, out: int, bias: bool, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, width, generator=g).requires_grad_()
    w = torch.randn(out, width, generator=g).requires_grad_()
    b = torch.randn(out, generator=g).requires_grad_() if bias else None
    return x, w, b


def grads_of(fn, x, w, b, grad_out):
    for t in (x, w, b):
        if t is not None:
            t.grad = None
    y = fn(x, w, b)
    y.backward(grad_out)
    return y.detach(), [None if t is None else t.grad.clone() for t in (x, w, b)]


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("batch_shape", [(ROWS,), (4, ROWS // 4)])
def test_large_float32_product_runs_on_onednn_and_equals_f_linear(bias, batch_shape):
    x, w, b = operands(ROWS, WIDTH, OUT, bias)
    x = x.detach().reshape(*batch_shape, WIDTH).requires_grad_()
    assert uses_onednn(x, w)
    grad_out = torch.randn(*batch_shape, OUT, generator=torch.Generator().manual_seed(1))
    with OpNames() as seen:
        y, grads = grads_of(linear, x, w, b, grad_out)
    assert ONEDNN_OP in seen.names
    assert REGISTERED_OP not in seen.names  # eager calls skip the registered op's dispatch cost
    y_ref, grads_ref = grads_of(F.linear, x, w, b, grad_out)
    assert y.shape == y_ref.shape
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want, name in zip(grads, grads_ref, ("x", "weight", "bias")):
        if want is not None:
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=name)


def test_only_large_plain_float32_cpu_products_take_the_onednn_route(onednn_off):
    x, w, _ = operands(ROWS, WIDTH, OUT, False)
    assert uses_onednn(x, w)
    small_x = x[: ROWS - 1]
    assert not uses_onednn(small_x, w)  # a oneDNN call costs more than it saves here
    big_weight = torch.empty(ONEDNN_MIN_WEIGHT // WIDTH, WIDTH)
    assert uses_onednn(x[:1], big_weight)  # one row through a large weight: decoding
    assert not uses_onednn(x[:1], big_weight[:-1])
    assert not uses_onednn(x.bfloat16(), w.bfloat16())
    assert not uses_onednn(x.double(), w.double())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not uses_onednn(x, w)  # autocast's own bf16 matmul decides
        with OpNames() as seen:
            y = linear(x, w)
        assert y.dtype == torch.bfloat16 and ONEDNN_OP not in seen.names
    with OpNames() as seen:
        linear(small_x, w)
    assert ONEDNN_OP not in seen.names
    onednn_off()
    assert not uses_onednn(x, w)


def test_the_route_starts_lower_on_cpus_where_onednn_is_much_faster():
    """The probe's verdict picks the threshold: the Zen 5 machine's 1.8–2.3× routes products from
    2^21 multiply-adds, the Zen 4 machine's 0.93× only from 2^26; this process runs the one its own probe chose."""
    assert min_macs_for(1.9) == ONEDNN_FAST_MIN_MACS == 1 << 21
    assert min_macs_for(0.93) == min_macs_for(1.1) == ONEDNN_MIN_MACS == 1 << 26
    assert onednn_min_macs() == min_macs_for(onednn_probe_speedup())  # the rule this process runs


# (rows, out, in): Gᵀ made contiguous (few outputs, wide inputs), and (xᵀ·G)ᵀ (wide outputs: heads)
@pytest.mark.parametrize("rows,out,width", [(1024, 64, 512), (1024, 512, 64)])
def test_weight_gradient_on_onednn_equals_torch_mm(weight_grad_route, rows, out, width):
    """Both operand copies give Gᵀ·x, contiguous, for the strides autograd hands over: plain,
    expanded (the gradient of a sum) and strided rows."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows, width + 3, generator=g)[:, :width]
    for grad in (torch.randn(rows, out, generator=g), torch.ones(1, 1).expand(rows, out),
                 torch.randn(rows, 2 * out, generator=g)[:, ::2]):
        assert weight_gradient_uses_onednn(grad, x)
        with OpNames() as seen:
            got = weight_gradient(grad, x)
        assert ONEDNN_OP in seen.names and got.is_contiguous() and got.shape == (out, width)
        torch.testing.assert_close(got, torch.mm(grad.t(), x), rtol=1e-5, atol=1e-4)


def test_only_large_plain_float32_weight_gradients_take_the_onednn_route(weight_grad_route, onednn_off):
    grad, x = torch.randn(1024, 256), torch.randn(1024, 64)
    assert grad.shape[0] * grad.shape[1] * x.shape[1] == WEIGHT_GRAD_MIN_MACS
    assert weight_gradient_uses_onednn(grad, x)
    assert not weight_gradient_uses_onednn(grad[:-1], x[:-1])  # below 2^24 MKL was faster
    assert not weight_gradient_uses_onednn(grad.bfloat16(), x.bfloat16())
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert not weight_gradient_uses_onednn(grad, x)
    with OpNames() as seen:
        torch.testing.assert_close(weight_gradient(grad[:-1], x[:-1]), torch.mm(grad[:-1].t(), x[:-1]))
    assert ONEDNN_OP not in seen.names
    onednn_off()
    assert not weight_gradient_uses_onednn(grad, x)


def test_the_weight_gradient_route_is_on_only_where_the_probe_found_onednn_much_faster():
    """One verdict decides both: the low threshold for x·Wᵀ and G·W, and Gᵀ·x on oneDNN."""
    assert matmul.much_faster(1.9) and not matmul.much_faster(1.1) and not matmul.much_faster(None)
    assert matmul._WEIGHT_GRAD_ROUTE == (onednn_probe_speedup() >= PROBE_MIN_SPEEDUP)
    assert matmul._WEIGHT_GRAD_ROUTE == (onednn_min_macs() == ONEDNN_FAST_MIN_MACS)
    assert min_macs_for(None) == ONEDNN_MIN_MACS  # no oneDNN in the build: no probe


def test_linear_backward_takes_the_weight_gradient_route(weight_grad_route):
    """x·Wᵀ, G·W and Gᵀ·x all on oneDNN for a large product; gradients as F.linear's."""
    rows = WEIGHT_GRAD_MIN_MACS // (WIDTH * OUT)
    x, w, b = operands(rows, WIDTH, OUT, True)
    grad_out = torch.randn(rows, OUT, generator=torch.Generator().manual_seed(1))
    with OpNames() as seen:
        _, grads = grads_of(linear, x, w, b, grad_out)
    assert seen.names.count(ONEDNN_OP) == 3
    _, grads_ref = grads_of(F.linear, x, w, b, grad_out)
    for got, want, name in zip(grads, grads_ref, ("x", "weight", "bias")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=name)


def test_second_derivatives_through_the_onednn_route_equal_f_linears():
    """With create_graph the backward's own products are recorded too, so a gradient of a
    gradient (a gradient penalty) is the same as through F.linear."""
    x, w, b = operands(ROWS, WIDTH, OUT, True)
    assert uses_onednn(x, w)

    def penalty_grads(fn):
        for t in (x, w, b):
            t.grad = None
        (grad_x,) = torch.autograd.grad(fn(x, w, b).square().sum(), x, create_graph=True)
        grad_x.square().sum().backward()
        return [t.grad.clone() for t in (x, w, b)]

    for got, want, name in zip(penalty_grads(linear), penalty_grads(F.linear), ("x", "weight", "bias")):
        # entries span many magnitudes (up to ~1e7 here): the error is measured against the largest
        assert (got - want).abs().max() <= 1e-5 * want.abs().max(), name


def test_custom_op_registration_passes_torch_opcheck():
    """Schema, fake (meta) kernel and autograd formula agree with the real kernel."""
    x, w, b = operands(8, 16, 32, True)
    torch.library.opcheck(matmul.onednn_linear, (x, w, b))
    torch.library.opcheck(matmul.onednn_linear, (x, w, None))
    torch.library.opcheck(matmul.onednn_linear, (x.detach(), w.detach().t().contiguous().t(), None))


def test_linear_module_is_an_nn_linear_with_the_same_state_dict():
    ours, ref = Linear(WIDTH, OUT), torch.nn.Linear(WIDTH, OUT)
    assert isinstance(ours, torch.nn.Linear)
    ours.load_state_dict(ref.state_dict())
    x = torch.randn(ROWS, WIDTH)
    assert uses_onednn(x, ours.weight)
    torch.testing.assert_close(ours(x), ref(x), rtol=1e-5, atol=1e-5)


def test_fused_head_loss_is_the_same_on_either_kernel(weight_grad_route, onednn_off):
    """The loss's logits and both gradients go through the routes (the table's gradient through
    `weight_gradient`); on and off agree."""
    g = torch.Generator().manual_seed(0)
    rows = max(ROWS, WEIGHT_GRAD_MIN_MACS // (WIDTH * OUT))
    hidden = torch.randn(rows, WIDTH, generator=g).requires_grad_()
    table = (0.1 * torch.randn(OUT, WIDTH, generator=g)).requires_grad_()
    targets = torch.randint(0, OUT, (rows,), generator=g)

    def run():
        hidden.grad = table.grad = None
        with OpNames() as seen:
            out = head_cross_entropy(hidden, table, targets, z_loss=1e-3)
            out.objective.backward()
        return out.objective.detach(), hidden.grad.clone(), table.grad.clone(), seen.names

    *on, names = run()
    assert names.count(ONEDNN_OP) == 3  # logits, d/dhidden, d/dtable
    onednn_off()
    *off, names = run()
    assert not any("_linear_pointwise" in n or n == ONEDNN_OP for n in names)
    for got, want in zip(on, off):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_model_logits_and_gradients_are_the_same_on_either_kernel(onednn_off):
    cfg = ModelConfig(vocab_size=OUT, n_layer=2, n_head=4, n_kv_head=2, d_model=WIDTH, d_ff=OUT // 2, max_seq_len=128,
                      pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(cfg)
    x = torch.randint(0, OUT, (-(-ROWS // 128), 128))  # at least ROWS rows

    def run():
        model.zero_grad(set_to_none=True)
        with OpNames() as seen:
            logits = model(x)
            logits.square().mean().backward()
        return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}, seen.names

    logits_on, grads_on, names = run()
    assert names.count(ONEDNN_OP) >= 2 * cfg.n_layer  # each up-projection (ROWS × WIDTH × OUT): x·Wᵀ, G·W
    onednn_off()
    logits_off, grads_off, names = run()
    assert ONEDNN_OP not in names
    torch.testing.assert_close(logits_on, logits_off, rtol=1e-5, atol=1e-5)
    for name in grads_off:
        torch.testing.assert_close(grads_on[name], grads_off[name], rtol=1e-4, atol=1e-7, msg=name)


def test_torch_compile_keeps_the_onednn_product_and_its_gradients():
    x, w, b = operands(ROWS, WIDTH, OUT, True)
    grad_out = torch.randn(ROWS, OUT, generator=torch.Generator().manual_seed(1))
    y_ref, grads_ref = grads_of(linear, x, w, b, grad_out)
    from torch._inductor.compile_fx import compile_fx

    traced: list[str] = []

    def inductor_recording_ops(gm, example_inputs):
        traced.extend(str(node.target) for node in gm.graph.nodes)
        return compile_fx(gm, example_inputs)

    torch._dynamo.reset()
    y, grads = grads_of(torch.compile(linear, backend=inductor_recording_ops, fullgraph=True), x, w, b, grad_out)
    assert any("onednn_linear" in t for t in traced), traced
    torch.testing.assert_close(y, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_products_traced_outside_dynamo_keep_the_registered_op(weight_grad_route):
    """AOTAutograd traces a compiled backward with fake tensors, and torch 2.8 and 2.11 do not
    report `is_compiling()` there; inductor cannot lower the bare oneDNN kernel, so the compiler's
    tensors must reach the registered op however the compile state reads. `make_fx` traces the
    same way, without dynamo."""
    from torch.fx.experimental.proxy_tensor import make_fx

    rows = WEIGHT_GRAD_MIN_MACS // (WIDTH * OUT)
    x, w, _ = operands(rows, WIDTH, OUT, False)
    grad = torch.randn(rows, OUT)

    def backward_products(x, w, grad):  # G·W and Gᵀ·x, as the op's backward makes them
        return matmul.onednn_product(grad, w.t(), None), matmul.weight_gradient(grad, x, routed=True)

    with torch.no_grad():
        graph = make_fx(backward_products, tracing_mode="fake")(x.detach(), w.detach(), grad)
    targets = [str(node.target) for node in graph.graph.nodes if node.op == "call_function"]
    assert targets.count("scratchlm.onednn_linear.default") == 2, targets
    assert not any("_linear_pointwise" in t for t in targets), targets


def test_compiled_backward_runs_the_weight_gradient_on_onednn(weight_grad_route):
    """Under torch.compile the backward's operands are the compiler's tensors, yet Gᵀ·x still
    takes the route: the compiled backward calls the op for G·W and for Gᵀ·x."""
    from torch._inductor.utils import run_and_get_code

    rows = WEIGHT_GRAD_MIN_MACS // (WIDTH * OUT)
    x, w, b = operands(rows, WIDTH, OUT, True)
    grad_out = torch.randn(rows, OUT, generator=torch.Generator().manual_seed(1))
    _, grads_ref = grads_of(F.linear, x, w, b, grad_out)
    torch._dynamo.reset()
    compiled = torch.compile(linear, fullgraph=True)
    # Compiled fresh: the on-disk caches key the graph, not the Python of the op's backward.
    with torch._inductor.config.patch(fx_graph_cache=False), torch._functorch.config.patch(enable_autograd_cache=False):
        (_, grads), codes = run_and_get_code(lambda: grads_of(compiled, x, w, b, grad_out))
    assert codes[-1].count("torch.ops.scratchlm.onednn_linear.default(") == 2, codes[-1]
    for got, want, name in zip(grads, grads_ref, ("x", "weight", "bias")):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4, msg=name)


# --- bf16 inference on a packed weight -----------------------------------------------------------

needs_packing = pytest.mark.skipif(matmul._REORDER is None, reason="this PyTorch build cannot pack oneDNN weights")


def bf16_linear(bias: bool = True, seed: int = 0) -> Linear:
    torch.manual_seed(seed)
    return Linear(64, 96, bias=bias).to(torch.bfloat16)


def expected(layer: Linear, x: torch.Tensor) -> torch.Tensor:
    """The plain product, in float32 from the same bf16 numbers (oneDNN accumulates in float32)."""
    bias = None if layer.bias is None else layer.bias.float()
    return F.linear(x.float(), layer.weight.float(), bias)


@needs_packing
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("rows", [(1,), (3, 5)])
def test_bf16_inference_runs_on_a_packed_weight_and_equals_the_plain_product(bias, rows):
    layer = bf16_linear(bias)
    x = torch.randn(*rows, 64).to(torch.bfloat16)
    with torch.no_grad(), packed_weights(layer):
        y = layer(x)
        assert layer._packed is not None and layer._packed[2].is_mkldnn
    assert y.dtype == torch.bfloat16 and y.shape == (*rows, 96)
    torch.testing.assert_close(y.float(), expected(layer, x), rtol=1e-2, atol=2e-2)


@pytest.fixture
def packed_linear():
    """A bf16 `Linear` inside a packing scope after one inference call, so it holds a packed copy,
    and that call's input."""
    layer = bf16_linear()
    x = torch.randn(4, 64).to(torch.bfloat16)
    with packed_weights(layer):
        with torch.no_grad():
            layer(x)
        assert layer._packed is not None
        yield layer, x


@needs_packing
def test_bf16_inference_outside_a_packing_scope_keeps_no_copy():
    layer = bf16_linear()
    x = torch.randn(4, 64).to(torch.bfloat16)
    with torch.no_grad():
        y = layer(x)
    assert layer._packed is None
    torch.testing.assert_close(y.float(), expected(layer, x), rtol=1e-2, atol=2e-2)


@needs_packing
def test_leaving_the_scope_drops_the_copy_so_a_write_through_data_is_seen_next_time():
    """A `.data` write moves no version counter: only the end of the scope can retire the copy."""
    layer = bf16_linear()
    x = torch.randn(4, 64).to(torch.bfloat16)
    with torch.no_grad():
        with packed_weights(layer), packed_weights(layer):  # scopes nest: the copy lives to the outer end
            layer(x)
        assert layer._packed is None
        layer.weight.data.mul_(-2)
        with packed_weights(layer):
            torch.testing.assert_close(layer(x).float(), expected(layer, x), rtol=1e-2, atol=4e-2)


@needs_packing
def test_the_packed_weight_follows_every_change_to_the_weight(packed_linear):
    layer, x = packed_linear
    with torch.no_grad():
        layer.weight.mul_(-2)  # in place, as an optimizer step or load_state_dict does
        torch.testing.assert_close(layer(x).float(), expected(layer, x), rtol=1e-2, atol=4e-2)
        other = bf16_linear(seed=1)
        layer.load_state_dict(other.state_dict())
        torch.testing.assert_close(layer(x).float(), expected(other, x), rtol=1e-2, atol=2e-2)
        layer.weight = torch.nn.Parameter(torch.randn(96, 64).to(torch.bfloat16))  # another tensor
        torch.testing.assert_close(layer(x).float(), expected(layer, x), rtol=1e-2, atol=4e-2)


@needs_packing
def test_converting_or_moving_the_module_drops_the_packed_weight(packed_linear):
    """After `.float().bfloat16()` the new weight may sit at the freed one's address with the same
    version, so no packed copy may survive a conversion to be mistaken for it."""
    layer, x = packed_linear
    layer.float().to(torch.bfloat16)
    assert layer._packed is None
    with torch.no_grad():
        torch.testing.assert_close(layer(x).float(), expected(layer, x), rtol=1e-2, atol=2e-2)


@needs_packing
def test_training_and_autocast_calls_use_no_packed_weight_and_drop_it(packed_linear):
    """Each call here leaves the module's dtype alone, so only `forward` itself can drop the copy."""
    layer, x = packed_linear
    layer(x).sum().backward()  # gradients wanted: the plain product, which autograd can differentiate
    assert layer._packed is None and layer.weight.grad is not None
    with torch.no_grad():
        layer(x)
    assert layer._packed is not None
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        layer(x)
    assert layer._packed is None


def test_a_float32_layer_never_packs_its_weight():
    layer = bf16_linear().float()
    with torch.no_grad(), packed_weights(layer):
        layer(torch.randn(4, 64))
        assert layer._packed is None


@needs_packing
def test_a_model_that_has_run_bf16_inference_can_be_copied():
    import copy

    cfg = ModelConfig(vocab_size=64, n_layer=1, n_head=2, d_model=32, d_ff=64, max_seq_len=16)
    model = GPT(cfg).to(torch.bfloat16).eval()
    idx = torch.randint(0, 64, (1, 8))
    with torch.no_grad(), packed_weights(model):
        logits = model(idx)
        twin = copy.deepcopy(model)
        torch.testing.assert_close(twin(idx), logits)
    assert all(m._packing_scopes == 0 for m in twin.modules() if isinstance(m, Linear))  # the copy is in no scope


@needs_packing
def test_bf16_model_logits_are_the_same_with_and_without_packed_weights(onednn_off):
    cfg = ModelConfig(vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=128, max_seq_len=32,
                      pos="rope", norm="rmsnorm", mlp="swiglu", bias=False, tie_embeddings=False)
    torch.manual_seed(0)
    model = GPT(cfg).to(torch.bfloat16).eval()
    idx = torch.randint(0, 512, (2, 16))
    with torch.no_grad(), packed_weights(model):
        packed = model(idx).float()
        assert all(m._packed is not None for m in model.modules() if isinstance(m, Linear))
        onednn_off()
        plain = model(idx).float()
        assert all(m._packed is None for m in model.modules() if isinstance(m, Linear))
    torch.testing.assert_close(packed, plain, rtol=0.05, atol=0.05)
