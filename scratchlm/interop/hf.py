"""Move weights between scratchlm model directories and Hugging Face `transformers` checkpoints.

Two families map one-to-one onto `ModelConfig`:
- GPT-2 (`GPT2LMHeadModel`): learned positions, LayerNorm, tanh-GELU MLP, biases. Its Conv1D
  layers store weights as (in, out), the transpose of `nn.Linear`.
- Llama (`LlamaForCausalLM`): RoPE in the rotate-half layout, RMSNorm, SwiGLU, grouped-query
  attention, no biases. Separate q/k/v and gate/up matrices are stacked into scratchlm's fused
  `qkv` and `fc` matrices (and split again on export).

Dropout, which changes training only, maps to scratchlm's one `dropout` rate: GPT-2's residual
rate `resid_pdrop` (its embedding and attention rates are the same in every released checkpoint;
export writes all three), and Llama's `attention_dropout` (Llama has no other; scratchlm's rate
also drops the residual branches and the embeddings).

Only config.json and safetensors files are read or written, so neither direction needs
`transformers` installed, and nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from scratchlm.device import WEIGHT_DTYPES, WeightDtype
from scratchlm.errors import ConfigError, ModelError, TokenizerError
from scratchlm.fsutil import is_json_int, read_json_object
from scratchlm.model.config import ROPE_SCALING_KEYS, ModelConfig
from scratchlm.model.gpt import GPT
from scratchlm.model.io import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    WEIGHTS_INDEX_FILE,
    build_from_tensors,
    check_model_output,
    check_weight,
    expected_shapes,
    load_model_config,
    model_directory,
    read_weights,
    resolve_model_dir,
    save_model,
    write_weights,
)
from scratchlm.tokenizer.tokenizer import CHAT_TEMPLATE_FILE, EOT, TOKENIZER_FILE, Tokenizer

GPT2_VOCAB, GPT2_MERGES = "vocab.json", "merges.txt"  # a slow GPT-2 tokenizer's files
GENERATION_CONFIG = "generation_config.json"  # bos/eos ids for generation, carried along or made on import
# Tokenizer (and generation) files carried along in both directions when present.
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    GPT2_VOCAB,
    GPT2_MERGES,
    "tokenizer.model",
    "added_tokens.json",
    CHAT_TEMPLATE_FILE,
    "chat_template.json",
    GENERATION_CONFIG,
)

HEAD = "lm_head.weight"  # the output head's name in both families and in ours
Tensors = dict[str, torch.Tensor]


@dataclass
class HFExportConfig:
    """`scratchlm export hf`: a scratchlm model directory → a transformers directory."""

    model: str = ""
    out: str = ""
    dtype: WeightDtype = "auto"

    def validate(self) -> None:
        if not self.model or not self.out:
            raise ConfigError("export hf needs both a model directory (--model) and an output directory (--out)")


@dataclass
class HFImportConfig:
    """`scratchlm import hf`: a transformers directory → a scratchlm model directory."""

    source: str = ""
    out: str = ""
    dtype: WeightDtype = "auto"

    def validate(self) -> None:
        if not self.source or not self.out:
            raise ConfigError("import hf needs a source directory and an output directory (--out)")


# --- GPT-2 --------------------------------------------------------------------------------------

GPT2_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh")
# Our field → the config.json key it comes from, so an error names the key the user can see.
GPT2_KEYS = {
    "vocab_size": "vocab_size", "n_layer": "n_layer", "n_head": "n_head", "d_model": "n_embd", "d_ff": "n_inner",
    "max_seq_len": "n_positions", "norm_eps": "layer_norm_epsilon", "tie_embeddings": "tie_word_embeddings",
    "init_std": "initializer_range", "dropout": "resid_pdrop",
}


def gpt2_config_to_ours(hf: Mapping[str, Any]) -> ModelConfig:
    act = hf.get("activation_function", "gelu_new")
    if act not in GPT2_TANH_GELUS:
        raise ModelError(f"GPT-2 activation_function {act!r} is not supported (only {', '.join(GPT2_TANH_GELUS)})")
    if hf.get("scale_attn_by_inverse_layer_idx", False) or not hf.get("scale_attn_weights", True):
        raise ModelError("GPT-2 checkpoints with non-standard attention scaling are not supported")
    if hf.get("add_cross_attention", False):
        raise ModelError("GPT-2 checkpoints with cross-attention are not supported")
    return _checked(
        GPT2_KEYS, vocab_size=hf["vocab_size"], n_layer=hf["n_layer"], n_head=hf["n_head"], n_kv_head=hf["n_head"],
        d_model=hf["n_embd"], d_ff=hf.get("n_inner"), max_seq_len=hf["n_positions"], pos="learned",
        norm="layernorm", norm_eps=hf.get("layer_norm_epsilon", 1e-5), mlp="gelu", bias=True,
        tie_embeddings=hf.get("tie_word_embeddings", True), init_std=hf.get("initializer_range", 0.02),
        dropout=hf.get("resid_pdrop", 0.1),
    )


def gpt2_config_from_ours(cfg: ModelConfig) -> dict[str, Any]:
    _require(cfg, "GPT-2", pos="learned", norm="layernorm", mlp="gelu", bias=True, qk_norm=False,
             logit_softcap=None, n_kv_head=cfg.n_head)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_positions": cfg.max_seq_len, "n_embd": cfg.d_model,
        "n_layer": cfg.n_layer, "n_head": cfg.n_head, "n_inner": cfg.d_ff,
        "activation_function": "gelu_new", "layer_norm_epsilon": cfg.norm_eps,
        "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout, "attn_pdrop": cfg.dropout,
        "initializer_range": cfg.init_std, "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
    }


def gpt2_names(cfg: ModelConfig) -> list[tuple[str, str, bool]]:
    """(our name, HF name, transposed?) for every tensor; Conv1D weights are transposed."""
    names = [("tok_emb.weight", "transformer.wte.weight", False), ("pos_emb.weight", "transformer.wpe.weight", False)]
    for i in range(cfg.n_layer):
        ours, hf = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in [("norm1", "ln_1"), ("norm2", "ln_2")]:
            names += [(f"{ours}{a}.weight", f"{hf}{b}.weight", False), (f"{ours}{a}.bias", f"{hf}{b}.bias", False)]
        for a, b in [("attn.qkv", "attn.c_attn"), ("attn.proj", "attn.c_proj"), ("mlp.fc", "mlp.c_fc"),
                     ("mlp.proj", "mlp.c_proj")]:
            names += [(f"{ours}{a}.weight", f"{hf}{b}.weight", True), (f"{ours}{a}.bias", f"{hf}{b}.bias", False)]
    names += [("norm_f.weight", "transformer.ln_f.weight", False), ("norm_f.bias", "transformer.ln_f.bias", False)]
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight", False))
    return names


# Non-parameter buffers some GPT-2 checkpoints carry: the causal mask and its fill value.
GPT2_BUFFERS = (".attn.bias", ".attn.masked_bias")


def gpt2_tensors_to_ours(cfg: ModelConfig, hf: Mapping[str, torch.Tensor], source: str) -> Tensors:
    # openai-community/gpt2 stores its tensors without the "transformer." prefix: the names looked
    # for follow the file's own convention, so that an error names a tensor the file holds.
    prefixed = any(key.startswith("transformer.") for key in hf)
    names = [
        (ours, name if prefixed else name.removeprefix("transformer."), transpose)
        for ours, name, transpose in gpt2_names(cfg)
    ]
    reject_unmapped(hf, {name for _, name, _ in names}, GPT2_BUFFERS, source)
    shapes = our_shapes(cfg)  # Conv1D stores the transpose of ours
    return {
        ours: _take(hf, name, source, shape=shapes[ours][::-1] if t else shapes[ours], transpose=t)
        for ours, name, t in names
    }


def gpt2_tensors_from_ours(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> Tensors:
    return {name: _take(ours, o, "scratchlm model", transpose=t) for o, name, t in gpt2_names(cfg)}


# --- Llama --------------------------------------------------------------------------------------

HF_ROPE_KEYS = {"original_max_len": "original_max_position_embeddings"}  # ours → transformers
LLAMA_KEYS = {
    "vocab_size": "vocab_size", "n_layer": "num_hidden_layers", "n_head": "num_attention_heads",
    "n_kv_head": "num_key_value_heads", "d_model": "hidden_size", "d_ff": "intermediate_size",
    "max_seq_len": "max_position_embeddings", "rope_theta": "rope_theta", "rope_scaling": "rope_parameters",
    "norm_eps": "rms_norm_eps", "tie_embeddings": "tie_word_embeddings", "init_std": "initializer_range",
    "dropout": "attention_dropout",
}


def llama_config_to_ours(hf: Mapping[str, Any]) -> ModelConfig:
    if hf.get("hidden_act", "silu") != "silu":
        raise ModelError(f"Llama hidden_act {hf['hidden_act']!r} is not supported (only 'silu')")
    rope = llama_rope_parameters(hf)
    if bool(hf.get("attention_bias", False)) != bool(hf.get("mlp_bias", False)):
        raise ModelError("Llama checkpoints with biases in attention but not the MLP (or vice versa) are not supported")
    n_head = hf["num_attention_heads"]
    cfg = _checked(
        LLAMA_KEYS, vocab_size=hf["vocab_size"], n_layer=hf["num_hidden_layers"], n_head=n_head,
        n_kv_head=hf.get("num_key_value_heads") or n_head, d_model=hf["hidden_size"], d_ff=hf["intermediate_size"],
        max_seq_len=hf["max_position_embeddings"], pos="rope",
        rope_theta=rope.get("rope_theta", hf.get("rope_theta", 10000.0)), rope_scaling=llama3_scaling(rope),
        norm="rmsnorm", norm_eps=hf.get("rms_norm_eps", 1e-6), mlp="swiglu", bias=bool(hf.get("attention_bias", False)),
        tie_embeddings=hf.get("tie_word_embeddings", False), init_std=hf.get("initializer_range", 0.02),
        dropout=hf.get("attention_dropout", 0.0),
    )
    if hf.get("head_dim") not in (None, cfg.head_dim):
        raise ModelError(f"Llama head_dim {hf['head_dim']!r} ≠ hidden_size / num_attention_heads is not supported")
    return cfg


_ROPE_KEY_ALIASES = {"type": "rope_type"}  # the name early transformers versions wrote


def llama_rope_parameters(hf: Mapping[str, Any]) -> dict[str, Any]:
    """The RoPE settings of a Llama config, refusing those that would rotate differently from ours."""
    # transformers ≥ 5 writes rope_parameters; 4.x wrote rope_theta and rope_scaling (with "type"
    # in early versions). A config with both tables is read only where they agree: which one a
    # given transformers version obeys differs, so a clash has no one right reading.
    scaling, parameters = ({_ROPE_KEY_ALIASES.get(k, k): v for k, v in _table(hf, key).items()}
                           for key in ("rope_scaling", "rope_parameters"))
    clashes = sorted(key for key in scaling.keys() & parameters.keys() if scaling[key] != parameters[key])
    if clashes:
        raise ModelError(
            f"rope_scaling and rope_parameters disagree on {', '.join(clashes)}: "
            f"{ {k: scaling[k] for k in clashes} } vs { {k: parameters[k] for k in clashes} }; keep one of the two tables"
        )
    rope = {**scaling, **parameters}
    rope_type = rope.get("rope_type") or "default"
    if rope_type not in ("default", "llama3"):
        raise ModelError(f"Llama RoPE scaling {rope_type!r} is not supported (only none or 'llama3')")
    partial = rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial != 1.0:
        raise ModelError(f"Llama partial_rotary_factor {partial!r} is not supported (only 1.0: every dimension rotates)")
    return {**rope, "rope_type": rope_type}


def llama3_scaling(rope: Mapping[str, Any]) -> dict[str, Any] | None:
    """Our `rope_scaling` table from 'llama3' RoPE parameters (values checked by ModelConfig)."""
    if rope["rope_type"] != "llama3":
        return None
    try:
        return {key: rope[HF_ROPE_KEYS.get(key, key)] for key in ROPE_SCALING_KEYS}
    except KeyError as e:
        raise ModelError(f"Llama 'llama3' RoPE scaling lacks the key {e}") from None


def llama3_scaling_to_hf(scaling: Mapping[str, Any]) -> dict[str, Any]:
    """transformers' names and types: factors are floats, original_max_position_embeddings an int."""
    return {
        HF_ROPE_KEYS.get(key, key): int(value) if key == "original_max_len" else float(value)
        for key, value in scaling.items()
    }


