"""The registry of image encoders (``MODEL.CLEARCLIP.ENCODER``) and its builder; the
encoder contract is in :mod:`clearclip_d2.modeling.methods`."""


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

