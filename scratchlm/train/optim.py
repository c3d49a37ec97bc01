"""Optimizers for pretraining: AdamW, and Muon for hidden matrices with AdamW for the rest.

Both come back as ONE `torch.optim.Optimizer`, so a checkpoint is a single `state_dict()` and the
learning-rate schedule is applied the same way to every group: each group carries `base_lr` and
the trainer sets `group["lr"] = group["base_lr"] * factor`.

Weight decay pulls weights toward zero; it is only applied to tensors with two or more dimensions
(matrices and embeddings). Biases and norm gains are offsets and scales whose size carries meaning,
so decaying them only hurts.

Muon (Jordan et al., 2024) replaces the update of each hidden weight matrix by the orthogonalized
momentum: a few Newton–Schulz iterations push every singular value of the momentum toward 1, so the
step moves all directions of the matrix by a similar amount instead of being dominated by a few.
It is meant for the matrices inside the network only; embeddings, the output head and the 1-D
gains and biases are still trained by AdamW, within the same optimizer object.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

import torch
from torch import nn

from scratchlm.errors import ConfigError

OPTIMIZERS = ("adamw", "muon")

# Coefficients of the quintic Newton–Schulz iteration published with Muon: chosen so that the
# iteration drives singular values in (0, 1] quickly into a band around 1 in five steps.
_NS_COEFFS = (3.4445, -4.7750, 2.0315)


def decay_split(params: Iterable[tuple[str, nn.Parameter]]) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into (decayed: >= 2-D, not decayed: 1-D and scalars)."""
    decay, no_decay = [], []
    for _, p in params:
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return decay, no_decay


_HEAD_NAMES = ("lm_head", "head", "output")


def hidden_matrices(model: nn.Module) -> set[int]:
    """Ids of the weights Muon should own: every nn.Linear weight except the output head.

    The head is a Linear named lm_head/head/output, or one sharing its weight with an embedding
    (tied); failing both, the last Linear of the model if its output size matches an embedding's
    table size (the vocabulary). Embeddings are never nn.Linear, so they stay with AdamW, as do
    positional tables stored as plain parameters.
    """
    embeddings = [m for m in model.modules() if isinstance(m, nn.Embedding)]
    embedding_ids = {id(m.weight) for m in embeddings}
    linears = [(name, m) for name, m in model.named_modules() if isinstance(m, nn.Linear)]
    heads = {
        id(m) for name, m in linears if name.split(".")[-1] in _HEAD_NAMES or id(m.weight) in embedding_ids
    }
    if not heads and linears and linears[-1][1].out_features in {e.num_embeddings for e in embeddings}:
        heads.add(id(linears[-1][1]))
    return {id(m.weight) for _, m in linears if id(m) not in heads and m.weight.requires_grad}


def build_optimizer(
    model: nn.Module,
    name: str = "adamw",
    lr: float = 3e-4,
    weight_decay: float = 0.1,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    fused: bool | None = None,
    muon_lr: float = 0.02,
    muon_momentum: float = 0.95,
) -> torch.optim.Optimizer:
    """One optimizer for all of `model`'s trainable parameters; every group carries `base_lr`.

    `name="adamw"`: torch's AdamW with a decayed and a non-decayed group; `fused=None` uses the
    fused kernel whenever the parameters' device has one (CPU and CUDA in recent torch).
    `name="muon"`: `MuonAdamW`, Muon at `muon_lr` for hidden matrices and AdamW at `lr` for the rest;
    the matrices' weight decay per step equals AdamW's (`weight_decay * lr`, times the schedule).
    """
    if name not in OPTIMIZERS:
        raise ConfigError(f"unknown optimizer {name!r}; use one of {', '.join(OPTIMIZERS)}")
    if not 0 < lr < math.inf or (name == "muon" and not 0 < muon_lr < math.inf):  # NaN fails both
        raise ConfigError("learning rates must be positive")
    if not 0 <= weight_decay < math.inf:  # torch's AdamW checks only its default, not each group's
        raise ConfigError(f"weight_decay must be finite and >= 0, got {weight_decay}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ConfigError("the model has no trainable parameters")
    if name == "muon":
        muon_ids = hidden_matrices(model)
        matrices = [p for _, p in named if id(p) in muon_ids]
        decay, no_decay = decay_split((n, p) for n, p in named if id(p) not in muon_ids)
        groups = [
            {
                "params": matrices,
                "kind": "muon",
                "name": "muon",
                "lr": muon_lr,
                "base_lr": muon_lr,
                # Decoupled decay is lr * wd per step; rescale so the matrices shrink at the rate
                # AdamW would apply, not ~70x faster because Muon's learning rate is larger.
                "weight_decay": weight_decay * lr / muon_lr,
                "momentum": muon_momentum,
            },
            {
                "params": decay,
                "kind": "adamw",
                "name": "decay",
                "lr": lr,
                "base_lr": lr,
                "weight_decay": weight_decay,
                "betas": betas,
                "eps": eps,
            },
            {
                "params": no_decay,
                "kind": "adamw",
                "name": "no_decay",
                "lr": lr,
                "base_lr": lr,
                "weight_decay": 0.0,
                "betas": betas,
                "eps": eps,
            },
        ]
        return MuonAdamW([g for g in groups if g["params"]])
    decay, no_decay = decay_split(named)
    groups = [
        {"params": decay, "name": "decay", "weight_decay": weight_decay, "base_lr": lr},
        {"params": no_decay, "name": "no_decay", "weight_decay": 0.0, "base_lr": lr},
    ]
    groups = [g for g in groups if g["params"]]
    if fused is None:
        try:
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=True)
        except (RuntimeError, ValueError):
            return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    try:
        return torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps, fused=fused)
    except (RuntimeError, ValueError) as e:
        raise ConfigError(f"fused AdamW is not available for these parameters: {e}") from None


