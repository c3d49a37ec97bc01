"""Sampling rules and KV-cached generation."""

import pytest
import torch

from scratchlm.errors import ConfigError, ModelError
from scratchlm.infer import filter_logits, generate, sample_next, stream_tokens
from scratchlm.model import GPT, ModelConfig, matmul
from scratchlm.model.matmul import Linear


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layer=2, n_head=4, n_kv_head=2, d_model=32, max_seq_len=24)
    m = GPT(cfg)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0.0, 0.3).add_(1.0 if p.dim() == 1 else 0.0)
    return m


def greedy_without_cache(model, prompt, n):
    ids = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            ids.append(int(model(torch.tensor([ids]))[0, -1].argmax()))
    return ids[len(prompt) :]


def test_greedy_generation_equals_repeated_full_forwards(model):
    prompt = [3, 1, 4, 1, 5]
    assert generate(model, prompt, 10, temperature=0) == greedy_without_cache(model, prompt, 10)
    assert generate(model, torch.tensor([prompt]), 10, temperature=0) == greedy_without_cache(model, prompt, 10)


def test_generation_under_autocast_uses_a_cache_it_accepts(model):
    """A caller's autocast used to meet a cache in the weights' dtype, which the model refused."""
    prompt = [3, 1, 4, 1, 5]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = generate(model, prompt, 8, temperature=0)
        expected = greedy_without_cache(model, prompt, 8)
    # bf16 rounds the cached and the full forward differently: the first two choices lead by over
    # 1.3 logits, later ones by as little as 0.22, so only those two are compared exactly
    assert len(got) == 8 and got[:2] == expected[:2]


def test_sampling_is_reproducible_with_a_seed(model):
    a = generate(model, [1, 2], 15, temperature=1.0, seed=7)
    assert a == generate(model, [1, 2], 15, temperature=1.0, seed=7)
    assert len({tuple(generate(model, [1, 2], 15, seed=s)) for s in range(4)}) > 1
    assert generate(model, [1, 2], 8, top_k=1, seed=3) == generate(model, [1, 2], 8, temperature=0)


def test_stops_before_eos_and_at_max_seq_len(model):
    first = generate(model, [5], 1, temperature=0)[0]
    assert generate(model, [5], 10, temperature=0, eos_id=first) == []
    assert len(generate(model, list(range(20)), 100, temperature=0)) == 4  # 24 positions in all
    assert list(stream_tokens(model, [1] * 24, 5)) == []


def test_generate_restores_training_mode(model):
    model.train()
    generate(model, [1], 2)
    assert model.training
    model.eval()


def test_bad_prompts_are_clear_errors(model):
    with pytest.raises(ModelError, match="at least one token"):
        generate(model, [], 3)
    with pytest.raises(ModelError, match="exceeds the model's max_seq_len"):
        generate(model, [1] * 25, 3)
    with pytest.raises(ModelError, match=r"\[0, 40\)"):
        generate(model, [40], 3)


def test_top_k_and_top_p_filters():
    logits = torch.log(torch.tensor([[0.5, 0.05, 0.3, 0.15]]))
    assert torch.isinf(filter_logits(logits, top_k=2)).tolist() == [[False, True, False, True]]
    # 0.5 + 0.3 = 0.8 < 0.85, so 0.15 is needed as well; 0.05 is not
    assert torch.isinf(filter_logits(logits, top_p=0.85)).tolist() == [[False, True, False, False]]
    assert torch.isinf(filter_logits(logits, top_p=0.5)).tolist() == [[False, True, True, True]]
    assert torch.isinf(filter_logits(logits, top_p=0.01)).sum() == 3  # the top token always stays
    for tiny in (1e-300, 5e-324):  # 0 once rounded to float32, yet a valid setting
        assert torch.isinf(filter_logits(logits, top_p=tiny)).tolist() == [[False, True, True, True]]
        assert int(sample_next(logits, 1.0, top_p=tiny)) == 0
    g = torch.Generator().manual_seed(0)
    draws = [int(sample_next(logits, 1.0, top_p=0.85, generator=g)) for _ in range(300)]
    assert 1 not in draws and {0, 2, 3} <= set(draws)
    with pytest.raises(ConfigError, match="top_p"):
        sample_next(logits, 1.0, top_p=0.0)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(temperature=float("nan")), "temperature must be a finite number"),
        (dict(temperature=float("inf")), "temperature must be a finite number"),
        (dict(temperature=-0.5), "temperature must be ≥ 0"),
        (dict(top_k=0), "top_k must be an integer ≥ 1"),
        (dict(top_k=2.5), "top_k must be an integer ≥ 1"),
        (dict(top_k=True), "top_k must be an integer ≥ 1"),
        (dict(top_p=float("nan")), "top_p must be in"),
        (dict(top_p="0.9"), "top_p must be in"),
    ],
)
def test_bad_sampling_settings_are_clear_errors(model, settings, message):
    """NaN/inf temperatures used to reach torch.multinomial and fail there with a RuntimeError."""
    logits = torch.zeros(1, 4)
    with pytest.raises(ConfigError, match=message):
        sample_next(logits, **{"temperature": 1.0, **settings})
    with pytest.raises(ConfigError, match=message):
        generate(model, [1, 2], 3, **settings)


