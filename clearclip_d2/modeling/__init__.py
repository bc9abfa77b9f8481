from .clip_loading import build_clip_model
from .decomposition import ATTENTION_VARIANTS, decomposed_block_forward
from .dense_encoder import DenseCLIPEncoder
from .meta_arch import ClearCLIPSegmentor
from .slide_inference import logits_to_probabilities, slide_inference, slide_window_boxes
from .text_classifier import build_text_classifier

__all__ = [
    "ATTENTION_VARIANTS",
    "ClearCLIPSegmentor",
    "DenseCLIPEncoder",
    "build_clip_model",
    "build_text_classifier",
    "decomposed_block_forward",
    "logits_to_probabilities",
    "slide_inference",
    "slide_window_boxes",
]
