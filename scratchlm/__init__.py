"""scratchlm: build a GPT-style language model from scratch, every stage in readable PyTorch."""

__version__ = "0.1.0"
