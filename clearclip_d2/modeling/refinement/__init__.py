"""Refinement of ClearCLIP's per-class probabilities (``MODEL.CLEARCLIP.REFINE``).

Two post-processings, applied to the probabilities at the output size (after the max over
synonyms, before the background threshold):

* ``pamr`` (:mod:`.pamr`): pixel-adaptive mask refinement; every pixel takes the average of
  its look-alike neighbours' probabilities;
* ``masks`` (:mod:`.masks`): class-agnostic masks of another Detectron2 model; ClearCLIP's
  probabilities are averaged inside each mask, pixels outside every mask keep their own.

This module only wires ``REFINE`` to them; :mod:`.pamr` and :mod:`.masks` do not import each
other nor this module.
"""

from ...checks import check_refine
from .masks import MaskModelRefiner, check_mask_model_config
from .pamr import PAMRRefiner


def build_refiner(cfg):
    """The refiner of ``MODEL.CLEARCLIP.REFINE``: None for ``none``, else a module called as
    ``refiner(probs [K, H, W], image uint8 [3, h, w]) -> [K, H, W]``."""
    refine = check_refine_config(cfg, deep=False)
    cc = cfg.MODEL.CLEARCLIP
    if refine == "pamr":
        return PAMRRefiner(cc.PAMR_ITERATIONS, cc.PAMR_DILATIONS)
    if refine == "masks":
        return MaskModelRefiner.from_clearclip_config(cfg)
    return None


def check_refine_config(cfg, deep: bool = True) -> str:
    """Check ``REFINE`` and its parameters (``deep``: also the mask model's config and weights,
    without building it); return the refinement's name."""
    cc = cfg.MODEL.CLEARCLIP
    refine = check_refine(cc.REFINE, cc.PAMR_ITERATIONS, cc.PAMR_DILATIONS)
    if deep:
        check_mask_model_config(cfg)
    return refine
