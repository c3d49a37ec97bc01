"""Bridges to other ecosystems' checkpoint formats."""
