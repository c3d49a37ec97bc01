"""The GPT model: config and presets, the module itself, and the model directory format."""

from scratchlm.model.config import PRESETS, ModelConfig, get_preset
from scratchlm.model.gpt import GPT, KVCache
from scratchlm.model.io import load_model, load_model_config, save_model, write_model_files

__all__ = [
    "GPT",
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "get_preset",
    "load_model",
    "load_model_config",
    "save_model",
    "write_model_files",
]