def orthogonalize(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Approximately U·Vᵀ of g = U·S·Vᵀ (all singular values pushed near 1), by Newton–Schulz.

    Runs in bf16 on CUDA (fast, and the iteration tolerates it) and fp32 elsewhere.
    """
    a, b, c = _NS_COEFFS
    x = g.to(torch.bfloat16 if g.is_cuda else torch.float32)
    tall = x.size(-2) > x.size(-1)
    if tall:  # iterate on the smaller Gram matrix
        x = x.mT
    x = x / (x.norm(dim=(-2, -1), keepdim=True) + 1e-7)  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = x @ x.mT
        x = a * x + (b * gram + c * gram @ gram) @ x
    if tall:
        x = x.mT
    return x.to(g.dtype)


def _full(t: torch.Tensor) -> torch.Tensor:
    """The whole matrix of a (possibly FSDP-sharded DTensor) gradient: Muon needs every row."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _shard_like(update: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Cut a full update back to `like`'s sharding (identity for ordinary tensors)."""
    if not hasattr(like, "device_mesh"):
        return update
    from torch.distributed.tensor import distribute_tensor

    # Every rank computed the same full update, so each keeps its own slice without communicating.
    return distribute_tensor(update, like.device_mesh, like.placements, src_data_rank=None)


def _check_group(group: dict) -> None:
    """Refuse what torch's AdamW refuses: a beta of 1 divides by zero at the first step, and a
    negative or NaN rate, decay or eps would train without a word, against the settings' meaning."""
    ranges = {"lr": group["lr"], "weight_decay": group["weight_decay"]}
    if group["kind"] == "muon":
        checks = {"momentum": group["momentum"]}
    else:
        ranges["eps"] = group["eps"]
        checks = {f"betas[{i}]": beta for i, beta in enumerate(group["betas"])}
    for key, value in ranges.items():
        if not 0 <= value < math.inf:
            raise ValueError(f"MuonAdamW {key} must be finite and >= 0, got {value}")
    for key, value in checks.items():
        if not 0 <= value < 1:
            raise ValueError(f"MuonAdamW {key} must be in [0, 1), got {value}")


class MuonAdamW(torch.optim.Optimizer):
    """Muon for groups with `kind="muon"`, AdamW for groups with `kind="adamw"`, in one object.

    Muon group keys: lr, weight_decay, momentum, nesterov (default True), ns_steps (default 5).
    AdamW group keys: lr, weight_decay, betas, eps. Weight decay is decoupled (p *= 1 - lr * wd).
    """

    def __init__(self, param_groups: list[dict]):
        for group in param_groups:
            if group.get("kind") not in ("muon", "adamw"):
                raise ValueError("every MuonAdamW param group needs kind='muon' or kind='adamw'")
            group.setdefault("base_lr", group["lr"])
            group.setdefault("weight_decay", 0.0)
            if group["kind"] == "muon":
                group.setdefault("momentum", 0.95)
                group.setdefault("nesterov", True)
                group.setdefault("ns_steps", 5)
                if any(p.dim() != 2 for p in group["params"]):
                    raise ValueError("Muon groups may only hold 2-D weight matrices")
            else:
                group.setdefault("betas", (0.9, 0.95))
                group.setdefault("eps", 1e-8)
            _check_group(group)
        super().__init__(param_groups, defaults={})

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            if group["kind"] == "muon":
                self._muon_step(group)
            else:
                self._adamw_step(group)
        return loss

    def _muon_step(self, group: dict) -> None:
        lr, wd, mu = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["momentum_buffer"] = torch.zeros_like(p)
            buf = state["momentum_buffer"]
            buf.lerp_(p.grad, 1 - mu)  # buf = mu * buf + (1 - mu) * grad
            direction = p.grad.lerp(buf, mu) if group["nesterov"] else buf
            update = orthogonalize(_full(direction), group["ns_steps"])
            # An orthogonal update has RMS 1/sqrt(cols); scale tall matrices up so their rows move alike.
            update = update * math.sqrt(max(1.0, p.size(0) / p.size(1)))
            p.mul_(1 - lr * wd)
            p.add_(_shard_like(update, p), alpha=-lr)

    def _adamw_step(self, group: dict) -> None:
        lr, wd, eps = group["lr"], group["weight_decay"], group["eps"]
        beta1, beta2 = group["betas"]
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = 0
                state["exp_avg"] = torch.zeros_like(p)
                state["exp_avg_sq"] = torch.zeros_like(p)
            state["step"] += 1
            t = state["step"]
            m, v = state["exp_avg"], state["exp_avg_sq"]
            m.lerp_(p.grad, 1 - beta1)
            v.mul_(beta2).addcmul_(p.grad, p.grad, value=1 - beta2)
            denom = (v.sqrt() / math.sqrt(1 - beta2**t)).add_(eps)
            p.mul_(1 - lr * wd)
            p.addcdiv_(m, denom, value=-lr / (1 - beta1**t))
