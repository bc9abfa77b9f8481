"""The model: :class:`ClearCLIPSegmentor` (``meta_arch.py``) and :class:`ClearCLIPBackbone`
(``backbone.py``), both registered with Detectron2 on import; the method core on open_clip
(``clip/``), the windowed and class-chunked inference (``inference/``), the image encoders of
the training-free family (``methods/``, ``MODEL.CLEARCLIP.ENCODER``) and the refinements
(``refinement/``)."""

from .backbone import ClearCLIPBackbone, build_clearclip_backbone
from .clip.decomposition import ATTENTION_VARIANTS, decomposed_block_forward
from .clip.dense_encoder import DenseCLIPEncoder
from .clip.loading import build_clip_model
from .clip.text_classifier import build_text_classifier
from .inference.slide_inference import logits_to_probabilities, slide_window_boxes
from .meta_arch import ClearCLIPSegmentor
from .methods import ENCODER_REGISTRY, build_dense_encoder
from .refinement.masks import assign_pixels_to_masks, average_in_regions, refine_with_masks
from .refinement.pamr import pamr

__all__ = [
    "ATTENTION_VARIANTS",
    "ClearCLIPBackbone",
    "ClearCLIPSegmentor",
    "DenseCLIPEncoder",
    "ENCODER_REGISTRY",
    "assign_pixels_to_masks",
    "average_in_regions",
    "build_clearclip_backbone",
    "build_clip_model",
    "build_dense_encoder",
    "build_text_classifier",
    "decomposed_block_forward",
    "logits_to_probabilities",
    "pamr",
    "refine_with_masks",
    "slide_window_boxes",
]
