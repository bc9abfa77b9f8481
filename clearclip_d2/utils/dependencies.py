"""Dependencies that clearclip_d2 needs but leaves out of ``install_requires``.

OpenCV is published as several distributions that all install the same ``cv2`` folder
(``opencv-python``, ``opencv-python-headless``, the ``-contrib`` ones); requiring one of them
would install it over the user's. Detectron2 leaves OpenCV out of its requirements for the same
reason, and so does ``setup.py``: :func:`require_opencv` says what to install when none is there.
"""

from .errors import ClearCLIPError

OPENCV_MISSING = (
    "clearclip_d2 needs OpenCV, but `import cv2` failed ({error}): install one OpenCV distribution, e.g. "
    "`pip install opencv-python-headless` (or opencv-python; 4.x or 5.x), it is not installed with clearclip_d2"
)


def require_opencv():
    """The ``cv2`` module, or a one-line :class:`ClearCLIPError` naming what to install."""
    try:
        import cv2
    except ImportError as exc:
        raise ClearCLIPError(OPENCV_MISSING.format(error=exc)) from None
    return cv2