@pytest.mark.parametrize("temperature", [1e-45, 1e-50, 1e-300])
def test_a_temperature_that_overflows_the_logits_is_greedy(model, temperature):
    """logits / 1e-45 is ±inf in float32 (and / 1e-50 divides by a float32 zero): sampling
    those rows gave NaN probabilities; the rule is the limit temperature → 0, greedy."""
    logits = torch.tensor([[0.0, 2.5, -1.0, 2.0], [1.0, -3.0, 0.5, 4.0]])
    assert sample_next(logits, temperature).tolist() == [1, 3]
    assert generate(model, [3, 1], 6, temperature=temperature, seed=0) == generate(model, [3, 1], 6, temperature=0)


def test_a_temperature_above_float32s_range_samples_without_nan(model):
    """A finite temperature above float32's largest number was inf in float32: a masked logit's
    -inf / inf is NaN (torch.multinomial failed with a RuntimeError, through the CLI too with a
    tokenizer's unused ids), and every other logit became 0, so top_k cut nothing."""
    g = torch.Generator().manual_seed(0)
    masked = torch.tensor([[0.0, float("-inf"), 1.0, 2.0]])
    assert {int(sample_next(masked, 1e39, generator=g)) for _ in range(100)} == {0, 2, 3}
    logits = torch.tensor([[0.0, 1.0, 2.0]])
    assert {int(sample_next(logits, 1e300, top_k=2, generator=g)) for _ in range(100)} == {1, 2}
    assert 3 not in generate(model, [1], 8, temperature=1e39, suppress_ids=[3], seed=0)


def test_only_the_overflowing_row_turns_greedy():
    logits = torch.tensor([[0.0, 1e-40, 0.0], [3e38, 0.0, 2e38]])  # 1e-40 / 1e-3 stays finite
    g = torch.Generator().manual_seed(0)
    draws = [sample_next(logits, 1e-3, generator=g).tolist() for _ in range(50)]
    assert {row[1] for row in draws} == {0}  # 3e38 / 1e-3 overflows: greedy
    assert {row[0] for row in draws} == {0, 1, 2}  # near-equal logits: still sampled


def test_generation_checks_the_sampling_settings_once_not_per_token(model, monkeypatch):
    import sys

    from scratchlm.infer import sampling

    generate_module = sys.modules["scratchlm.infer.generate"]  # the package's `generate` is the function
    calls = []
    real_check = sampling.check_sampling

    def counting_check(*args):
        calls.append(args)
        return real_check(*args)

    monkeypatch.setattr(sampling, "check_sampling", counting_check)
    monkeypatch.setattr(generate_module, "check_sampling", counting_check)
    assert len(generate(model, [1, 2], 6, temperature=0.7, top_k=5, seed=0)) == 6
    assert len(calls) == 1


def test_vocab_limit_draws_only_ids_below_it(model):
    limit = model.cfg.vocab_size // 4
    for seed in range(5):
        ids = generate(model, [1, 2, 3], 20, temperature=3.0, seed=seed, vocab_limit=limit)
        assert ids and max(ids) < limit
    with pytest.raises(ModelError, match="vocab_limit"):
        generate(model, [1], 2, vocab_limit=model.cfg.vocab_size + 1)


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(max_new_tokens=-5), "max_new_tokens must be an integer ≥ 0, got -5"),
        (dict(max_new_tokens=2.5), "max_new_tokens must be an integer ≥ 0, got 2.5"),
        (dict(max_new_tokens=True), "max_new_tokens must be an integer ≥ 0, got True"),
        (dict(seed=1.5), r"seed must be an integer in \[-2\*\*63, 2\*\*64\)"),
        (dict(seed="7"), "seed must be an integer"),
        (dict(seed=2**64), "seed must be an integer"),
    ],
)
def test_bad_lengths_and_seeds_are_config_errors_not_silent_or_torch_errors(model, settings, message):
    """A negative length used to return nothing, True to count as 1, and a float or string seed
    to fail inside torch."""
    with pytest.raises(ConfigError, match=message):
        generate(model, [1, 2], **{"max_new_tokens": 3, **settings})


