"""The image encoders of the training-free family (``MODEL.CLEARCLIP.ENCODER``).

A method of the family (ClearCLIP, SCLIP, NACLIP, ProxyCLIP, ...) is a preset
(``configs/methods/<method>.yaml``) of the shared pipeline of :class:`ClearCLIPSegmentor`
(resize, windows, text classifier, logit scale, refinement, thresholds) together with the
image encoder that gives its dense features. Methods that change only the last block of the
CLIP ViT use the ``decomposed`` encoder (the ``ATTENTION``/``RESIDUAL``/``FFN`` switches);
a method that changes more registers its own encoder here, in one module.

An encoder is an ``nn.Module`` with:

- ``patch_size`` (int): pixels per feature of its output grid;
- ``window_multiple`` (int): windows are zero-padded (``WINDOW_PADDING centred``) to a multiple
  of this, in pixels (the patch size, or a common multiple when a second backbone sees the
  window too);
- ``uses_text`` (bool): ``forward`` also takes ``text_embeddings`` [Q, D] (unit rows), for
  methods whose image features depend on a first segmentation;
- ``forward(images)`` (or ``forward(images, text_embeddings=...)``): CLIP-normalised images
  [B, 3, h, w] -> [B, (h // patch_size) * (w // patch_size), D] features in the joint
  image-text space (not normalised), patches in row-major order.
"""

from detectron2.utils.registry import Registry
from torch import nn

from ...checks import register_config_check
from ...utils.errors import ClearCLIPError

ENCODER_REGISTRY = Registry("CLEARCLIP_ENCODER")
ENCODER_REGISTRY.__doc__ = """Builders ``(cfg, clip_model) -> encoder`` of ``MODEL.CLEARCLIP.ENCODER``, each
registered under its function name (``@ENCODER_REGISTRY.register()`` on ``def proxyclip(cfg, clip_model)``)."""


def encoder_names():
    """Names registered in :data:`ENCODER_REGISTRY`, sorted."""
    return sorted(name for name, _ in ENCODER_REGISTRY)


def check_encoder_name(name: str) -> None:
    """Refuse an unknown ``MODEL.CLEARCLIP.ENCODER`` in one line."""
    if name not in ENCODER_REGISTRY:
        raise ClearCLIPError(f"unknown MODEL.CLEARCLIP.ENCODER {name!r}; valid values: {', '.join(encoder_names())}")


@register_config_check
def check_encoder_config(cfg) -> None:
    """``MODEL.CLEARCLIP.ENCODER`` names a registered encoder (run by ``check_clearclip_config``)."""
    check_encoder_name(cfg.MODEL.CLEARCLIP.ENCODER)


def build_dense_encoder(cfg, clip_model: nn.Module) -> nn.Module:
    """The image encoder named by ``MODEL.CLEARCLIP.ENCODER`` around ``clip_model``."""
    name = cfg.MODEL.CLEARCLIP.ENCODER
    check_encoder_name(name)
    return ENCODER_REGISTRY.get(name)(cfg, clip_model)


from . import decomposed  # noqa: E402,F401  (registers "decomposed")