def llama_config_from_ours(cfg: ModelConfig) -> dict[str, Any]:
    _require(cfg, "Llama", pos="rope", norm="rmsnorm", mlp="swiglu", qk_norm=False, logit_softcap=None)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    if cfg.rope_scaling:
        rope.update(rope_type="llama3", **llama3_scaling_to_hf(cfg.rope_scaling))
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head,
        "num_key_value_heads": cfg.n_kv_head, "head_dim": cfg.head_dim, "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
        # transformers ≥ 5 reads rope_parameters; 4.x reads rope_theta.
        "rope_theta": cfg.rope_theta, "rope_parameters": rope,
        "rope_scaling": {k: v for k, v in rope.items() if k != "rope_theta"} if cfg.rope_scaling else None,
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": cfg.dropout,
        "initializer_range": cfg.init_std, "tie_word_embeddings": cfg.tie_embeddings, "use_cache": True,
    }


def llama_layer_parts(cfg: ModelConfig, i: int) -> dict[str, list[tuple[str, int]]]:
    """Our fused tensors of layer i and the HF tensors stacked (along dim 0) to make each."""
    hd, p = cfg.head_dim, f"model.layers.{i}."
    q, kv = cfg.n_head * hd, cfg.n_kv_head * hd
    parts = {
        "norm1.weight": [(f"{p}input_layernorm.weight", cfg.d_model)],
        "norm2.weight": [(f"{p}post_attention_layernorm.weight", cfg.d_model)],
        "attn.qkv.weight": [(f"{p}self_attn.q_proj.weight", q), (f"{p}self_attn.k_proj.weight", kv),
                            (f"{p}self_attn.v_proj.weight", kv)],
        "attn.proj.weight": [(f"{p}self_attn.o_proj.weight", cfg.d_model)],
        "mlp.fc.weight": [(f"{p}mlp.gate_proj.weight", cfg.d_ff), (f"{p}mlp.up_proj.weight", cfg.d_ff)],
        "mlp.proj.weight": [(f"{p}mlp.down_proj.weight", cfg.d_model)],
    }
    if cfg.bias:
        for name in ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"):
            parts[f"{name}.bias"] = [(hf.replace(".weight", ".bias"), n) for hf, n in parts[f"{name}.weight"]]
    return {f"blocks.{i}.{k}": v for k, v in parts.items()}