def test_integers_of_any_kind_serve_as_lengths_seeds_and_ids(model):
    """NumPy and 0-d tensor integers are integers: the same tokens as with Python ints."""
    np = pytest.importorskip("numpy")
    expected = generate(model, [1, 2], 5, seed=3)
    assert generate(model, [1, 2], np.int64(5), seed=np.int64(3)) == expected
    assert generate(model, [1, 2], torch.tensor(5), seed=torch.tensor(3)) == expected
    assert generate(model, [1, 2], 5, seed=2**64 - 1) == generate(model, [1, 2], 5, seed=-1)  # torch wraps negatives
    assert generate(model, [1, 2], 0) == [] == generate(model, [1, 2], np.int64(0))  # zero new tokens, of any kind
    stop_at = expected[2]
    assert generate(model, [1, 2], 5, seed=3, eos_id=np.int64(stop_at)) == expected[: expected.index(stop_at)]


def test_sampling_settings_of_any_number_kind_draw_the_same_tokens(model):
    """NumPy and 0-d tensor numbers are numbers: top_k, top_p and temperature used to be refused
    with a message saying they were not (`top_k must be an integer ≥ 1, got np.int64(5)`)."""
    np = pytest.importorskip("numpy")
    expected = generate(model, [1, 2], 6, temperature=0.5, top_k=5, top_p=0.9, seed=3)
    kinds = [
        dict(temperature=np.float32(0.5), top_k=np.int64(5), top_p=np.float64(0.9)),
        dict(temperature=torch.tensor(0.5), top_k=torch.tensor(5), top_p=torch.tensor(0.9, dtype=torch.float64)),
    ]
    for settings in kinds:
        assert generate(model, [1, 2], 6, seed=3, **settings) == expected
    assert sample_next(torch.tensor([[0.0, 3.0, 1.0]]), np.float32(0.0), np.int64(2)).tolist() == [1]
    assert generate(model, [1, 2], 6, seed=3, temperature=np.array(0.5), top_k=np.array(5), top_p=np.array(0.9)) == expected
    for huge in (10**400, -(10**400)):  # too large for a float: refused, not an OverflowError
        with pytest.raises(ConfigError, match="top_p must be in"):
            generate(model, [1, 2], 3, top_p=huge)
        with pytest.raises(ConfigError, match="temperature must be a finite number"):
            generate(model, [1, 2], 3, temperature=huge)
    for flag in (np.bool_(True), torch.tensor(True)):
        with pytest.raises(ConfigError, match="top_k must be an integer"):
            generate(model, [1, 2], 3, top_k=flag)
        with pytest.raises(ConfigError, match="temperature must be a finite number"):
            generate(model, [1, 2], 3, temperature=flag)


def test_any_of_several_eos_ids_stops_generation(model):
    greedy = generate(model, [5], 6, temperature=0)
    stop_at = greedy[3]
    expected = greedy[: greedy.index(stop_at)]
    assert generate(model, [5], 6, temperature=0, eos_id=[39, stop_at]) == expected
    assert generate(model, [5], 6, temperature=0, eos_id={stop_at}) == expected
    with pytest.raises(ModelError, match="eos_id must be token ids"):
        generate(model, [5], 2, eos_id=[1.5])


def test_suppressed_ids_are_never_drawn(model):
    first = generate(model, [5], 1, temperature=0)[0]
    assert generate(model, [5], 1, temperature=0, suppress_ids=[first])[0] != first
    banned = set(range(0, 40, 2))
    drawn = {t for s in range(20) for t in generate(model, [1, 2], 8, temperature=5.0, seed=s, suppress_ids=banned)}
    assert drawn and not drawn & banned
    with pytest.raises(ModelError, match="no token id to draw"):
        generate(model, [5], 2, suppress_ids=range(40))
    with pytest.raises(ModelError, match="no token id to draw"):
        generate(model, [5], 2, vocab_limit=3, suppress_ids=[0, 1, 2, 50])


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_non_finite_logits_are_a_clear_error_not_junk_tokens(model, temperature):
    """Greedy decoding would pick the argmax of NaNs; sampling would fail inside torch."""
    broken = GPT(model.cfg)
    broken.load_state_dict(model.state_dict())
    with torch.no_grad():
        broken.norm_f.weight.fill_(float("nan"))
    with pytest.raises(ModelError, match=r"logits at position 2 are not finite \(NaN or inf\)"):
        generate(broken, [3, 1], 4, temperature=temperature, seed=0)


