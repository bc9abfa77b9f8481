"""ClearCLIP (ECCV 2024) as a Detectron2 plugin.

``import clearclip_d2`` registers the meta-architecture ``ClearCLIPSegmentor``, the backbone
``build_clearclip_backbone``, the image encoders of ``MODEL.CLEARCLIP.ENCODER`` and the
datasets; :func:`add_clearclip_config` adds the ``MODEL.CLEARCLIP`` keys.
"""

from .utils.dependencies import require_opencv

require_opencv()  # before Detectron2 imports cv2: one line naming the fix instead of its traceback

from . import data, engine, evaluation, modeling  # noqa: E402,F401  (registration on import)
from .config import add_clearclip_config  # noqa: E402
from .constants import __version__  # noqa: E402
from .utils.errors import ClearCLIPError  # noqa: E402

__all__ = ["ClearCLIPError", "add_clearclip_config"]