def llama_top_level(cfg: ModelConfig) -> list[tuple[str, str]]:
    names = [("tok_emb.weight", "model.embed_tokens.weight"), ("norm_f.weight", "model.norm.weight")]
    if not cfg.tie_embeddings:
        names.append(("lm_head.weight", "lm_head.weight"))
    return names


# Non-parameter buffers older Llama checkpoints carry: the RoPE frequencies (recomputed here).
LLAMA_BUFFERS = (".rotary_emb.inv_freq",)


def llama_tensors_to_ours(cfg: ModelConfig, hf: Mapping[str, torch.Tensor], source: str) -> Tensors:
    top_level = llama_top_level(cfg)
    layers = [llama_layer_parts(cfg, i) for i in range(cfg.n_layer)]
    mapped = {name for _, name in top_level} | {name for layer in layers for parts in layer.values() for name, _ in parts}
    reject_unmapped(hf, mapped, LLAMA_BUFFERS, source)
    shapes = our_shapes(cfg)
    out = {ours: _take(hf, name, source, shape=shapes[ours]) for ours, name in top_level}
    for layer in layers:
        for ours, parts in layer.items():  # each part: its rows of our stacked tensor
            out[ours] = torch.cat(
                [_take(hf, name, source, shape=(rows, *shapes[ours][1:])) for name, rows in parts], dim=0
            )
    return out