@pytest.mark.skipif(matmul._REORDER is None, reason="this PyTorch build cannot pack oneDNN weights")
def test_bf16_decoding_packs_weights_only_while_it_runs_and_sees_data_writes_between_runs(model):
    """A packed weight kept across calls would miss a write through `.data` (no version change)."""
    m = GPT(model.cfg)
    m.load_state_dict(model.state_dict())
    m = m.to(torch.bfloat16)
    layers = [module for module in m.modules() if isinstance(module, Linear)]
    generate(m, [3, 1], 5, temperature=0)
    assert all(layer._packed is None for layer in layers)
    for p in m.parameters():
        p.data.mul_(-1.5)
    tokens = stream_tokens(m, [3, 1], 5, temperature=0)
    next(tokens)
    for layer in layers:  # the copies in use were made from the weights as they are now
        assert torch.equal(layer._packed[2].to_dense(), layer.weight)
    list(tokens)
    assert all(layer._packed is None for layer in layers)


def test_a_bf16_model_made_under_inference_mode_decodes_as_one_made_outside_it(model):
    """Inference tensors have no version counter, and the packed copy's key read it: a bf16 model
    loaded under `torch.inference_mode()` failed on CPU with a RuntimeError at the first token."""
    plain = GPT(model.cfg)
    plain.load_state_dict(model.state_dict())
    plain = plain.to(torch.bfloat16)
    with torch.inference_mode():
        inference = GPT(model.cfg)
        inference.load_state_dict(model.state_dict())
        inference = inference.to(torch.bfloat16)
    assert inference.lm_head.weight.is_inference()
    expected = generate(plain, [3, 1], 6, temperature=0)
    assert generate(inference, [3, 1], 6, temperature=0) == expected
    with torch.inference_mode():
        assert generate(inference, [3, 1], 6, temperature=0) == expected


def test_a_stream_leaves_the_callers_grad_mode_alone_between_tokens_and_after(model):
    """Inference mode held across a `yield` leaked into the caller; two streams closed out of
    order left it switched on for good, and training afterwards would fail."""
    first = stream_tokens(model, [1, 2, 3], 5, temperature=0)
    next(first)
    assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()
    second = stream_tokens(model, [1, 2, 3], 5, temperature=0)
    next(second)
    first.close()
    second.close()
    assert not torch.is_inference_mode_enabled()
    assert list(stream_tokens(model, [3, 1, 4], 6, temperature=0)) == generate(model, [3, 1, 4], 6, temperature=0)


def test_interleaved_streams_decode_in_eval_mode_and_leave_the_callers_mode_alone():
    """Eval mode held across a `yield` leaked into the caller's training, and a second stream
    opened meanwhile finished its tokens with dropout on once the first one closed."""
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=40, n_layer=2, n_head=4, d_model=32, max_seq_len=24, dropout=0.5)
    m = GPT(cfg)
    expected = generate(m.eval(), [3, 1, 4], 12, temperature=0)
    m.train()
    first = stream_tokens(m, [3, 1, 4], 12, temperature=0)
    next(first)
    assert m.training  # between tokens the caller's module is in the mode it set
    second = stream_tokens(m, [3, 1, 4], 12, temperature=0)
    got = [next(second)]
    first.close()
    got += list(second)
    assert got == expected
    assert m.training


def test_prefill_computes_the_last_positions_logits_only(model):
    """A long prompt's T × vocab logits were made and dropped; only the last row is used."""
    rows = []
    hook = model.lm_head.register_forward_hook(lambda module, args, out: rows.append(args[0].shape[1]))
    try:
        generate(model, list(range(1, 20)), 3, temperature=0)
    finally:
        hook.remove()
    assert rows == [1, 1, 1]
    x = torch.tensor([[3, 1, 4, 1, 5]])
    with torch.no_grad():
        torch.testing.assert_close(model(x, last_only=True), model(x)[:, -1:])
    with pytest.raises(ModelError, match="last_only"):
        model(x, targets=x, last_only=True)


@pytest.mark.parametrize("prompt", [[1, 2.5], torch.tensor([1.0, 2.0]), [True, 2], [[1, 2], [3, 4]]])
def test_prompt_ids_that_are_not_integers_are_clear_errors(model, prompt):
    with pytest.raises(ModelError, match="integer token ids"):
        generate(model, prompt, 2)


@pytest.mark.parametrize("limit", [True, 2.5, "3"])
def test_a_vocab_limit_that_is_not_an_integer_is_a_clear_error(model, limit):
    with pytest.raises(ModelError, match="vocab_limit must be an integer"):
        generate(model, [1], 2, vocab_limit=limit)


def test_generation_restores_each_modules_own_mode(model):
    """A model partly in eval mode (a frozen block while the rest trains) got every module set
    to the root's mode afterwards."""
    model.train()
    model.blocks[0].eval()
    try:
        generate(model, [1, 2], 3, temperature=0)
        assert model.training and not any(m.training for m in model.blocks[0].modules())
        assert all(m.training for m in model.blocks[1].modules())
    finally:
        model.eval()
