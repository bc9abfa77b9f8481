"""The ClearCLIP paper's analysis of CLIP's features (``tools/analyze_features.py``): the last
blocks decomposed into residual and attention parts and their statistics (``features.py``),
the figures and CSV files (``plots.py``) and the whole run (``run.py``). Not imported by
``import clearclip_d2``."""

from .features import BlockDecomposition, FeatureStatistics, decompose_blocks
from .run import run_analysis

__all__ = ["BlockDecomposition", "FeatureStatistics", "decompose_blocks", "run_analysis"]
