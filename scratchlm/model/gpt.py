"""The GPT model, top to bottom: tokens → embeddings → N transformer blocks → norm → logits.

    idx (B, T) ─ token embedding (+ learned positions) ─┬─ Block ─ ... ─ Block ─ norm ─ head ─ logits
                                                         │
    Block:   x = x + Attention(norm(x))                  causal self-attention, RoPE on q and k,
             x = x + MLP(norm(x))                        grouped-query heads, KV cache for decoding

Every variant is chosen by `ModelConfig`; nothing here knows about training, parallelism,
precision or compilation — those are applied from outside (`model/attention.py`,
`model/matmul.py` and `model/norm.py` only pick the faster kernel for the precision they are
handed). Given `targets`, forward returns the next-token loss through `model/loss.py`, which
fuses the head's matmul with the softmax.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from scratchlm.config import integer_value, real_value
from scratchlm.errors import ModelError
from scratchlm.model.activation import gelu_tanh, soft_cap
from scratchlm.model.attention import attend
from scratchlm.model.config import ModelConfig
from scratchlm.model.embedding import buffered_embedding
from scratchlm.model.loss import IGNORE_INDEX, HeadLoss, head_cross_entropy
from scratchlm.model.matmul import Linear
from scratchlm.model.norm import RMSNorm
from scratchlm.model.tied import GradientHandoff, tied_embedding

AUTOCAST_DTYPES = (torch.float32, torch.bfloat16, torch.float16)  # the floating dtypes autocast casts

# --- the KV cache -------------------------------------------------------------------------------


@dataclass
class KVCache:
    """Keys and values of every layer, preallocated once for `max_len` positions.

    Decoding writes the new token's keys/values at `start_pos` and attends over the prefix, so
    generating one token costs one token's compute. Shape per tensor:
    (n_layer, batch, n_kv_head, max_len, head_dim) — MQA/GQA shrink it by n_head / n_kv_head.
    """

    k: torch.Tensor
    v: torch.Tensor

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    def nbytes(self) -> int:
        return self.k.numel() * self.k.element_size() + self.v.numel() * self.v.element_size()


# --- building blocks ----------------------------------------------------------------------------


def make_norm(cfg: ModelConfig, dim: int) -> nn.Module:
    if cfg.norm == "rmsnorm":
        return RMSNorm(dim, eps=cfg.norm_eps)
    return nn.LayerNorm(dim, eps=cfg.norm_eps, bias=cfg.bias)


def rope_frequencies(cfg: ModelConfig, device: torch.device | str | None = None) -> torch.Tensor:
    """Rotation speed of each pair of dimensions: theta^(-2i/d), optionally rescaled.

    Llama 3.1's rescaling (`cfg.rope_scaling`) slows the slow rotations (wavelengths longer than
    original_max_len / low_freq_factor) by `factor`, keeps the fast ones (shorter than
    original_max_len / high_freq_factor), and blends linearly in between, so a model trained on
    short contexts stretches to long ones.
    """
    hd = cfg.head_dim
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, hd, 2, dtype=torch.int64, device=device).float() / hd))
    scaling = cfg.rope_scaling
    if not scaling:
        return inv_freq
    factor, low, high = scaling["factor"], scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_len"]
    wavelength = 2 * math.pi / inv_freq
    blend = (original / wavelength - low) / (high - low)
    blended = (1 - blend) * inv_freq / factor + blend * inv_freq
    slowed = torch.where(wavelength > original / low, inv_freq / factor, blended)
    return torch.where(wavelength < original / high, inv_freq, slowed)


def rope_tables(cfg: ModelConfig, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and signed sin of every (position, frequency) pair, shape (max_seq_len, head_dim).

    Dimension i is paired with i + d/2 (the rotate-half convention, the one Hugging Face's
    Llama weights are stored for), so both tables repeat the d/2 angles twice; the sin table's
    first half is negated so that `apply_rope` needs no negation of its own.
    """
    inv_freq = rope_frequencies(cfg, device)
    positions = torch.arange(cfg.max_seq_len, dtype=torch.int64, device=device).float()
    angles = torch.outer(positions, inv_freq)
    cos = torch.cat([angles.cos(), angles.cos()], dim=-1)
    signed_sin = torch.cat([-angles.sin(), angles.sin()], dim=-1)
    return cos, signed_sin


