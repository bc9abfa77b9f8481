"""ClearCLIP (ECCV 2024) as a Detectron2 plugin.

``import clearclip_d2`` registers the meta-architecture ``ClearCLIPSegmentor``, the backbone
``build_clearclip_backbone``, the image encoders of ``MODEL.CLEARCLIP.ENCODER`` and the
datasets; :func:`add_clearclip_config` adds the ``MODEL.CLEARCLIP`` keys.
"""

from . import data, engine, evaluation, modeling  # noqa: F401  (registration on import)
from .config import add_clearclip_config
from .constants import __version__
from .utils.errors import ClearCLIPError

__all__ = ["ClearCLIPError", "add_clearclip_config"]
