"""Optimizers: weight-decay grouping, Muon's orthogonal update, and exact state_dict round-trips."""

import io
from dataclasses import replace

import pytest
import torch
from torch import nn

from scratchlm.errors import ConfigError
from scratchlm.train.optim import MuonAdamW, build_optimizer, hidden_matrices, orthogonalize

VOCAB, DIM = 32, 16


class TinyLM(nn.Module):
    """Embedding -> two hidden Linear layers with a LayerNorm -> vocab head: the shapes Muon cares about."""

    def __init__(self, tie: bool = False):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, DIM)
        self.pos = nn.Parameter(torch.randn(8, DIM) * 0.02)
        self.up = nn.Linear(DIM, 4 * DIM)
        self.down = nn.Linear(4 * DIM, DIM, bias=False)
        self.norm = nn.LayerNorm(DIM)
        self.lm_head = nn.Linear(DIM, VOCAB, bias=False)
        if tie:
            self.lm_head.weight = self.embed.weight

    def forward(self, idx):
        h = self.embed(idx) + self.pos[: idx.size(1)]
        h = h + self.down(torch.relu(self.up(h)))
        return self.lm_head(self.norm(h))


def lm_loss(model, x, y):
    return nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())


def batch(seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, VOCAB, (4, 8), generator=g)
    return x, (x * 3 + 1) % VOCAB  # a learnable mapping


def group_of(opt, name):
    return next(g for g in opt.param_groups if g["name"] == name)


def ids(params):
    return {id(p) for p in params}


def test_adamw_decays_only_matrices():
    model = TinyLM()
    opt = build_optimizer(model, "adamw", lr=1e-3, weight_decay=0.1)
    decay, no_decay = group_of(opt, "decay"), group_of(opt, "no_decay")
    assert ids(decay["params"]) == ids(p for p in model.parameters() if p.dim() >= 2)
    assert ids(no_decay["params"]) == ids(p for p in model.parameters() if p.dim() < 2)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(g["base_lr"] == 1e-3 for g in opt.param_groups)


def test_adamw_is_fused_on_cpu_when_available():
    opt = build_optimizer(TinyLM(), "adamw", lr=1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["fused"] is True
    assert not build_optimizer(TinyLM(), "adamw", lr=1e-3, fused=False).defaults["fused"]


def test_muon_owns_hidden_matrices_only():
    model = TinyLM()
    assert hidden_matrices(model) == {id(model.up.weight), id(model.down.weight)}
    opt = build_optimizer(model, "muon", lr=1e-3, muon_lr=0.02)
    assert isinstance(opt, MuonAdamW)
    muon, decay, no_decay = group_of(opt, "muon"), group_of(opt, "decay"), group_of(opt, "no_decay")
    assert ids(muon["params"]) == {id(model.up.weight), id(model.down.weight)}
    assert ids(decay["params"]) == {id(model.embed.weight), id(model.pos), id(model.lm_head.weight)}
    assert ids(no_decay["params"]) == {id(model.up.bias), id(model.norm.weight), id(model.norm.bias)}
    assert muon["base_lr"] == 0.02 and decay["base_lr"] == 1e-3
    # same decay per step as AdamW's matrices: lr * wd
    assert muon["lr"] * muon["weight_decay"] == pytest.approx(decay["lr"] * decay["weight_decay"])
    assert no_decay["weight_decay"] == 0.0


def test_head_found_by_position_when_unnamed_and_hidden_sizes_may_equal_table_sizes():
    vocab, seq_len = 12, 16
    model = nn.ModuleDict(
        {
            "tokens": nn.Embedding(vocab, 8),
            "positions": nn.Embedding(seq_len, 8),
            "hidden": nn.Linear(8, seq_len),  # same size as the position table: still a hidden matrix
            "back": nn.Linear(seq_len, 8),
            "decoder": nn.Linear(8, vocab),  # unnamed head: the last Linear, vocabulary-sized
        }
    )
    assert hidden_matrices(model) == {id(model["hidden"].weight), id(model["back"].weight)}


def test_tied_head_is_counted_once_and_stays_with_adamw():
    model = TinyLM(tie=True)
    opt = build_optimizer(model, "muon", lr=1e-3)
    all_params = [p for g in opt.param_groups for p in g["params"]]
    assert len(all_params) == len(ids(all_params)) == len(list(model.parameters()))
    assert id(model.embed.weight) in ids(group_of(opt, "decay")["params"])


def test_unknown_optimizer_is_a_config_error():
    with pytest.raises(ConfigError, match="unknown optimizer"):
        build_optimizer(TinyLM(), "sgd", lr=1e-3)


@pytest.mark.parametrize("shape", [(16, 64), (64, 16), (32, 32)])
def test_newton_schulz_pushes_singular_values_near_one(shape):
    gen = torch.Generator().manual_seed(0)
    k = min(shape)
    u, _ = torch.linalg.qr(torch.randn(shape[0], k, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(shape[1], k, generator=gen))
    g = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T  # condition number 100
    s = torch.linalg.svdvals(orthogonalize(g))
    assert s.min() > 0.6 and s.max() < 1.25, s


def test_muon_step_is_an_orthogonal_update():
    model = TinyLM()
    opt = build_optimizer(model, "muon", lr=1e-3, muon_lr=0.01, weight_decay=0.0)
    before = model.up.weight.detach().clone()
    lm_loss(model, *batch(0)).backward()
    opt.step()
    delta = (before - model.up.weight.detach()) / 0.01
    s = torch.linalg.svdvals(delta)
    scale = (64 / 16) ** 0.5  # tall matrices are scaled by sqrt(rows / cols)
    assert s.min() > 0.6 * scale and s.max() < 1.25 * scale


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_loss_decreases_on_a_toy_problem(name):
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, name, lr=1e-2, muon_lr=0.02, weight_decay=0.0)
    x, y = batch(1)
    first = lm_loss(model, x, y).item()
    for _ in range(60):
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model, x, y)
        loss.backward()
        opt.step()
    assert loss.item() < 0.2 * first


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_zero_lr_factor_leaves_weights_untouched(name):
    model = TinyLM()
    opt = build_optimizer(model, name, lr=1e-3, weight_decay=0.1)
    for group in opt.param_groups:
        group["lr"] = group["base_lr"] * 0.0
    before = [p.detach().clone() for p in model.parameters()]
    lm_loss(model, *batch(0)).backward()
    opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def train_steps(model, opt, seeds):
    for seed in seeds:
        opt.zero_grad(set_to_none=True)
        lm_loss(model, *batch(seed)).backward()
        opt.step()


