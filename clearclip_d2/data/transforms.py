"""The reference's test-time resize, as Detectron2 augmentations.

mmseg's ``Resize(scale=(2048, 448), keep_ratio=True)`` scales by
``min(448 / short_side, 2048 / long_side)`` (up or down), rounds each side with
``int(side * scale + 0.5)`` and resamples with OpenCV's bilinear filter. Detectron2's own
``ResizeShortestEdge`` resamples uint8 images with PIL, whose bilinear filter antialiases
when shrinking, so it would not give the reference's pixels.
"""

from typing import Tuple

import cv2
import numpy as np
from detectron2.data import transforms as T
from fvcore.transforms.transform import Transform

from ..utils.errors import ClearCLIPError


def reference_resize_shape(height: int, width: int, short_edge: int, max_long_edge: int) -> Tuple[int, int]:
    """Output (height, width) of the reference resize for an image of ``height`` x ``width``.

    Refuses (:class:`ClearCLIPError`) an aspect ratio so extreme that a side would round to 0
    pixels (a 2 x 10000 image: the long side down to 2048 takes the short one to 0.4)."""
    scale = min(short_edge / min(height, width), max_long_edge / max(height, width))
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    if min(new_h, new_w) < 1:
        raise ClearCLIPError(
            f"a {width}x{height} image resized to a long side of at most {max_long_edge} (INPUT.MAX_SIZE_TEST) would "
            f"be {new_w}x{new_h} pixels: its aspect ratio is too extreme; crop it into parts, or pad it"
        )
    return new_h, new_w


def max_resized_pixels(short_edge: int, max_long_edge: int) -> int:
    """An upper bound of the pixels of any image after :func:`reference_resize_shape`: its
    short side is at most ``short_edge`` and its long side at most ``max_long_edge`` (one more
    each for the rounding)."""
    return (short_edge + 1) * (max_long_edge + 1)


class OpenCVResizeTransform(Transform):
    """Resize with ``cv2.resize``: bilinear for images, nearest for label maps."""

    def __init__(self, h: int, w: int, new_h: int, new_w: int):
        super().__init__()
        self._set_attributes(locals())

    def apply_image(self, img: np.ndarray) -> np.ndarray:
        assert img.shape[:2] == (self.h, self.w), (img.shape, self.h, self.w)
        return cv2.resize(img, (self.new_w, self.new_h), interpolation=cv2.INTER_LINEAR)

    def apply_segmentation(self, segmentation: np.ndarray) -> np.ndarray:
        return cv2.resize(segmentation, (self.new_w, self.new_h), interpolation=cv2.INTER_NEAREST)

    def apply_coords(self, coords: np.ndarray) -> np.ndarray:
        coords = coords.astype(np.float64, copy=True)
        coords[:, 0] *= self.new_w / self.w
        coords[:, 1] *= self.new_h / self.h
        return coords

    def inverse(self) -> Transform:
        return OpenCVResizeTransform(self.new_h, self.new_w, self.h, self.w)


class ResizeShortLongEdge(T.Augmentation):
    """Scale so the short side is ``short_edge`` unless the long side would pass ``max_long_edge``."""

    def __init__(self, short_edge: int, max_long_edge: int):
        super().__init__()
        self._init(locals())

    def get_transform(self, image: np.ndarray) -> Transform:
        height, width = image.shape[:2]
        new_h, new_w = reference_resize_shape(height, width, self.short_edge, self.max_long_edge)
        return OpenCVResizeTransform(height, width, new_h, new_w)
