"""Autoregressive generation with the model's static KV cache.

The prompt is run once (prefill), then each new token costs one single-position forward that
reads the cached keys and values of everything before it.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager

import torch

from scratchlm.config import integer_value
from scratchlm.errors import ConfigError, ModelError, NonFiniteLogits
from scratchlm.infer.sampling import check_sampling, sample_next_unchecked
from scratchlm.model.gpt import GPT
from scratchlm.model.io import unwrap
from scratchlm.model.matmul import packed_weights


def _as_ids(prompt_ids: Sequence[int] | torch.Tensor) -> list[int]:
    """The prompt as a list of ints; a float or bool id is a mistake, not something to truncate."""
    if isinstance(prompt_ids, torch.Tensor):
        if prompt_ids.dim() == 2 and prompt_ids.shape[0] == 1:
            prompt_ids = prompt_ids[0]
        if prompt_ids.dim() != 1:
            raise ModelError(f"generate takes one prompt (1-D ids), got shape {tuple(prompt_ids.shape)}")
        if prompt_ids.dtype.is_floating_point or prompt_ids.dtype.is_complex or prompt_ids.dtype == torch.bool:
            raise ModelError(f"generate takes one prompt of integer token ids, got a {prompt_ids.dtype} tensor")
        return prompt_ids.tolist()  # one transfer, not one per id (a GPU tensor would sync for each)
    ids = []
    for token in prompt_ids:
        value = integer_value(token)
        if value is None:
            raise ModelError(f"generate takes one prompt of integer token ids, got {token!r}")
        ids.append(value)
    return ids


def stream_tokens(
    model: GPT,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Collection[int] | None = None,
    seed: int | None = None,
    vocab_limit: int | None = None,
    suppress_ids: Collection[int] = (),
) -> Iterator[int]:
    """Yield new token ids one at a time (for streaming output); see `generate`."""
    temperature, top_k, top_p = check_sampling(temperature, top_k, top_p)
    wanted = integer_value(max_new_tokens)
    if wanted is None or wanted < 0:
        raise ConfigError(f"max_new_tokens must be an integer ≥ 0, got {max_new_tokens!r}")
    seed_value = None if seed is None else integer_value(seed)
    if seed is not None and (seed_value is None or not -(2**63) <= seed_value < 2**64):
        raise ConfigError(f"seed must be an integer in [-2**63, 2**64), torch's seed range, got {seed!r}")
    ids = _as_ids(prompt_ids)
    stop_ids = _id_set("eos_id", eos_id)
    model = unwrap(model)  # decode eagerly: compiled or DDP wrappers add nothing here
    cfg = model.cfg
    if not ids:
        raise ModelError("generate needs a prompt of at least one token")
    if len(ids) > cfg.max_seq_len:
        raise ModelError(f"prompt of {len(ids)} tokens exceeds the model's max_seq_len {cfg.max_seq_len}")
    if max(ids) >= cfg.vocab_size or min(ids) < 0:
        raise ModelError(f"prompt token ids must be in [0, {cfg.vocab_size}), got {min(ids)}..{max(ids)}")
    limit = None if vocab_limit is None else integer_value(vocab_limit)
    if vocab_limit is not None and (limit is None or not 0 < limit <= cfg.vocab_size):
        raise ModelError(f"vocab_limit must be an integer in [1, {cfg.vocab_size}], got {vocab_limit!r}")
    vocab_limit = limit
    drawable = cfg.vocab_size if vocab_limit is None else vocab_limit
    suppressed = sorted(i for i in _id_set("suppress_ids", suppress_ids) if 0 <= i < drawable)
    if len(suppressed) == drawable:
        raise ModelError("suppress_ids leaves no token id to draw")
    # Positions are bounded by max_seq_len: generation stops there.
    steps = min(wanted, cfg.max_seq_len - len(ids))
    if steps == 0:
        return
    device = model.tok_emb.weight.device
    generator = None
    if seed_value is not None:
        generator = torch.Generator(device=device).manual_seed(seed_value)

    with packed_weights(model):
        with _decoding(model):
            cache = model.new_cache(1, len(ids) + steps)
            x = torch.tensor([ids], dtype=torch.long, device=device)
            logits = model(x, cache, start_pos=0, last_only=True)[:, -1]
            banned = torch.tensor(suppressed, dtype=torch.long, device=device) if suppressed else None
        pos = len(ids)
        for i in range(steps):
            with torch.inference_mode():
                token = _next_token(logits[..., :vocab_limit], pos, banned, temperature, top_k, top_p, generator)
            tok = int(token.item())
            if tok in stop_ids:
                return
            yield tok
            if i + 1 < steps:
                with _decoding(model):
                    logits = model(token.view(1, 1), cache, start_pos=pos)[:, -1]
                pos += 1


@contextmanager
def _decoding(model: GPT) -> Iterator[None]:
    """Eval and inference mode around one forward, never across a `yield`: the caller's code
    between tokens, another stream interleaved with this one, and whatever runs after an
    abandoned stream all see the mode they chose.

    Only the modules in training mode are switched, and exactly those are switched back; a model
    in eval mode costs nothing per token (`model.eval()` walks every module: 0.4 ms a token with
    `model.train()` after it, at 124M). A model whose root is in eval mode counts as in eval mode."""
    switched = [module for module in model.modules() if module.training] if model.training else []
    for module in switched:
        module.training = False
    try:
        with torch.inference_mode():
            yield
    finally:
        for module in switched:
            module.training = True


def _next_token(
    logits: torch.Tensor,
    pos: int,
    banned: torch.Tensor | None,
    temperature: float,
    top_k: int | None,
    top_p: float | None,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The token drawn from one position's logits; non-finite logits are a ModelError, since greedy
    decoding would pick junk and sampling fail inside torch."""
    if not bool(torch.isfinite(logits).all()):
        raise NonFiniteLogits(
            f"the model's logits at position {pos} are not finite (NaN or inf): its weights hold "
            f"NaN/inf values or overflow in {logits.dtype}"
        )
    if banned is not None:
        logits = logits.index_fill(-1, banned, float("-inf"))
    return sample_next_unchecked(logits, temperature, top_k, top_p, generator)


