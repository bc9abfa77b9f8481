from .backbone import ClearCLIPBackbone, build_clearclip_backbone
from .clip.loading import build_clip_model
from .clip.decomposition import ATTENTION_VARIANTS, decomposed_block_forward
from .clip.dense_encoder import DenseCLIPEncoder
from .meta_arch import ClearCLIPSegmentor
from .refinement.masks import assign_pixels_to_masks, average_in_regions, refine_with_masks
from .refinement.pamr import pamr
from .inference.slide_inference import logits_to_probabilities, slide_window_boxes
from .clip.text_classifier import build_text_classifier

__all__ = [
    "ATTENTION_VARIANTS",
    "ClearCLIPBackbone",
    "ClearCLIPSegmentor",
    "DenseCLIPEncoder",
    "assign_pixels_to_masks",
    "average_in_regions",
    "build_clearclip_backbone",
    "build_clip_model",
    "build_text_classifier",
    "decomposed_block_forward",
    "logits_to_probabilities",
    "pamr",
    "refine_with_masks",
    "slide_window_boxes",
]
