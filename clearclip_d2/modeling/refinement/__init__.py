"""Refinement of the per-class probabilities (MODEL.CLEARCLIP.REFINE)."""