@pytest.mark.parametrize("name", ["adamw", "muon"])
def test_state_dict_round_trip_gives_bitwise_identical_steps(name):
    torch.manual_seed(0)
    model = TinyLM()
    opt = build_optimizer(model, name, lr=3e-3, weight_decay=0.1)
    train_steps(model, opt, [0, 1, 2])

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)  # what a checkpoint loader is allowed to do
    resumed = TinyLM()
    resumed.load_state_dict(saved["model"])
    resumed_opt = build_optimizer(resumed, name, lr=3e-3, weight_decay=0.1)
    resumed_opt.load_state_dict(saved["optim"])

    train_steps(model, opt, [3, 4, 5])
    train_steps(resumed, resumed_opt, [3, 4, 5])
    for (n, a), b in zip(model.named_parameters(), resumed.parameters()):
        assert torch.equal(a, b), n
    assert [g["base_lr"] for g in resumed_opt.param_groups] == [g["base_lr"] for g in opt.param_groups]


def test_groups_of_the_real_gpt():
    from scratchlm.model import GPT, get_preset

    cfg = replace(get_preset("tiny"), tie_embeddings=False, pos="learned", bias=True, n_layer=1)
    model = GPT(cfg)
    opt = build_optimizer(model, "muon", lr=1e-3)
    names = {id(p): n for n, p in model.named_parameters()}
    by_group = {g["name"]: sorted(names[id(p)] for p in g["params"]) for g in opt.param_groups}
    assert by_group["muon"] == sorted(
        n
        for n, p in model.named_parameters()
        if n.endswith("weight") and p.dim() == 2 and ("attn" in n or "mlp" in n)
    )
    assert {"tok_emb.weight", "pos_emb.weight", "lm_head.weight"} <= set(by_group["decay"])
    assert all(n.endswith("bias") or "norm" in n for n in by_group["no_decay"])
    adamw = build_optimizer(model, "adamw", lr=1e-3)
    decayed = {names[id(p)] for p in group_of(adamw, "decay")["params"]}
    assert decayed == {n for n, p in model.named_parameters() if p.dim() >= 2}


@pytest.mark.parametrize(
    "settings",
    [{"betas": (1.0, 0.95)}, {"betas": (0.9, -0.1)}, {"weight_decay": -0.1}, {"eps": -1.0}, {"lr": float("nan")},
     {"muon_lr": float("nan")}, {"muon_momentum": 1.0}],
)
def test_muon_refuses_the_settings_torch_adamw_refuses(settings):
    """Muon's AdamW half took a beta of 1 (a ZeroDivisionError at the first step) and a negative
    decay or eps or a NaN rate without a word; AdamW refuses them when it is built (torch checks
    no group's own weight decay, so build_optimizer does)."""
    if "muon_lr" not in settings and "muon_momentum" not in settings:
        with pytest.raises((ValueError, ConfigError)):
            build_optimizer(TinyLM(), "adamw", **settings)
    with pytest.raises((ValueError, ConfigError), match="lr|betas|weight_decay|eps|momentum|learning rates"):
        build_optimizer(TinyLM(), "muon", **settings)
