"""What the tools run: the predictor for single images (``predictor.py``), the demo (``demo.py``,
``visualizer.py``, ``video.py``), the trainer and run set-up (``trainer.py``, ``defaults.py``),
the speed benchmark (``benchmark.py``) and the paper's tables (``reproduce.py``)."""

from .predictor import ClearCLIPPredictor

__all__ = ["ClearCLIPPredictor"]
