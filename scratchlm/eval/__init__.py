"""Evaluation: validation loss and bits per byte."""
