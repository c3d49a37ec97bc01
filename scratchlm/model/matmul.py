"""`F.linear` for the model, with large float32 CPU products run by oneDNN instead of MKL.

Why: PyTorch's x86 build computes float32 matmuls with MKL's sgemm, and MKL does not pick its
fast kernels on every CPU (on AMD's it does not). The same build also ships oneDNN, which
PyTorch already uses for its bf16 matmuls and which picks its kernels by instruction set alone.
Measured on a 2-core AMD EPYC (Zen 4), `benchmarks/matmul.py`: up to 1.8× faster for the
model's training products and 1.6–1.9× for decoding one token through GPT-2's head.

Which products: `x·Wᵀ` (forward) and `G·W` (gradient of the input), whose left operand is
row-major. Small products stay `F.linear`: a oneDNN call costs about 10 µs more, so on the
Zen 4 machine it paid from about 2^26 multiply-adds up, or, when few rows read a large weight
(decoding), from 2^20 weight elements up (GPT-2 124M decodes 1.4–1.5× faster). How much faster
oneDNN is depends on the CPU: on a Zen 5 machine (full-width AVX-512) its products ran at about
420 GFLOP/s against MKL's 200, 1.5× from 2^22 multiply-adds and 1.9× at 2^24, so the route pays
from 2^21 there. Which of the two rules holds is measured once per process, when this module
is imported (`onednn_min_macs`, ~6 ms): one small product timed both ways.

The weight's gradient `Gᵀ·x` (G: N rows × out, x: N × in) has a transposed left operand, which
oneDNN wants row-major, so one operand is copied first (`weight_gradient`): either Gᵀ is made
contiguous (N·out elements copied), or the transposed product xᵀ·G is formed from a contiguous
xᵀ and its in × out result transposed back (in·(N + out) elements); the smaller copy wins.
On the Zen 5 machine that ran 1.2–2.0× MKL's speed from 2^24 multiply-adds (the training shapes
of `benchmarks/model.py`: tiny head and feed-forward layers 1.3–1.7×, 10M 1.5–1.9×, 124M blocks
1.8–2.0×, its head 1.2×) and lost below (0.6–0.9×), so there it takes the route from 2^24;
float32 training steps ran 1.16× faster at 10M and 1.23–1.26× at 124M. On the Zen 4
machine oneDNN was no faster for it; where the probe finds oneDNN not much faster, it stays
`torch.mm`.

The result is the full float32 (IEEE) product, as `F.linear`'s; only the kernel differs.
Under autocast, for other dtypes and devices, and for tensor subclasses (DTensor) this is
`F.linear` itself. Under `torch.compile` the product is a registered custom op, which the
compiler keeps whole. Eager calls skip the op's dispatch: an `autograd.Function` calls oneDNN
directly, and without autograd the kernel is called bare. A custom op's Python dispatch costs
about 20 µs a call, forward and backward alike; the tiny model's step makes about 40 such calls,
so the direct route made the tiny float32 training step 3–4% faster (Zen 5, 2 cores).
Only these two AMD machines were measured: on another CPU, `benchmarks/matmul.py` re-measures
the rule, and `set_onednn_matmul(False)` gives plain `F.linear` back.

bf16 inference (bf16 weights, no gradients, CPU) inside a `packed_weights(model)` scope, as
decoding runs, takes a second oneDNN route: each `Linear` keeps a copy of its weight reordered
once into oneDNN's blocked layout, so the product no longer re-arranges the weight at every call.
Decoding one token reads every weight once, so that re-arranging was most of the work: greedy
decoding in bf16 on 2 cores ran 1.6–2.0× faster for GPT-2 124M and 1.4–1.6× for the Llama-style
124M, with the same tokens (benchmarks/RESULTS.md). The copy costs the weights' memory once more,
until the scope ends. Why a scope and not a cache kept for the module's lifetime: a write through
`weight.data` changes the numbers without moving the version counter, so a long-lived copy could
go stale unseen and give wrong logits; one decoding run does not change its weights. Within the
scope the copy is still remade when the weight changes in place (its version counter moves) or is
another tensor, and dropped when the module is converted or moved (`.to()`, `.float()`, ...) and
when a call does not qualify. A weight made under `torch.inference_mode()` has no version counter,
so its copy lives to the end of the scope whatever is written to it. float32 gained nothing from it.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

ONEDNN_MIN_MACS = 1 << 26  # multiply-adds from which the oneDNN call was measured faster (Zen 4)
ONEDNN_FAST_MIN_MACS = 1 << 21  # the same where oneDNN's kernels are much faster than MKL's (Zen 5)
ONEDNN_MIN_WEIGHT = 1 << 20  # weights from which it is faster for any rows (decoding reads W once)
WEIGHT_GRAD_MIN_MACS = 1 << 24  # Gᵀ·x from here, on CPUs where the probe found oneDNN much faster
# The probe that tells the two apart: the tiny model's feed-forward product (2^24 multiply-adds),
# where oneDNN ran 1.8–2.3× MKL on the Zen 5 machine and 0.93× on the Zen 4 one.
PROBE_SHAPE = (1024, 64, 256)  # rows, in, out
PROBE_MIN_SPEEDUP = 1.25


def _onednn_op(name: str):
    """PyTorch's oneDNN op `torch.ops.mkldnn.<name>`, or None in builds without oneDNN (e.g. some ARM wheels)."""
    if not torch.backends.mkldnn.is_available():
        return None
    try:
        return getattr(torch.ops.mkldnn, name).default
    except (AttributeError, RuntimeError):
        return None