def llama_tensors_from_ours(cfg: ModelConfig, ours: Mapping[str, torch.Tensor]) -> Tensors:
    out = {name: _take(ours, o, "scratchlm model") for o, name in llama_top_level(cfg)}
    for i in range(cfg.n_layer):
        for fused, parts in llama_layer_parts(cfg, i).items():
            pieces = _take(ours, fused, "scratchlm model").split([n for _, n in parts], dim=0)
            out.update({name: piece for (name, _), piece in zip(parts, pieces)})
    return out


# --- shared helpers -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Family:
    config_to_ours: Callable[[Mapping[str, Any]], ModelConfig]
    config_from_ours: Callable[[ModelConfig], dict[str, Any]]
    tensors_to_ours: Callable[[ModelConfig, Mapping[str, torch.Tensor], str], Tensors]
    tensors_from_ours: Callable[[ModelConfig, Mapping[str, torch.Tensor]], Tensors]


FAMILIES = {
    "gpt2": Family(gpt2_config_to_ours, gpt2_config_from_ours, gpt2_tensors_to_ours, gpt2_tensors_from_ours),
    "llama": Family(llama_config_to_ours, llama_config_from_ours, llama_tensors_to_ours, llama_tensors_from_ours),
}


def _checked(hf_keys: Mapping[str, str], **fields: Any) -> ModelConfig:
    """A validated ModelConfig; its errors name config.json's keys (`hf_keys`: ours → theirs)."""
    try:
        cfg = ModelConfig(**fields)
        cfg.validate()
    except (ConfigError, TypeError) as e:
        message = re.sub(r"model\.(\w+)", lambda m: hf_keys.get(m[1], m[0]), str(e))
        raise ModelError(message) from None
    return cfg


