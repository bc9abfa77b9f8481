from . import datasets  # noqa: F401  (registers the datasets)
from .dataset_mapper import ClearCLIPDatasetMapper, read_image_or_fail
from .transforms import OpenCVResizeTransform, ResizeShortLongEdge, reference_resize_shape
from .vocabulary import Vocabulary, load_vocabulary_file, vocabulary_from_names

__all__ = [
    "ClearCLIPDatasetMapper",
    "OpenCVResizeTransform",
    "ResizeShortLongEdge",
    "Vocabulary",
    "load_vocabulary_file",
    "read_image_or_fail",
    "reference_resize_shape",
    "vocabulary_from_names",
]