_KERNEL = _onednn_op("_linear_pointwise")  # x·Wᵀ + b
_REORDER = _onednn_op("_reorder_linear_weight") if _KERNEL is not None else None  # W, packed
_enabled = _KERNEL is not None


def probe_speedup(rounds: int = 7) -> float:
    """torch's time ÷ oneDNN's for the probe product, each its best of `rounds`, alternating."""
    rows, width, out = PROBE_SHAPE
    generator = torch.Generator().manual_seed(0)
    x, weight = torch.randn(rows, width, generator=generator), torch.randn(out, width, generator=generator)
    best = {"torch": math.inf, "onednn": math.inf}
    kernels = {"torch": lambda: F.linear(x, weight), "onednn": lambda: _KERNEL(x, weight, None, "none", [], "")}
    with torch.no_grad():
        for _ in range(rounds):
            for name, product in kernels.items():
                start = time.perf_counter()
                product()
                best[name] = min(best[name], time.perf_counter() - start)
    return best["torch"] / best["onednn"]


def much_faster(speedup: float | None) -> bool:
    """Whether the probe found oneDNN much faster than torch (None: no oneDNN): then small products
    and the weight gradient take the route too (module doc)."""
    return speedup is not None and speedup >= PROBE_MIN_SPEEDUP


def min_macs_for(speedup: float | None) -> int:
    """The route's threshold on a CPU where oneDNN ran the probe `speedup`× as fast as torch."""
    return ONEDNN_FAST_MIN_MACS if much_faster(speedup) else ONEDNN_MIN_MACS


# Measured at import rather than at first use: a first use may be inside torch.compile's tracing.
_PROBE_SPEEDUP = probe_speedup() if _KERNEL is not None else None
_MIN_MACS = min_macs_for(_PROBE_SPEEDUP)
_WEIGHT_GRAD_ROUTE = much_faster(_PROBE_SPEEDUP)


def onednn_probe_speedup() -> float | None:
    """The import-time probe's result that chose this process's threshold (None without oneDNN)."""
    return _PROBE_SPEEDUP


def onednn_min_macs() -> int:
    """Multiply-adds from which a float32 product runs on oneDNN on this CPU (module doc)."""
    return _MIN_MACS


def onednn_available() -> bool:
    """Whether this PyTorch build has the oneDNN linear kernel."""
    return _KERNEL is not None


def set_onednn_matmul(enabled: bool) -> bool:
    """Turn the oneDNN route on or off (for comparisons); returns the previous setting."""
    global _enabled
    previous = _enabled
    _enabled = bool(enabled) and _KERNEL is not None
    return previous


def _is_plain(t: torch.Tensor) -> bool:
    """A tensor itself, not a subclass (DTensor, or the compiler's fake and functional tensors)."""
    return type(t) in (torch.Tensor, nn.Parameter)


def _plain_cpu_operands(x: torch.Tensor, weight: torch.Tensor, dtype: torch.dtype) -> bool:
    """Both operands plain CPU tensors of `dtype`, outside autocast, with the oneDNN route on."""
    if not _enabled or x.device.type != "cpu" or weight.device.type != "cpu":
        return False
    if x.dtype != dtype or weight.dtype != dtype or torch.is_autocast_enabled("cpu"):
        return False
    return _is_plain(x) and _is_plain(weight)