def _id_set(name: str, ids: int | Collection[int] | None) -> frozenset[int]:
    """Token ids given as one integer, a collection of integers, or None (none), as Python ints."""
    if ids is None:
        return frozenset()
    values = [ids] if integer_value(ids) is not None else ids
    try:
        checked = [integer_value(i) for i in values]
    except TypeError:  # neither one id nor a collection of them
        checked = [None]
    if None in checked:
        raise ModelError(f"{name} must be token ids (integers), got {ids!r}")
    return frozenset(checked)


def generate(
    model: GPT,
    prompt_ids: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_id: int | Collection[int] | None = None,
    seed: int | None = None,
    vocab_limit: int | None = None,
    suppress_ids: Collection[int] = (),
) -> list[int]:
    """The new token ids that follow `prompt_ids` (the prompt itself is not included).

    Greedy when `temperature` is 0 (or below float32's smallest normal number); otherwise
    sampling, optionally restricted to the top-k / top-p tokens, reproducible with `seed`. A
    non-finite or negative temperature, top_k < 1, top_p outside (0, 1], a max_new_tokens that is
    not an integer ≥ 0 or a seed outside torch's integer range is a ConfigError.
    Stops after `max_new_tokens`, before an end-of-sequence id (`eos_id`: one id or several,
    never returned), or when the model's max_seq_len is reached. With `vocab_limit`, only ids
    below it are drawn: a model whose vocab was padded (say to a multiple of 64) has ids its
    tokenizer cannot decode; `suppress_ids` are never drawn either (a tokenizer's unused ids).
    Logits that are not finite (weights holding NaN, or overflowing) are a ModelError. A bf16
    model on CPU decodes with packed copies of its weights, made for the call (64–180 ms at
    124M); around many calls, `with packed_weights(model):` (`model.matmul`) makes them once.
    """
    return list(
        stream_tokens(
            model, prompt_ids, max_new_tokens, temperature, top_k, top_p, eos_id, seed, vocab_limit, suppress_ids
        )
    )
