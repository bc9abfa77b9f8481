"""Inference helpers: a predictor for single images (see ``tools/demo.py``)."""

from .predictor import ClearCLIPPredictor

__all__ = ["ClearCLIPPredictor"]