def uses_onednn(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when `linear(x, weight)` runs on oneDNN: a large plain float32 CPU product."""
    if not _plain_cpu_operands(x, weight, torch.float32):
        return False
    return x.numel() * weight.shape[0] >= _MIN_MACS or weight.numel() >= ONEDNN_MIN_WEIGHT


def weight_gradient_uses_onednn(grad_rows: torch.Tensor, x_rows: torch.Tensor, *, routed: bool = False) -> bool:
    """True when `weight_gradient(grad_rows, x_rows)` runs on oneDNN: a large plain float32 CPU
    product, on a CPU where the probe found oneDNN much faster (module doc). `routed`: the
    operands are known to qualify (the route's own backward, where under torch.compile they are
    the compiler's tensors, which the plain-tensor check declines), so only the size decides."""
    macs = grad_rows.shape[0] * grad_rows.shape[1] * x_rows.shape[1]
    if not (_WEIGHT_GRAD_ROUTE and _enabled and macs >= WEIGHT_GRAD_MIN_MACS):
        return False
    return routed or _plain_cpu_operands(grad_rows, x_rows, torch.float32)


def weight_gradient(grad_rows: torch.Tensor, x_rows: torch.Tensor, *, routed: bool = False) -> torch.Tensor:
    """`torch.mm(grad_rows.t(), x_rows)`: the gradient Gᵀ·x (out × in) of a weight, from rows G
    (N × out) and x (N × in); large float32 CPU products run on oneDNN (module doc)."""
    if weight_gradient_uses_onednn(grad_rows, x_rows, routed=routed):
        return onednn_weight_gradient(grad_rows, x_rows)
    return torch.mm(grad_rows.t(), x_rows)


def onednn_weight_gradient(grad_rows: torch.Tensor, x_rows: torch.Tensor) -> torch.Tensor:
    """Gᵀ·x on oneDNN, whatever its size, through the smaller operand copy (module doc)."""
    rows, out = grad_rows.shape
    width = x_rows.shape[1]
    if rows * out <= width * (rows + out):  # Gᵀ, contiguous, times x (passed as the "weight" xᵀ)
        return onednn_product(grad_rows.t().contiguous(), x_rows.t(), None)
    return onednn_product(x_rows.t().contiguous(), grad_rows.t(), None).t().contiguous()  # (xᵀ·G)ᵀ


def onednn_product(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x·Wᵀ + b on oneDNN, differentiable, through the entry point that costs least where it is
    called (module doc): the registered op `onednn_linear` while torch.compile traces, the bare
    kernel when autograd will not record the call (no grad mode, as in a backward or in decoding,
    or no operand that requires a gradient), else `_OneDNNLinear`.

    "While torch.compile traces" includes the backward: torch 2.13 reports `is_compiling()` then,
    2.8 and 2.11 only while dynamo traces the forward, but on every release the backward's
    operands are the compiler's own tensor subclasses. Its inductor cannot lower the bare kernel
    there (it expects constant weights), so any operand that is not a plain tensor takes the op.
    """
    if torch.compiler.is_compiling() or not (_is_plain(x) and _is_plain(weight)):
        return onednn_linear(x, weight, bias)
    operands = (x, weight) if bias is None else (x, weight, bias)
    if not (torch.is_grad_enabled() and any(t.requires_grad for t in operands)):
        return _KERNEL(x, weight, bias, "none", [], "")
    return _OneDNNLinear.apply(x, weight, bias)


def uses_packed_weight(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when `Linear` multiplies by its packed bf16 copy of `weight`: CPU inference in bf16."""
    if _REORDER is None or torch.is_grad_enabled() or torch.compiler.is_compiling():
        return False
    return _plain_cpu_operands(x, weight, torch.bfloat16)


@torch.library.custom_op(
    "scratchlm::onednn_linear", mutates_args=(), schema="(Tensor x, Tensor weight, Tensor? bias) -> Tensor"
)
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return _KERNEL(x, weight, bias, "none", [], "")


@onednn_linear.register_fake
def _(x, weight, bias):
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


def _setup_context(ctx, inputs, output) -> None:
    x, weight, bias = inputs
    ctx.save_for_backward(x, weight)
    ctx.has_bias = bias is not None


def _backward(ctx, grad):
    """The gradients of x·Wᵀ + b, for the registered op and `_OneDNNLinear` alike; their products
    on oneDNN too (`onednn_product` picks the entry point)."""
    x, weight = ctx.saved_tensors
    grad_x = grad_weight = grad_bias = None
    rows = grad.reshape(-1, grad.shape[-1])
    if ctx.needs_input_grad[0]:  # G·W: W passed transposed, as the "weight" of G·(Wᵀ)ᵀ
        grad_x = onednn_product(grad, weight.t(), None)
    if ctx.needs_input_grad[1]:
        grad_weight = weight_gradient(rows, x.reshape(-1, x.shape[-1]), routed=True)
    if ctx.has_bias and ctx.needs_input_grad[2]:
        grad_bias = rows.sum(0)
    return grad_x, grad_weight, grad_bias


onednn_linear.register_autograd(_backward, setup_context=_setup_context)


class _OneDNNLinear(torch.autograd.Function):
    """`onednn_linear` for eager autograd: the same kernel, context and gradients, without the
    registered op's dispatch (module doc)."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        return _KERNEL(x, weight, bias, "none", [], "")

    setup_context = staticmethod(_setup_context)
    backward = staticmethod(_backward)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """`F.linear(x, weight, bias)`: x·Wᵀ + b, through the faster CPU kernel (see module doc)."""
    if uses_onednn(x, weight):
        return onednn_product(x, weight, bias)
    return F.linear(x, weight, bias)


class Linear(nn.Linear):
    """`nn.Linear` (same parameters, init and state dict) whose product is `linear` above, or,
    in bf16 inference, oneDNN's product with a packed copy of the weight (module doc)."""

    # (weight's data pointer, its version counter, the packed copy): not part of the state dict
    _packed: tuple[int, int | None, torch.Tensor] | None = None
    _packing_scopes = 0  # open `packed_weights` scopes around this module

    def reset_parameters(self) -> None:
        """nn.Linear's random init, except on the meta device (a model built there to be loaded):
        there is nothing to fill, and torch 2.8 ran meta `uniform_` through Python decompositions
        that import the symbolic-shapes machinery, 0.3–0.4 s of every `generate`'s start-up."""
        if not self.weight.is_meta:
            super().reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._packing_scopes and uses_packed_weight(x, self.weight):
            return _KERNEL(x, self.packed_weight(), self.bias, "none", [], "")
        if self._packed is not None:  # training, another dtype: the copy would only hold memory
            self._packed = None
        return linear(x, self.weight, self.bias)

    def _apply(self, fn, *args, **kwargs):
        """`.to()`, `.float()`, `.cuda()`, ...: the weight may now live in memory the old one freed,
        at the same address and version, so the packed copy is dropped rather than trusted."""
        self._packed = None
        return super()._apply(fn, *args, **kwargs)

    def __getstate__(self) -> dict:
        """Copies and pickles leave the packed weight and the scope count behind: oneDNN's opaque
        tensor cannot be copied, and the copy is in no scope until one is opened around it."""
        return {key: value for key, value in self.__dict__.items() if key not in ("_packed", "_packing_scopes")}

    def packed_weight(self) -> torch.Tensor:
        """The weight in oneDNN's layout, remade if the weight is another tensor or was changed in place.

        A weight made under `torch.inference_mode()` has no version counter (reading it raises):
        its copy is kept to the end of the scope, as for a write through `.data` (module doc)."""
        weight = self.weight
        key = (weight.data_ptr(), None if weight.is_inference() else weight._version)
        if self._packed is None or self._packed[:2] != key:
            self._packed = (*key, _REORDER(weight.detach(), 1))
        return self._packed[2]


@contextmanager
def packed_weights(model: nn.Module) -> Iterator[None]:
    """Within this scope, bf16 CPU inference through `model`'s `Linear`s multiplies by packed copies
    of their weights, made at first use; leaving it drops the copies (module doc: why a scope)."""
    layers = [module for module in model.modules() if isinstance(module, Linear)]
    for layer in layers:
        layer._packing_scopes += 1
    try:
        yield
    finally:
        for layer in layers:
            layer._packing_scopes -= 1
            if not layer._packing_scopes:
                layer._packed = None
