"""``ENCODER decomposed``: CLIP's ViT with its last block decomposed (ClearCLIP, and every
method that changes only that block: CLIP, MaskCLIP, SCLIP, NACLIP; see
:mod:`..decomposition`)."""

from torch import nn

from ..clip.dense_encoder import DenseCLIPEncoder
from .build import ENCODER_REGISTRY


@ENCODER_REGISTRY.register()
def decomposed(cfg, clip_model: nn.Module) -> DenseCLIPEncoder:
    """:class:`DenseCLIPEncoder` with ``ATTENTION``, ``RESIDUAL``, ``FFN`` of ``MODEL.CLEARCLIP``."""
    return DenseCLIPEncoder.from_config(clip_model.visual, cfg)
