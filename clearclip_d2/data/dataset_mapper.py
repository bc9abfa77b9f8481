"""Test-time dataset mapper: read, resize as the reference does, keep the original size."""

import copy
from typing import Dict, List

import numpy as np
import torch
from detectron2.config import configurable
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from PIL import Image

from ..utils.errors import ClearCLIPError
from .transforms import ResizeShortLongEdge, max_resized_pixels

# Key of the marker dict returned for an unreadable image by a mapper built with
# ``mark_bad_images=True`` (value: the one-line reason).
BAD_INPUT_KEY = "bad_input"


# PIL modes of images with more than 8 bits a channel, which Detectron2's read_image would clip
# to 0..255 (grayscale and CMYK images are converted to RGB as usual).
HIGH_BIT_DEPTH_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N", "F")


def read_image_or_fail(file_name: str, image_format: str) -> np.ndarray:
    """Detectron2's ``read_image`` (EXIF orientation applied), HxWx3 uint8, naming the file on failure.

    Grayscale, palette and CMYK images are converted to ``image_format``; 16-bit and float
    images are refused (Detectron2 would clip them).
    """
    try:
        with Image.open(file_name) as header:
            mode = header.mode
        image = utils.read_image(file_name, format=image_format)
    except FileNotFoundError as e:
        raise ClearCLIPError(f"image {file_name} does not exist") from e
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise ClearCLIPError(f"cannot read image {file_name}: {type(e).__name__}: {e}") from e
    if mode in HIGH_BIT_DEPTH_MODES:
        raise ClearCLIPError(
            f"image {file_name} has more than 8 bits a channel (PIL mode {mode}); convert it to an 8-bit RGB image"
        )
    if image.ndim != 3 or image.shape[2] != 3:
        raise ClearCLIPError(f"image {file_name} has shape {image.shape}, expected H x W x 3")
    return image


# EXIF orientations that turn the image by 90 degrees when it is read (width and height swap).
EXIF_ORIENTATION_TAG = 0x0112
TRANSPOSING_EXIF_ORIENTATIONS = (5, 6, 7, 8)


def exif_orientation(file_name: str) -> int:
    """The image's EXIF orientation (1 = as stored; 0 when it has none or cannot be read).
    Detectron2's ``read_image`` applies it, so a label map made from the stored pixels of an
    image with orientation 5-8 has width and height swapped."""
    try:
        with Image.open(file_name) as image:
            return int(image.getexif().get(EXIF_ORIENTATION_TAG, 0))
    except Exception:  # an unreadable image is reported by its reader
        return 0


class ClearCLIPDatasetMapper:
    """Map a Detectron2 dataset dict to the model's input.

    Output dict: the input's fields plus ``image`` (uint8 tensor [3, h, w] in
    ``image_format``, resized), ``height``/``width`` (the original size, where predictions are
    made). Label maps are not loaded: the evaluator reads them from ``sem_seg_file_name`` at
    full resolution.

    An image that cannot be read raises :class:`ClearCLIPError`, or with ``mark_bad_images``
    gives the input's fields plus ``BAD_INPUT_KEY`` (the reason) and no ``image``, for
    :class:`~clearclip_d2.evaluation.bad_inputs.BadInputFilter` to take out of the batch.
    """

    @configurable
    def __init__(self, *, augmentations: List[T.Augmentation], image_format: str, mark_bad_images: bool = False):
        self.augmentations = T.AugmentationList(augmentations)
        self.image_format = image_format
        self.mark_bad_images = mark_bad_images

    @classmethod
    def from_config(cls, cfg, is_train: bool = False, mark_bad_images: bool = False):
        return {
            "augmentations": [ResizeShortLongEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)],
            "image_format": cfg.INPUT.FORMAT,
            "mark_bad_images": mark_bad_images,
        }

    def resize(self, aug_input: T.AugInput, file_name: str) -> None:
        """Apply the augmentations in place; an image they cannot handle is named."""
        try:
            self.augmentations(aug_input)
        except ClearCLIPError as e:
            raise ClearCLIPError(f"image {file_name}: {e}") from e

    def __call__(self, dataset_dict: Dict) -> Dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        try:
            image = read_image_or_fail(dataset_dict["file_name"], self.image_format)
            aug_input = T.AugInput(image)
            self.resize(aug_input, dataset_dict["file_name"])
        except ClearCLIPError as e:
            if not self.mark_bad_images:
                raise
            return dict(dataset_dict, **{BAD_INPUT_KEY: str(e)})
        height, width = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
        dataset_dict["height"], dataset_dict["width"] = height, width
        return dataset_dict


def max_mapped_image_bytes(cfg) -> int:
    """The size in bytes of the largest ``image`` :class:`ClearCLIPDatasetMapper` gives with ``cfg``
    (uint8, 3 channels, resized by ``INPUT.MIN_SIZE_TEST`` / ``INPUT.MAX_SIZE_TEST``)."""
    return 3 * max_resized_pixels(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
