"""`ModelConfig`: one dataclass whose fields select every architecture the model file supports.

GPT-2 (learned positions, LayerNorm, GELU, biases, tied embeddings) and Llama (RoPE, RMSNorm,
SwiGLU, grouped-query attention, no biases) are two settings of the same fields, so a user can
read one model file and move between the two families, or mix them, by editing a config.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

from scratchlm.config import integer_value, require_finite_number
from scratchlm.errors import ConfigError

ROPE_SCALING_KEYS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_len")


# Positions a RoPE model may have: beyond every released checkpoint (4M-context Llama 3
# fine-tunes exist), where the cos/sin tables made for every position reach 4 GB at head_dim 128.
# A learned-position model needs no bound: its position table is a weight the file must hold.
MAX_SIZE = 2**31 - 1  # any one size; the product of two then still fits torch's int64 element counts
MAX_ROPE_POSITIONS = 1 << 22


@dataclass
class ModelConfig:
    """The shape and the architectural choices of a decoder-only transformer.

    `n_kv_head` picks the attention flavour: equal to `n_head` is multi-head attention, 1 is
    multi-query attention, anything between is grouped-query attention. `n_kv_head` and `d_ff`
    may be left out (None): they default to `n_head` and to the usual width for the chosen MLP.
    `rope_scaling` (optional) is Llama 3.1's long-context rescaling of the RoPE frequencies,
    a table with the keys of `ROPE_SCALING_KEYS`.
    """

    vocab_size: int = 512
    n_layer: int = 2
    n_head: int = 4
    n_kv_head: int | None = None
    d_model: int = 64
    d_ff: int | None = None
    max_seq_len: int = 256
    pos: Literal["learned", "rope"] = "rope"
    rope_theta: float = 10000.0
    rope_scaling: dict[str, float] | None = None
    norm: Literal["layernorm", "rmsnorm"] = "rmsnorm"
    norm_eps: float = 1e-5
    mlp: Literal["gelu", "swiglu", "relu2"] = "swiglu"
    qk_norm: bool = False
    bias: bool = False
    tie_embeddings: bool = True
    dropout: float = 0.0
    logit_softcap: float | None = None
    init_std: float = 0.02

    def __post_init__(self) -> None:
        if self.n_kv_head is None:
            self.n_kv_head = self.n_head
        if self.d_ff is None and integer_value(self.d_model) is not None:  # else validate() names d_model
            self.d_ff = default_d_ff(self.d_model, self.mlp)

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_head

    def validate(self) -> None:
        """Raise ConfigError with one line naming the first inconsistent field."""
        positive = ["vocab_size", "n_layer", "n_head", "n_kv_head", "d_model", "d_ff", "max_seq_len"]
        for name in positive:  # stored back as Python ints: NumPy's would not go into config.json
            value = integer_value(getattr(self, name))
            if value is None or value < 1:
                raise ConfigError(f"model.{name} must be a positive integer, got {getattr(self, name)!r}")
            if value > MAX_SIZE and not (name == "max_seq_len" and self.pos == "rope"):  # checked below
                # else torch fails deep inside, with a C++ traceback, allocating it
                raise ConfigError(f"model.{name} must be ≤ {MAX_SIZE:,}, got {value:,}")
            setattr(self, name, value)
        if self.d_model % self.n_head:
            raise ConfigError(
                f"model.n_head ({self.n_head}) must divide model.d_model ({self.d_model})"
            )
        if self.n_head % self.n_kv_head:
            raise ConfigError(
                f"model.n_kv_head ({self.n_kv_head}) must divide model.n_head ({self.n_head})"
            )
        if self.pos not in ("learned", "rope"):
            raise ConfigError(f"model.pos must be 'learned' or 'rope', got {self.pos!r}")
        if self.norm not in ("layernorm", "rmsnorm"):
            raise ConfigError(f"model.norm must be 'layernorm' or 'rmsnorm', got {self.norm!r}")
        if self.mlp not in ("gelu", "swiglu", "relu2"):
            raise ConfigError(f"model.mlp must be 'gelu', 'swiglu' or 'relu2', got {self.mlp!r}")
        if self.pos == "rope" and self.head_dim % 2:
            raise ConfigError(f"model.pos = 'rope' needs an even head size, got {self.head_dim}")
        # Checked even where learned positions leave it unused: config.json stores it, and a model
        # saved with a NaN there could not be loaded again.
        self.rope_theta = require_finite_number("model.rope_theta", self.rope_theta, positive=True)
        if self.pos == "rope" and self.max_seq_len > MAX_ROPE_POSITIONS:
            raise ConfigError(
                f"model.max_seq_len must be ≤ {MAX_ROPE_POSITIONS:,} with pos = 'rope', got {self.max_seq_len:,} "
                "(its RoPE tables are made for every position)"
            )
        for name in ("qk_norm", "bias", "tie_embeddings"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"model.{name} must be true or false, got {getattr(self, name)!r}")
        if self.rope_scaling is not None:
            self._validate_rope_scaling()
        self.dropout = require_finite_number("model.dropout", self.dropout)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout must be in [0, 1), got {self.dropout}")
        if self.logit_softcap is not None:
            self.logit_softcap = require_finite_number("model.logit_softcap", self.logit_softcap, positive=True)
        self.init_std = require_finite_number("model.init_std", self.init_std, positive=True)
        self.norm_eps = require_finite_number("model.norm_eps", self.norm_eps, positive=True)

    def _validate_rope_scaling(self) -> None:
        scaling = self.rope_scaling
        if self.pos != "rope":
            raise ConfigError("model.rope_scaling needs model.pos = 'rope'")
        if not isinstance(scaling, dict) or set(scaling) != set(ROPE_SCALING_KEYS):
            raise ConfigError(f"model.rope_scaling needs exactly the keys {', '.join(ROPE_SCALING_KEYS)}")
        scaling = self.rope_scaling = {  # a copy, of Python floats: the caller's table stays theirs
            key: require_finite_number(f"model.rope_scaling.{key}", scaling[key], positive=True)
            for key in ROPE_SCALING_KEYS
        }
        if not scaling["original_max_len"].is_integer():  # a float, as every value above
            raise ConfigError(
                f"model.rope_scaling.original_max_len must be a whole number, got {scaling['original_max_len']!r}"
            )
        scaling["original_max_len"] = int(scaling["original_max_len"])  # a length, written as one
        if scaling["original_max_len"] > MAX_SIZE:  # torch would fail to make its tables
            raise ConfigError(f"model.rope_scaling.original_max_len must be ≤ {MAX_SIZE:,}, got {scaling['original_max_len']:,}")
        if scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
            raise ConfigError("model.rope_scaling.high_freq_factor must exceed low_freq_factor")

    def replace(self, **changes) -> ModelConfig:
        """A validated copy with some fields changed (e.g. `vocab_size` from a tokenizer). A width
        that was derived (`n_kv_head` = `n_head`, `d_ff` from `d_model` and `mlp`) is derived again
        from the new values unless given: `replace(n_head=8)` of an MHA config stays MHA."""
        derived = {
            "n_kv_head": self.n_kv_head == self.n_head,
            "d_ff": self.d_ff == default_d_ff(self.d_model, self.mlp),
        }
        for name, was_derived in derived.items():
            if was_derived and name not in changes:
                changes[name] = None  # __post_init__ derives it
        cfg = dataclasses.replace(self, **changes)
        cfg.validate()
        return cfg

    # --- sizes -------------------------------------------------------------------------------

    def num_params(self, non_embedding: bool = False) -> int:
        """Parameter count in closed form (equal to the module's count; tested).

        `non_embedding=True` leaves out the token and position embeddings and an untied output
        head, as in the scaling-law papers, so the number does not depend on tying.
        """
        d, L, hd = self.d_model, self.n_layer, self.head_dim
        b = 1 if self.bias else 0
        norm = d * (2 if self.norm == "layernorm" and self.bias else 1)
        qkv = d * (self.n_head + 2 * self.n_kv_head) * hd + b * (self.n_head + 2 * self.n_kv_head) * hd
        attn_out = self.n_head * hd * d + b * d
        qk_norm = 0
        if self.qk_norm:
            qk_norm = 2 * hd * (2 if self.norm == "layernorm" and self.bias else 1)
        n_in = 2 * self.d_ff if self.mlp == "swiglu" else self.d_ff
        mlp = d * n_in + b * n_in + self.d_ff * d + b * d
        per_layer = 2 * norm + qkv + attn_out + qk_norm + mlp
        body = L * per_layer + norm  # + the final norm
        if non_embedding:
            return body
        token_emb = self.vocab_size * d
        pos_emb = self.max_seq_len * d if self.pos == "learned" else 0
        head = 0 if self.tie_embeddings else self.vocab_size * d
        return body + token_emb + pos_emb + head

    def flops_per_token(self, seq_len: int | None = None) -> float:
        """Training FLOPs per token (forward + backward), PaLM appendix B: 6N + 12·L·H·Q·T.

        N counts the parameters that take part in matrix multiplies: the non-embedding ones
        plus the output head (an embedding lookup is free, the head's matmul is not). The
        second term is attention's score and weighted-sum matmuls over a context of T tokens
        (`seq_len`, default `max_seq_len`), with H·Q = n_head · head_dim.
        """
        T = self.max_seq_len if seq_len is None else seq_len
        n_matmul = self.num_params(non_embedding=True) + self.vocab_size * self.d_model
        return 6.0 * n_matmul + 12.0 * self.n_layer * self.n_head * self.head_dim * T

    def kv_cache_bytes(self, batch_size: int, seq_len: int, bytes_per_value: int = 2) -> int:
        """Memory for a KV cache of `seq_len` tokens: keys and values, every layer."""
        return 2 * self.n_layer * batch_size * self.n_kv_head * seq_len * self.head_dim * bytes_per_value


def default_d_ff(d_model: int, mlp: str) -> int:
    """4·d for GELU/ReLU² MLPs; for SwiGLU, 2/3 of that (same parameters), rounded up to 64."""
    if mlp == "swiglu":
        hidden = int(8 * d_model / 3)
        return 64 * ((hidden + 63) // 64)
    return 4 * d_model


def _gpt2(n_layer: int, n_head: int, d_model: int) -> ModelConfig:
    return ModelConfig(
        vocab_size=50257, n_layer=n_layer, n_head=n_head, d_model=d_model, d_ff=4 * d_model,
        max_seq_len=1024, pos="learned", norm="layernorm", mlp="gelu", bias=True,
        tie_embeddings=True,
    )


def _llama(
    n_layer: int, n_head: int, n_kv_head: int, d_model: int, d_ff: int, *, vocab_size: int = 32000,
    max_seq_len: int = 4096, rope_theta: float = 10000.0, tie: bool = False,
) -> ModelConfig:
    return ModelConfig(
        vocab_size=vocab_size, n_layer=n_layer, n_head=n_head, n_kv_head=n_kv_head, d_model=d_model,
        d_ff=d_ff, max_seq_len=max_seq_len, pos="rope", rope_theta=rope_theta, norm="rmsnorm",
        mlp="swiglu", bias=False, tie_embeddings=tie,
    )


# Named shapes. GPT-2 sizes are OpenAI's; llama-7b/13b/70b are Llama 2's published shapes and
# llama-1b is Llama 3.2 1B's (without its long-context RoPE rescaling). The small llama-* sizes
# are this project's Llama-style recipes for laptops and single GPUs.
PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=512, n_layer=2, n_head=4, n_kv_head=2, d_model=64, d_ff=192, max_seq_len=256,
    ),
    "gpt2-124m": _gpt2(12, 12, 768),
    "gpt2-medium": _gpt2(24, 16, 1024),
    "gpt2-large": _gpt2(36, 20, 1280),
    "gpt2-xl": _gpt2(48, 25, 1600),
    "llama-10m": _llama(6, 8, 4, 256, 704, vocab_size=8192, max_seq_len=1024, tie=True),
    "llama-60m": _llama(8, 8, 4, 512, 1408, vocab_size=32768, max_seq_len=1024, tie=True),
    "llama-125m": _llama(12, 12, 4, 768, 2048, vocab_size=32768, max_seq_len=2048, tie=True),
    "llama-350m": _llama(24, 16, 4, 1024, 2816, vocab_size=32768, max_seq_len=2048, tie=True),
    "llama-1b": _llama(
        16, 32, 8, 2048, 8192, vocab_size=128256, max_seq_len=8192, rope_theta=500000.0, tie=True
    ),
    "llama-7b": _llama(32, 32, 32, 4096, 11008),
    "llama-13b": _llama(40, 40, 40, 5120, 13824),
    "llama-70b": _llama(80, 64, 8, 8192, 28672),
}


def get_preset(name: str) -> ModelConfig:
    """A fresh copy of a named preset (callers may change it freely)."""
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; valid presets: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name])