def _table(hf: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = hf.get(key) or {}
    if not isinstance(value, Mapping):
        raise ModelError(f"'{key}' must be a table, got {value!r}")
    return value


def _require(cfg: ModelConfig, family: str, **wanted: Any) -> None:
    for name, value in wanted.items():
        if getattr(cfg, name) != value:
            raise ModelError(
                f"cannot export to {family}: it needs model.{name} = {value!r}, this model has {getattr(cfg, name)!r}"
            )


def reject_unmapped(
    hf: Mapping[str, torch.Tensor], mapped: set[str], buffers: tuple[str, ...], source: str
) -> None:
    """A tensor the config does not account for means config.json and weights disagree (a layer
    count, a bias flag); converting anyway would silently drop trained weights.

    A tied output head stored anyway (`lm_head.weight`) passes here: `tensors_from_hf` hands it
    on, and loading accepts it only if it equals the embedding.
    """
    for name in sorted(hf):
        if name not in mapped and name != HEAD and not name.endswith(buffers):
            raise ModelError(f"{source}: unexpected tensor '{name}' (its config.json has no place for it)")


def _take(
    tensors: Mapping[str, torch.Tensor],
    name: str,
    source: str,
    *,
    shape: tuple[int, ...] | None = None,
    transpose: bool = False,
) -> torch.Tensor:
    """Tensor `name`, transposed if asked; when `shape` is given, checked first for that shape and
    a weight dtype, so a malformed checkpoint is one error naming its tensor, not a torch error
    from the transposition or stacking."""
    if name not in tensors:
        raise ModelError(f"{source}: missing tensor '{name}'")
    t = tensors[name]
    if shape is not None:
        check_weight(t, name, shape, source)
    return t.t().contiguous() if transpose else t


def our_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The shape of each of our parameters for `cfg` (a model on the meta device: nothing allocated)."""
    with torch.device("meta"):
        return expected_shapes(GPT(cfg))


def family_of(cfg: ModelConfig) -> str:
    """The Hugging Face family a config exports to: GPT-2 for learned positions, else Llama."""
    return "gpt2" if cfg.pos == "learned" else "llama"


def _cast(tensors: Tensors, dtype: WeightDtype) -> Tensors:
    """`tensors` in `dtype`, refusing a weight the dtype cannot hold: a value beyond its range
    becomes infinity, and the written model would give NaN logits."""
    if dtype == "auto":
        return tensors
    out = {}
    for name, tensor in tensors.items():
        cast = tensor.to(WEIGHT_DTYPES[dtype])
        if cast.dtype != tensor.dtype and not torch.isfinite(cast).all() and torch.isfinite(tensor).all():
            raise ModelError(f"tensor '{name}' has values beyond {dtype}'s range; choose a wider --dtype")
        out[name] = cast
    return out


# --- in-memory conversion -----------------------------------------------------------------------


def config_from_hf(hf_config: Mapping[str, Any], where: str = "Hugging Face config") -> ModelConfig:
    """The `ModelConfig` equivalent to a transformers config dict (GPT-2 or Llama); errors start with `where`."""
    kind = hf_config.get("model_type")
    if not isinstance(kind, str) or kind not in FAMILIES:
        raise ModelError(f"{where}: unsupported Hugging Face model_type {kind!r}; supported: {', '.join(FAMILIES)}")
    try:
        return FAMILIES[kind].config_to_ours(hf_config)
    except KeyError as e:
        raise ModelError(f"{where}: the {kind} config lacks the key {e}") from None
    except ModelError as e:
        raise ModelError(f"{where}: {e}") from None


def tensors_from_hf(
    cfg: ModelConfig, hf_config: Mapping[str, Any], hf_tensors: Mapping[str, torch.Tensor], source: str = "checkpoint"
) -> Tensors:
    """scratchlm-named tensors from a transformers state dict of the family in `hf_config`."""
    out = FAMILIES[hf_config["model_type"]].tensors_to_ours(cfg, hf_tensors, source)
    if cfg.tie_embeddings and HEAD in hf_tensors:
        out[HEAD] = hf_tensors[HEAD]  # loading refuses it unless it equals the embedding
    return out


def hf_from_ours(cfg: ModelConfig, tensors: Mapping[str, torch.Tensor]) -> tuple[dict[str, Any], Tensors]:
    """(config.json dict, transformers-named tensors) for a scratchlm model's tensors."""
    family = FAMILIES[family_of(cfg)]
    hf_config = family.config_from_ours(cfg)
    out = family.tensors_from_ours(cfg, tensors)
    hf_config["dtype"] = hf_config["torch_dtype"] = str(next(iter(out.values())).dtype).removeprefix("torch.")
    return hf_config, out


# --- reading a transformers directory -----------------------------------------------------------


def read_hf_config(directory: Path) -> dict[str, Any]:
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise ModelError(f"not a Hugging Face model directory (no {CONFIG_FILE}): {directory}")
    data = read_json_object(path, ModelError)
    if "model_type" not in data:
        raise ModelError(f"{path}: not a Hugging Face config (no model_type)")
    return data


def read_hf_tensors(directory: Path) -> Tensors:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    single = directory / WEIGHTS_FILE
    index = directory / WEIGHTS_INDEX_FILE
    if single.is_file():
        return read_weights(single)
    if index.is_file():
        tensors: Tensors = {}
        held_by: dict[str, str] = {}  # tensor → the shard it came from
        for shard in shard_names(index):
            for name, tensor in read_weights(directory / shard).items():
                if name in held_by:  # which copy a loader takes is arbitrary: refused, not guessed
                    raise ModelError(f"{index}: tensor '{name}' is in both {held_by[name]} and {shard}")
                tensors[name], held_by[name] = tensor, shard
        return tensors
    if any(directory.glob("*.bin")) or any(directory.glob("*.pt")):
        raise ModelError(
            f"{directory} has only pickle weights (.bin/.pt); scratchlm loads safetensors only "
            "(convert them with transformers' save_pretrained(..., safe_serialization=True))"
        )
    raise ModelError(f"no {WEIGHTS_FILE} (or sharded index) in {directory}")


def shard_names(index: Path) -> list[str]:
    """The shard files a `model.safetensors.index.json` names (files beside it, nothing else)."""
    weight_map = read_json_object(index, ModelError).get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index}: not a valid safetensors index ('weight_map' must map tensor names to files)")
    for shard in weight_map.values():
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ModelError(f"{index}: 'weight_map' names {shard!r}, not a file name in the same directory")
    return sorted(set(weight_map.values()))


