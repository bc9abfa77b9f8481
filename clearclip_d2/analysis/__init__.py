"""The ClearCLIP paper's analysis of CLIP's features (``tools/analyze_features.py``)."""
