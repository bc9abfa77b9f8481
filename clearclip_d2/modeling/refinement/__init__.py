"""Refinement of ClearCLIP's per-class probabilities (``MODEL.CLEARCLIP.REFINE``).

Two post-processings at the output size; each refiner says what it refines in its class
attribute ``refines``, and the meta-architecture calls it there
(:func:`~..inference.slide_inference.logits_to_probabilities`):

* ``pamr`` (:mod:`.pamr`, ``refines = "logits"``): pixel-adaptive mask refinement of the cosine
  logits of every query, before the logit scale, the softmax and the synonym max (the
  placement of SCLIP's and NACLIP's authors); every pixel takes the average of its look-alike
  neighbours' values;
* ``masks`` (:mod:`.masks`, ``refines = "probabilities"``): class-agnostic masks of another
  Detectron2 model; the per-class probabilities (after the synonym max, before the area and
  background thresholds) are averaged inside each mask, pixels outside every mask keep their own.

An earlier version ran PAMR on the probabilities after the synonym max; that placement is
dropped: no method uses it, and on the logits PAMR is what the authors' numbers were made with.

This module only wires ``REFINE`` to them; :mod:`.pamr` and :mod:`.masks` do not import each
other nor this module.
"""

from ...checks import check_refine
from .masks import MaskModelRefiner, check_mask_model_config
from .pamr import PAMRRefiner


def build_refiner(cfg):
    """The refiner of ``MODEL.CLEARCLIP.REFINE``: None for ``none``, else a module called as
    ``refiner(values [C, H, W], image uint8 [3, h, w]) -> [C, H, W]`` on what its ``refines``
    attribute names ("logits" of the queries or "probabilities" of the classes)."""
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