def copy_tokenizer_files(source: Path, target: Path) -> list[str]:
    copied = []
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copyfile(source / name, target / name)
            copied.append(name)
    return copied


def generation_ids(model_dir: Path) -> tuple[int | None, int | list[int] | None]:
    """(bos, eos) for an exported config.json: the ids `scratchlm generate` starts a text after and
    stops at (`infer/text.py`'s rules), so transformers' `generate` stops where scratchlm does.
    A tokenizer.json that is not JSON is refused here, before anything is written; one scratchlm
    cannot read (another kind of tokenizer, carried along on import) gives `<|endoftext|>`'s id
    if it lists one."""
    from scratchlm.infer.text import eos_ids, start_id  # here: infer.text imports this module

    path = model_dir / TOKENIZER_FILE
    if not path.is_file():
        return None, None
    try:
        tokenizer = Tokenizer.load(model_dir)
    except TokenizerError:
        doc = read_json_object(path, ModelError)  # not JSON at all: damaged, refused
        added = doc.get("added_tokens") if isinstance(doc.get("added_tokens"), list) else []
        eot = next((t.get("id") for t in added if isinstance(t, dict) and t.get("content") == EOT), None)
        return (eot, eot) if is_json_int(eot) else (None, None)
    stops = eos_ids(model_dir, model_dir, tokenizer)
    return start_id(model_dir, model_dir, tokenizer), (stops[0] if len(stops) == 1 else stops or None)


