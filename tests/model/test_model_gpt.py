"""The GPT module: causality, KV-cached decoding, variants, initialization."""

import math

import pytest
import torch

from scratchlm.errors import ModelError
from scratchlm.model import GPT, ModelConfig


def tiny(**changes) -> ModelConfig:
    base = dict(vocab_size=61, n_layer=2, n_head=4, d_model=32, d_ff=64, max_seq_len=32)
    base.update(changes)
    return ModelConfig(**base)


ARCHS = {
    "gpt2": dict(pos="learned", norm="layernorm", mlp="gelu", bias=True),
    "llama-gqa": dict(pos="rope", norm="rmsnorm", mlp="swiglu", n_kv_head=2, tie_embeddings=False),
    "mqa-qknorm-relu2": dict(pos="rope", mlp="relu2", n_kv_head=1, qk_norm=True, logit_softcap=5.0),
}


def random_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    """A model whose weights (norm gains included) are far from their init, so bugs show."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3).add_(1.0 if p.dim() == 1 else 0.0)
    return model.eval()


@pytest.mark.parametrize("arch", ARCHS)
def test_changing_a_future_token_never_changes_earlier_logits(arch):
    model = random_model(tiny(**ARCHS[arch]))
    idx = torch.randint(0, 61, (2, 16), generator=torch.Generator().manual_seed(1))
    for t in (0, 7, 15):
        changed = idx.clone()
        changed[:, t] = (changed[:, t] + 1) % 61
        a, b = model(idx), model(changed)
        assert torch.equal(a[:, :t], b[:, :t])
        assert not torch.allclose(a[:, t:], b[:, t:])  # the change is visible from t on


@pytest.mark.parametrize("n_kv_head", [4, 2, 1], ids=["mha", "gqa", "mqa"])
@pytest.mark.parametrize("pos", ["rope", "learned"])
def test_cached_decoding_equals_a_full_forward(n_kv_head, pos):
    model = random_model(tiny(n_kv_head=n_kv_head, pos=pos))
    idx = torch.randint(0, 61, (2, 20), generator=torch.Generator().manual_seed(2))
    full = model(idx)
    cache = model.new_cache(batch_size=2, max_len=24)
    pieces = [model(idx[:, :8], cache, start_pos=0)]  # prefill
    pieces.append(model(idx[:, 8:13], cache, start_pos=8))  # a chunk on top of a prefix
    for t in range(13, 20):  # one token at a time
        pieces.append(model(idx[:, t : t + 1], cache, start_pos=t))
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cache_dtype", [None, torch.float32, torch.float16])
def test_cached_decoding_under_autocast_equals_a_full_forward(cache_dtype):
    """The default cache is in the dtype keys are made in (bf16 here); a cache in another dtype
    autocast casts also works, as it did before caches were checked."""
    model = random_model(tiny(n_kv_head=2))
    idx = torch.randint(0, 61, (1, 12), generator=torch.Generator().manual_seed(3))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        full = model(idx)
        cache = model.new_cache(1, dtype=cache_dtype)
        assert cache.k.dtype == (cache_dtype or torch.bfloat16) and model.activation_dtype() == torch.bfloat16
        pieces = [model(idx[:, :6], cache, start_pos=0)]
        pieces += [model(idx[:, t : t + 1], cache, start_pos=t) for t in range(6, 12)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, atol=0.1, rtol=0.05)


def test_a_float64_model_under_autocast_keeps_float64_keys():
    """Autocast leaves float64 alone, so its keys (and cache) stay float64."""
    model = random_model(tiny(n_kv_head=2)).double()
    idx = torch.randint(0, 61, (1, 8), generator=torch.Generator().manual_seed(4))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert model.activation_dtype() == torch.float64 and model.new_cache(1).k.dtype == torch.float64
        cache = model.new_cache(1)
        pieces = [model(idx[:, :4], cache, start_pos=0)] + [model(idx[:, t : t + 1], cache, start_pos=t)
                                                              for t in range(4, 8)]
        with pytest.raises(ModelError, match="holds torch.bfloat16 but this model computes in torch.float64"):
            model(idx[:, :1], model.new_cache(1, dtype=torch.bfloat16))
        torch.testing.assert_close(torch.cat(pieces, dim=1), model(idx), atol=1e-9, rtol=1e-9)


_IDX = torch.zeros(1, 3, dtype=torch.long)
MISUSED_CACHES = {  # what the call does wrong: (the call on a GQA model, the error it must give)
    "negative start_pos": (lambda m: m(_IDX, m.new_cache(1), start_pos=-1), "start_pos must be an integer ≥ 0"),
    "negative start_pos, no cache": (lambda m: m(_IDX, None, start_pos=-1), "start_pos must be an integer ≥ 0"),
    "float start_pos": (lambda m: m(_IDX, m.new_cache(1), start_pos=1.0), "start_pos must be an integer"),
    "other kv heads": (lambda m: m(_IDX, GPT(tiny(n_kv_head=4)).new_cache(1)), r"= \(2, \*, 2, \*, 8\)"),
    "fewer layers": (lambda m: m(_IDX, GPT(tiny(n_layer=1, n_kv_head=2)).new_cache(1)), "not this model's"),
    "other dtype": (lambda m: m(_IDX, m.new_cache(1, dtype=torch.bfloat16)), "make it with new_cache"),
    "negative max_len": (lambda m: m.new_cache(1, max_len=-1), "max_len must be an integer ≥ 1, got -1"),
    "no batch": (lambda m: m.new_cache(0), "batch_size must be an integer ≥ 1, got 0"),
}


@pytest.mark.parametrize("misuse", MISUSED_CACHES)
def test_a_cache_that_does_not_fit_the_model_or_a_bad_position_is_one_model_error(misuse):
    call, message = MISUSED_CACHES[misuse]
    with torch.no_grad(), pytest.raises(ModelError, match=message):
        call(random_model(tiny(n_kv_head=2)))


def test_kv_cache_shrinks_by_heads_over_kv_heads():
    sizes = {kv: GPT(tiny(n_head=8, n_kv_head=kv)).new_cache(3, 32).nbytes() for kv in (8, 2, 1)}
    assert sizes[8] == 2 * 2 * 3 * 8 * 32 * 4 * 4  # k and v, layers, batch, heads, len, hd, fp32
    assert sizes[8] // sizes[2] == 4 and sizes[8] // sizes[1] == 8
    cfg = tiny(n_head=8, n_kv_head=2)
    assert sizes[2] == cfg.kv_cache_bytes(3, 32, bytes_per_value=4)


def test_grouped_query_attention_equals_mha_with_repeated_kv_heads():
    """GQA must behave like MHA whose K/V heads are copies: the sharing is in the math only."""
    gqa = random_model(tiny(n_kv_head=2))
    mha = GPT(tiny(n_kv_head=4)).eval()
    hd, d = 8, 32
    with torch.no_grad():
        for name, p in mha.named_parameters():
            src = dict(gqa.named_parameters())[name]
            if name.endswith("attn.qkv.weight"):
                q, k, v = src.split([4 * hd, 2 * hd, 2 * hd])
                k = k.view(2, hd, d).repeat_interleave(2, dim=0).reshape(4 * hd, d)
                v = v.view(2, hd, d).repeat_interleave(2, dim=0).reshape(4 * hd, d)
                p.copy_(torch.cat([q, k, v]))
            else:
                p.copy_(src)
    idx = torch.randint(0, 61, (1, 12))
    torch.testing.assert_close(gqa(idx), mha(idx), atol=1e-5, rtol=1e-5)


def test_logit_softcap_bounds_logits():
    model = random_model(tiny(logit_softcap=2.0))
    assert model(torch.randint(0, 61, (1, 8))).abs().max() <= 2.0


def test_tied_head_shares_the_embedding_and_gradients_flow():
    model = GPT(tiny(tie_embeddings=True, dropout=0.1))
    assert model.lm_head.weight is model.tok_emb.weight
    logits = model.train()(torch.randint(0, 61, (2, 10)))
    logits.float().logsumexp(-1).mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_residual_projections_get_the_scaled_init():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=64, n_layer=8, n_head=4, d_model=128, d_ff=512, max_seq_len=16)
    model = GPT(cfg)
    expected = cfg.init_std / math.sqrt(2 * cfg.n_layer)
    assert model.blocks[0].attn.proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert model.blocks[0].mlp.proj.weight.std().item() == pytest.approx(expected, rel=0.1)
    assert model.blocks[0].attn.qkv.weight.std().item() == pytest.approx(cfg.init_std, rel=0.1)


def test_rope_tables_are_not_saved():
    model = GPT(tiny(pos="rope"))
    assert not any("rope" in k for k in model.state_dict())
    assert model.rope_cos.shape == (32, 8)


def test_positions_past_max_seq_len_are_a_clear_error():
    model = GPT(tiny())
    with pytest.raises(ModelError, match="max_seq_len 32"):
        model(torch.zeros(1, 33, dtype=torch.long))
    cache = model.new_cache(1, 10)
    with pytest.raises(ModelError, match="too small"):
        model(torch.zeros(1, 4, dtype=torch.long), cache, start_pos=8)
    with pytest.raises(ModelError, match="needs a KV cache"):
        model(torch.zeros(1, 4, dtype=torch.long), start_pos=3)


def test_bf16_autocast_forward_runs_and_stays_close():
    model = random_model(tiny(n_kv_head=2))
    idx = torch.randint(0, 61, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = model(idx)
    assert low.dtype == torch.bfloat16
    full = model(idx)
    assert (low.float() - full).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize("which, bad", [
    ("targets", torch.zeros(1, 4, dtype=torch.bool)),  # was trained on silently, as classes 0 and 1
    ("targets", torch.zeros(1, 4, dtype=torch.uint8)),
    ("targets", torch.zeros(1, 4)),
    ("idx", torch.zeros(1, 4)),
    ("idx", torch.zeros(4, dtype=torch.long)),
])
def test_token_ids_of_a_wrong_dtype_or_rank_are_one_model_error(which, bad):
    model = GPT(tiny())
    good = torch.zeros(1, 4, dtype=torch.long)
    args = {"idx": bad, "targets": good} if which == "idx" else {"idx": good, "targets": bad}
    with pytest.raises(ModelError, match=f"{which} must be a \\(batch, time\\) tensor of int64 or int32"):
        model(args["idx"], targets=args["targets"])
    assert model(good.int(), targets=good.int()).loss.isfinite()  # int32 ids stay accepted


@pytest.mark.parametrize("bad, message", [
    ({"z_loss": float("nan")}, "z_loss must be a finite number ≥ 0, got nan"),  # was a NaN objective
    ({"z_loss": -1.0}, "z_loss must be a finite number ≥ 0"),  # was a rewarded (negative) z-loss
    ({"ignore_index": 0.5}, "ignore_index must be an integer"),  # was silently ignoring nothing
])
def test_a_bad_z_loss_or_ignore_index_is_one_model_error(bad, message):
    model = GPT(tiny())
    ids = torch.zeros(1, 4, dtype=torch.long)
    with pytest.raises(ModelError, match=message):
        model(ids, targets=ids, **bad)
    assert model(ids, targets=ids, z_loss=1e-4, ignore_index=-1).objective.isfinite()
