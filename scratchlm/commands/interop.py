"""`scratchlm export hf` and `scratchlm import hf`: Hugging Face transformers checkpoints."""

from __future__ import annotations

import argparse

from scratchlm.cli import add_config_args, add_dtype_arg, given_flags
from scratchlm.config import load_config


def register(root, groups) -> None:
    """Add `export hf` and `import hf`."""
    export = groups["export"].add_parser(
        "hf", help="write a model as a transformers checkpoint (GPT-2 or Llama family)"
    )
    export.add_argument("--model", help="scratchlm model directory (model.safetensors + config.json)")
    export.add_argument("--out", help="output directory for AutoModelForCausalLM.from_pretrained")
    add_dtype_arg(export, "weight dtype")
    add_config_args(export)
    export.set_defaults(func=run_export)

    imp = groups["import"].add_parser("hf", help="convert a transformers GPT-2/Llama checkpoint directory")
    imp.add_argument("source", nargs="?", help="transformers model directory (config.json + safetensors)")
    imp.add_argument("--out", help="output scratchlm model directory")
    add_dtype_arg(imp, "weight dtype")
    add_config_args(imp)
    imp.set_defaults(func=run_import)


def run_export(args: argparse.Namespace) -> int:
    from scratchlm.interop.hf import HFExportConfig, export_hf

    cfg = load_config(HFExportConfig, args.config, args.overrides, given_flags(model=args.model, out=args.out, dtype=args.dtype))
    out = export_hf(cfg.model, cfg.out, cfg.dtype)
    print(f"wrote a transformers checkpoint to {out}")
    return 0


def run_import(args: argparse.Namespace) -> int:
    from scratchlm.interop.hf import HFImportConfig, import_hf

    cfg = load_config(HFImportConfig, args.config, args.overrides, given_flags(source=args.source, out=args.out, dtype=args.dtype))
    out = import_hf(cfg.source, cfg.out, cfg.dtype)
    print(f"wrote a scratchlm model to {out}")
    return 0