def check_carried_tokenizer(source: Path) -> None:
    """Refuse to carry a tokenizer.json that scratchlm would read but split text differently from
    Hugging Face (`Tokenizer.from_hf`'s checks, as `tokenizer import --hf` runs them): generation
    would feed the model ids it was not trained on. One scratchlm cannot read at all is carried
    for the way back; `generate` then says why it cannot use it."""
    if not (source / TOKENIZER_FILE).is_file():
        return
    try:
        Tokenizer.load(source)
    except TokenizerError:
        return
    Tokenizer.from_hf(source / TOKENIZER_FILE)


def gpt2_tokenizer_json(source: Path) -> bytes | None:
    """A tokenizer.json made from GPT-2's `vocab.json` + `merges.txt`, for a checkpoint saved with
    only those (transformers' slow tokenizer), so that `generate` can use the imported model as it
    is. None where they are absent, where `added_tokens.json` adds ids they do not hold, or where
    scratchlm cannot read them: the files are carried as they are either way."""
    vocab, merges = source / GPT2_VOCAB, source / GPT2_MERGES
    if not (vocab.is_file() and merges.is_file()) or (source / "added_tokens.json").exists():
        return None
    try:
        return Tokenizer.from_gpt2(vocab, merges).to_hf_json()
    except TokenizerError:
        return None


# --- the two commands ---------------------------------------------------------------------------


def import_hf(source: str | os.PathLike, out: str | os.PathLike, dtype: WeightDtype = "auto") -> Path:
    """Convert a transformers GPT-2/Llama directory into a scratchlm model directory."""
    source = Path(source)
    check_model_output(out, inputs=[source], carried=TOKENIZER_FILES)
    hf_config = read_hf_config(source)
    cfg = config_from_hf(hf_config, str(source / CONFIG_FILE))
    tensors = _cast(tensors_from_hf(cfg, hf_config, read_hf_tensors(source), str(source)), dtype)
    model = build_from_tensors(cfg, tensors, str(source))  # checks every name and shape
    check_carried_tokenizer(source)
    extra: dict[str, Path | bytes] = {name: source / name for name in TOKENIZER_FILES if (source / name).is_file()}
    if TOKENIZER_FILE not in extra and hf_config.get("model_type") == "gpt2":
        converted = gpt2_tokenizer_json(source)
        if converted is not None:
            extra[TOKENIZER_FILE] = converted
    if GENERATION_CONFIG not in extra:  # transformers then takes these ids from config.json, which is replaced
        kept = {key: hf_config[key] for key in ("bos_token_id", "eos_token_id") if hf_config.get(key) is not None}
        if kept:
            extra[GENERATION_CONFIG] = (json.dumps(kept, indent=2) + "\n").encode()
    return save_model(model, out, extra_files=extra, inputs=[source], carried=TOKENIZER_FILES)


def export_hf(model_dir: str | os.PathLike, out: str | os.PathLike, dtype: WeightDtype = "auto") -> Path:
    """Convert a scratchlm model directory into one `AutoModelForCausalLM.from_pretrained` loads."""
    model_dir = resolve_model_dir(model_dir)
    check_model_output(out, inputs=[model_dir], carried=TOKENIZER_FILES)
    cfg = load_model_config(model_dir)
    ours = read_weights(model_dir / WEIGHTS_FILE)
    build_from_tensors(cfg, ours, str(model_dir / WEIGHTS_FILE))  # checks every name and shape
    hf_config, tensors = hf_from_ours(cfg, _cast(ours, dtype))
    bos, eos = generation_ids(model_dir)
    hf_config.update(bos_token_id=bos, eos_token_id=eos, pad_token_id=None)
    with model_directory(out, inputs=[model_dir], carried=TOKENIZER_FILES) as tmp:
        write_weights(tmp / WEIGHTS_FILE, {k: v.contiguous() for k, v in tensors.items()})
        (tmp / CONFIG_FILE).write_text(json.dumps(hf_config, indent=2) + "\n", encoding="utf-8")
        copy_tokenizer_files(model_dir, tmp)
    return Path(out)