def apply_rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x1, x2) = (x[i], x[i + d/2]) by its position's angle a:
    (x1·cos a − x2·sin a, x2·cos a + x1·sin a). Swapping the halves is a roll by d/2."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * signed_sin


class Attention(nn.Module):
    """Causal self-attention with n_head query heads sharing n_kv_head key/value heads."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.dropout = cfg.dropout
        # One matmul makes q, k and v: rows [q heads | k heads | v heads].
        self.qkv = Linear(cfg.d_model, (cfg.n_head + 2 * cfg.n_kv_head) * cfg.head_dim, bias=cfg.bias)
        self.proj = Linear(cfg.n_head * cfg.head_dim, cfg.d_model, bias=cfg.bias)
        self.q_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None
        self.k_norm = make_norm(cfg, cfg.head_dim) if cfg.qk_norm else None

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor] | None,
        cache: tuple[torch.Tensor, torch.Tensor] | None,
        start_pos: int,
    ) -> torch.Tensor:
        B, T, _ = x.shape
        H, KV, hd = self.n_head, self.n_kv_head, self.head_dim
        qk, v = self.qkv(x).view(B, T, H + 2 * KV, hd).split([H + KV, KV], dim=2)
        if self.q_norm is not None:  # splits, not slices: a split's backward is one concatenation
            q, k = qk.split([H, KV], dim=2)
            qk = torch.cat([self.q_norm(q), self.k_norm(k)], dim=2)
        if rope is not None:  # queries and keys rotate together: one set of elementwise ops
            qk = apply_rope(qk, *rope)
        q, k = qk.split([H, KV], dim=2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (B, heads, T, hd)

        # Causal mask: query i (at absolute position start_pos + i) sees keys 0..start_pos + i.
        mask, is_causal = None, True
        if cache is not None:
            cache_k, cache_v = cache
            end = start_pos + T
            cache_k[:B, :, start_pos:end] = k
            cache_v[:B, :, start_pos:end] = v
            k, v = cache_k[:B, :, :end], cache_v[:B, :, :end]
            if start_pos > 0:  # SDPA's is_causal aligns the mask top-left; shift it by start_pos
                is_causal = False
                if T > 1:
                    mask = torch.ones(T, end, dtype=torch.bool, device=x.device).tril(diagonal=start_pos)

        y = attend(  # F.scaled_dot_product_attention, in the precision whose kernel is faster
            q, k, v,
            mask=mask,
            dropout_p=self.dropout if self.training else 0.0,
            is_causal=is_causal,
            enable_gqa=KV != H,  # K/V heads are shared by groups of query heads, not copied
        )
        y = y.transpose(1, 2).reshape(B, T, H * hd)
        return self.proj(y)


class MLP(nn.Module):
    """Position-wise feed-forward: GELU (tanh form, as GPT-2), ReLU², or SwiGLU."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind = cfg.mlp
        # SwiGLU's gate and up projections share one matmul: rows [gate | up].
        n_in = 2 * cfg.d_ff if cfg.mlp == "swiglu" else cfg.d_ff
        self.fc = Linear(cfg.d_model, n_in, bias=cfg.bias)
        self.proj = Linear(cfg.d_ff, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        if self.kind == "swiglu":
            gate, up = h.chunk(2, dim=-1)
            h = F.silu(gate) * up
        elif self.kind == "gelu":
            h = gelu_tanh(h)
        else:
            h = F.relu(h).square()
        return self.proj(h)


class Block(nn.Module):
    """Pre-norm transformer block: attention then MLP, each added to the residual stream."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = make_norm(cfg, cfg.d_model)
        self.attn = Attention(cfg)
        self.norm2 = make_norm(cfg, cfg.d_model)
        self.mlp = MLP(cfg)
        self.dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()

    def forward(self, x, rope, cache, start_pos: int) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm1(x), rope, cache, start_pos))
        x = x + self.dropout(self.mlp(self.norm2(x)))
        return x


# --- the model ----------------------------------------------------------------------------------

TOKEN_ID_DTYPES = (torch.int64, torch.int32)  # what both the embedding lookup and the loss's gather index with


def check_token_ids(name: str, ids: object) -> None:
    """One ModelError for ids that are not a (batch, time) tensor of int64/int32: bool targets
    would train silently on classes 0 and 1, and other dtypes fail deep in torch's kernels."""
    if not isinstance(ids, torch.Tensor) or ids.dim() != 2 or ids.dtype not in TOKEN_ID_DTYPES:
        found = type(ids).__name__
        if isinstance(ids, torch.Tensor):
            found = f"a {ids.dim()}-d {str(ids.dtype).removeprefix('torch.')} tensor"
        raise ModelError(f"{name} must be a (batch, time) tensor of int64 or int32 token ids, got {found}")


def _embedding(num: int, dim: int) -> nn.Embedding:
    """`nn.Embedding(num, dim)` without its own initialisation: `GPT.reset_parameters` fills the
    table. Why: on the meta device (where `load_model` builds a model before reading its weights)
    PyTorch's normal_ init imports the whole compiler stack, 1.3 s of every `generate`'s start-up."""
    return nn.Embedding.from_pretrained(torch.empty(num, dim), freeze=False)


class GPT(nn.Module):
    """A decoder-only transformer language model: `forward(idx) -> logits`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = _embedding(cfg.vocab_size, cfg.d_model)
        self.pos_emb = _embedding(cfg.max_seq_len, cfg.d_model) if cfg.pos == "learned" else None
        self.emb_dropout = nn.Dropout(cfg.dropout) if cfg.dropout > 0 else nn.Identity()
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.norm_f = make_norm(cfg, cfg.d_model)
        self.lm_head = Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.tie_weights()
        self.reset_rope()
        if not self.tok_emb.weight.is_meta:  # built on the meta device to be loaded: nothing to fill
            self.reset_parameters()

    def tie_weights(self) -> None:
        """Share one matrix between the token embedding and the output head, if configured."""
        if self.cfg.tie_embeddings:
            self.lm_head.weight = self.tok_emb.weight

    def reset_rope(self) -> None:
        """(Re)compute the RoPE cos/sin tables; derived from the config, so never saved."""
        if self.cfg.pos != "rope":
            self.rope_cos = self.rope_sin = None
            return
        device = self.tok_emb.weight.device
        if device.type == "meta":  # built to be loaded: placeholders, recomputed once on a real device
            cos = sin = torch.empty(self.cfg.max_seq_len, self.cfg.head_dim, device=device)
        else:
            cos, sin = rope_tables(self.cfg, device)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Normal(0, init_std) weights, zero biases, unit norms; the projections that write into
        the residual stream get std / sqrt(2·n_layer) so its variance does not grow with depth."""
        std = self.cfg.init_std
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, mean=0.0, std=std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, mean=0.0, std=std)
            elif isinstance(module, (nn.LayerNorm, nn.RMSNorm)):
                module.reset_parameters()
        residual_std = std / math.sqrt(2 * self.cfg.n_layer)
        for block in self.blocks:
            nn.init.normal_(block.attn.proj.weight, mean=0.0, std=residual_std)
            nn.init.normal_(block.mlp.proj.weight, mean=0.0, std=residual_std)

    def _embed_tokens(self, idx: torch.Tensor, with_loss: bool) -> tuple[torch.Tensor, GradientHandoff | None]:
        """Look up token embeddings without a vocab × width temporary in the table's gradient.

        Only the rows of the batch's tokens have a gradient, yet the dense form zero-fills and
        adds a whole vocab × width matrix every step (for GPT-2 124M, 154 MB). So, when the head's
        loss is computed in this same call, a table tied to the head adds its rows into the head's
        gradient (`model/tied.py`, returned hand-off goes to the loss); an untied table sends
        sparse rows when, at backward, a dense gradient buffer will absorb them in place: one
        kept between steps (`zero_grad(set_to_none=False)`), or one an earlier micro-batch of
        the same step made (`model/embedding.py`).
        Otherwise, and under torch.compile (which traces neither), the gradient is dense. The
        `.grad` that results is the same in every case.
        """
        weight = self.tok_emb.weight
        training = torch.is_grad_enabled() and weight.requires_grad and not torch.compiler.is_compiling()
        if training and with_loss and self.cfg.tie_embeddings:
            handoff = GradientHandoff()
            return tied_embedding(idx, weight, handoff), handoff
        if training and not self.cfg.tie_embeddings:
            return buffered_embedding(idx, weight), None
        return F.embedding(idx, weight), None

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())  # shared (tied) tensors count once

    def new_cache(
        self,
        batch_size: int,
        max_len: int | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> KVCache:
        """A zeroed KV cache for `batch_size` sequences of up to `max_len` (default max_seq_len),
        in `dtype` (default: the dtype the keys are made in, `activation_dtype`)."""
        cfg = self.cfg
        max_len = cfg.max_seq_len if max_len is None else max_len
        for name, value in (("batch_size", batch_size), ("max_len", max_len)):
            if integer_value(value) is None or value < 1:
                raise ModelError(f"KV cache {name} must be an integer ≥ 1, got {value!r}")
        if max_len > cfg.max_seq_len:
            raise ModelError(f"KV cache length {max_len} exceeds the model's max_seq_len {cfg.max_seq_len}")
        weight = self.tok_emb.weight
        shape = (cfg.n_layer, batch_size, cfg.n_kv_head, max_len, cfg.head_dim)
        device = weight.device if device is None else device
        dtype = self.activation_dtype() if dtype is None else dtype
        return KVCache(
            k=torch.zeros(shape, device=device, dtype=dtype), v=torch.zeros(shape, device=device, dtype=dtype)
        )

    def _compute_dtype(self) -> tuple[torch.dtype, bool]:
        """(the dtype activations, keys and values are made in, whether autocast sets it): autocast's
        where it casts this model's computation (it leaves float64 alone), else the weights'."""
        weight = self.tok_emb.weight
        device = weight.device.type
        if torch.is_autocast_enabled(device) and weight.dtype in AUTOCAST_DTYPES:
            return torch.get_autocast_dtype(device), True
        return weight.dtype, False

    def activation_dtype(self) -> torch.dtype:
        """The dtype activations, keys and values are made in: autocast's, where it applies, else
        the weights'."""
        return self._compute_dtype()[0]

    def _check_cache(self, cache: KVCache, batch: int, end: int, dtype: torch.dtype, under_autocast: bool) -> None:
        """A cache made by `new_cache` for this model's layout, device and compute dtype, large enough:
        one that is not would fail deep inside the attention, or write past its end."""
        cfg = self.cfg
        layout = (cfg.n_layer, cfg.n_kv_head, cfg.head_dim)
        found = (cache.k.shape[0], cache.k.shape[2], cache.k.shape[4]) if cache.k.dim() == 5 else None
        if found != layout or cache.v.shape != cache.k.shape:
            raise ModelError(
                f"KV cache of shape {tuple(cache.k.shape)} is not this model's (layers, batch, kv heads, "
                f"positions, head_dim) = ({layout[0]}, *, {layout[1]}, *, {layout[2]}): make it with new_cache"
            )
        if end > cache.max_len or batch > cache.batch_size:
            raise ModelError(
                f"KV cache of {cache.batch_size}×{cache.max_len} is too small for batch {batch} up to position {end}"
            )
        device = self.tok_emb.weight.device
        # Under autocast the attention casts the cached keys and values itself; otherwise they
        # must be in the queries' dtype.
        usable = AUTOCAST_DTYPES if under_autocast else (dtype,)
        if cache.k.dtype not in usable or cache.v.dtype not in usable:
            raise ModelError(f"KV cache holds {cache.k.dtype} but this model computes in {dtype}: "
                             f"make it with new_cache(..., dtype={dtype})")
        if cache.k.device != device or cache.v.device != device:
            raise ModelError(f"KV cache is on {cache.k.device} but the model is on {device}")

    def forward(
        self,
        idx: torch.Tensor,
        cache: KVCache | None = None,
        start_pos: int = 0,
        *,
        targets: torch.Tensor | None = None,
        z_loss: float = 0.0,
        ignore_index: int = IGNORE_INDEX,
        last_only: bool = False,
    ) -> torch.Tensor | HeadLoss:
        """Logits (B, T, vocab_size) for token ids `idx` (B, T) at positions start_pos.. .

        With a `cache`, keys/values of these tokens are stored at start_pos.. and attention also
        sees the cached prefix; without one, `start_pos` must be 0. With `targets` (B, T), the
        logits are never materialised whole: the result is a `HeadLoss` (mean cross-entropy over
        targets other than `ignore_index`, plus `z_loss` times the z-loss in `objective`). With
        `last_only`, the logits of the last position alone, (B, 1, vocab_size): decoding's
        prefill needs no others, and a long prompt's T × vocab logits could be gigabytes.
        """
        check_token_ids("idx", idx)
        B, T = idx.shape
        if integer_value(start_pos) is None or start_pos < 0:
            raise ModelError(f"start_pos must be an integer ≥ 0, got {start_pos!r}")
        end = start_pos + T
        if end > self.cfg.max_seq_len:
            raise ModelError(f"sequence of {end} positions exceeds the model's max_seq_len {self.cfg.max_seq_len}")
        if cache is None and start_pos != 0:
            raise ModelError("start_pos > 0 needs a KV cache holding the earlier positions")
        if last_only and targets is not None:
            raise ModelError("last_only gives logits, not a loss: pass targets or last_only, not both")
        if targets is not None:
            if targets.shape != idx.shape:  # flattened, another shape pairs wrong rows
                raise ModelError(f"targets must have the shape of idx, {tuple(idx.shape)}, got {tuple(targets.shape)}")
            check_token_ids("targets", targets)
            z = real_value(z_loss)
            if z is None or not math.isfinite(z) or z < 0:  # a NaN weight made the objective NaN silently
                raise ModelError(f"z_loss must be a finite number ≥ 0, got {z_loss!r}")
            if integer_value(ignore_index) is None:  # a float one matched no target: nothing was ignored
                raise ModelError(f"ignore_index must be an integer, got {ignore_index!r}")
        dtype, under_autocast = self._compute_dtype()  # asked once: each query costs a dispatch
        if cache is not None:
            self._check_cache(cache, B, end, dtype, under_autocast)

        x, handoff = self._embed_tokens(idx, with_loss=targets is not None)
        if self.pos_emb is not None:
            x = x + self.pos_emb(torch.arange(start_pos, end, device=idx.device))
        x = self.emb_dropout(x)

        rope = None
        if self.rope_cos is not None:  # (T, 1, head_dim), cast once for every layer under autocast
            rope = tuple(t[start_pos:end, None].to(dtype) for t in (self.rope_cos, self.rope_sin))
        for i, block in enumerate(self.blocks):
            layer_cache = None if cache is None else (cache.k[i], cache.v[i])
            x = block(x, rope, layer_cache, start_pos)

        if last_only:
            x = x[:, -1:]
        x = self.norm_f(x)
        if targets is not None:
            return head_cross_entropy(
                x, self.lm_head.weight, targets,
                softcap=self.cfg.logit_softcap, z_loss=z_loss, ignore_index=ignore_index, handoff=handoff,
            )
        logits = self.lm_head(x)
        if self.cfg.logit_softcap is not None:
            logits = soft_cap(logits, self.cfg.logit_softcap)
        return logits
