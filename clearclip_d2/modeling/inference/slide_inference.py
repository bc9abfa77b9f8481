"""Sliding-window inference, laid out like mmseg's ``slide_inference``.

Windows of ``crop`` pixels every ``stride`` pixels; the last window of a row or column is
aligned to the image border, and an image smaller than the window is used as one smaller
window. Each window is padded (centred, zeros) to a multiple of the patch size (ClearCLIP,
``WINDOW_PADDING centred``), encoded, compared with the text embeddings, upsampled to the
padded window and the padding cut off; or, as SCLIP and NACLIP do (``WINDOW_PADDING none``),
encoded as it is, the patch embedding dropping the pixels past the last whole patch, and the
patch-grid similarities upsampled to the whole window. Overlaps are averaged.

All windows of one size go through the encoder together, ``window_batch`` at a time: in a
batch of images every window of every image has the same size unless an image is smaller
than the crop, so the encoder sees full batches. The encoded windows do not depend on the
text queries, so a large vocabulary can be compared with them chunk by chunk
(:mod:`.class_chunks`) without running the encoder again. The upsampling, averaging and
resizing of the window logits run fused in :mod:`.per_pixel`.
"""

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Box = Tuple[int, int, int, int]  # y1, x1, y2, x2 in pixels, end exclusive


def slide_window_boxes(height: int, width: int, crop: int, stride: int) -> List[Box]:
    """Window boxes covering a ``height`` x ``width`` image, row by row."""
    rows = max(height - crop + stride - 1, 0) // stride + 1
    cols = max(width - crop + stride - 1, 0) // stride + 1
    boxes = []
    for row in range(rows):
        for col in range(cols):
            y2 = min(row * stride + crop, height)
            x2 = min(col * stride + crop, width)
            boxes.append((max(y2 - crop, 0), max(x2 - crop, 0), y2, x2))
    return boxes


def padded_size(height: int, width: int, multiple: int) -> Tuple[int, int]:
    """(height, width) rounded up to multiples of ``multiple``: a window's size after
    :func:`centred_padding`."""
    return -(-height // multiple) * multiple, -(-width // multiple) * multiple


def centred_padding(height: int, width: int, multiple: int) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes both sides multiples of ``multiple``."""
    pad_w = (multiple - width % multiple) % multiple
    pad_h = (multiple - height % multiple) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


@dataclass(frozen=True)
class EncodedWindow:
    """One window of one image after the image encoder (text-independent, so it can be reused
    for every chunk of text queries).

    Attributes:
        image_index: index of the image in the batch.
        box: (y1, x1, y2, x2) of the window in the image, in pixels.
        features: [h'/p * w'/p, D] unit patch embeddings of the zero-padded window.
        grid: (h'/p, w'/p), the patch grid of the padded window.
        padding: (left, right, top, bottom) zero padding added around the window, in pixels
            (all 0 when the window was encoded unpadded).
    """

    image_index: int
    box: Box
    features: torch.Tensor
    grid: Tuple[int, int]
    padding: Tuple[int, int, int, int]


def encode_windows(
    images: Sequence[torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    patch_size: int,
    crop: int,
    stride: int,
    window_batch: int,
    pad: bool = True,
    window_multiple: Optional[int] = None,
) -> List[EncodedWindow]:
    """Cut every image into sliding windows and encode them, ``window_batch`` windows at a time.

    Args:
        images: normalised images, each [3, H_i, W_i].
        encode: images [n, 3, h', w'] -> features [n, (h' // p) * (w' // p), D], p = ``patch_size``.
        pad: zero-pad each window (centred) to a multiple of ``window_multiple`` (default
            ``patch_size``); False = encode it unpadded (the patch embedding truncates).
    Returns:
        the windows of all images; their features hold ``num_windows * tokens * D`` floats.
    """
    jobs_by_size: Dict[Tuple[int, int], List[Tuple[int, Box]]] = defaultdict(list)
    for index, image in enumerate(images):
        for box in slide_window_boxes(image.shape[-2], image.shape[-1], crop, stride):
            jobs_by_size[(box[2] - box[0], box[3] - box[1])].append((index, box))
    encoded = []
    for (height, width), jobs in jobs_by_size.items():
        padding = centred_padding(height, width, window_multiple or patch_size) if pad else (0, 0, 0, 0)
        padded = (height + padding[2] + padding[3], width + padding[0] + padding[1])
        grid = tuple(side // patch_size for side in padded)
        for start in range(0, len(jobs), window_batch):
            chunk = jobs[start : start + window_batch]
            crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, x1, y2, x2) in chunk])
            features = F.normalize(encode(F.pad(crops, padding)), dim=-1)
            encoded += [EncodedWindow(i, box, feats, grid, padding) for (i, box), feats in zip(chunk, features)]
    return encoded


def windows_by_image(windows: Sequence[EncodedWindow], num_images: int) -> List[List[EncodedWindow]]:
    """The windows of each image, in image order."""
    grouped: List[List[EncodedWindow]] = [[] for _ in range(num_images)]
    for window in windows:
        grouped[window.image_index].append(window)
    return grouped


def encode_whole_image(
    image: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor], patch_size: int
) -> Tuple[torch.Tensor, Tuple[int, int]]:
    """Without sliding windows (``SLIDE_CROP`` 0): the whole image, unpadded, in one pass.

    As in the reference, the patch embedding truncates sizes that are not multiples of the
    patch size, and the patch-grid logits go straight to the output
    size. Returns the [T, D] unit patch features and the (grid_h, grid_w) patch grid.
    """
    features = F.normalize(encode(image[None]), dim=-1)[0]
    return features, (image.shape[-2] // patch_size, image.shape[-1] // patch_size)


def logits_to_probabilities(
    logits: torch.Tensor,
    out_size: Tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    num_classes: int,
    prob_threshold: float,
    refine: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
) -> torch.Tensor:
    """Per-class probabilities at the output size, with the background threshold applied.

    Args:
        logits: [Q, h, w] averaged cosine similarities.
        out_size: (height, width) of the original image.
        query_to_class: [Q] int64 class index of each query.
        prob_threshold: where the highest class probability is below it, the background
            channel (class 0) is raised to the threshold so that argmax gives class 0; all
            other values are the reference's probabilities.
        refine: optional [K, H, W] -> [K, H, W] refinement of the probabilities, applied
            before the threshold (``MODEL.CLEARCLIP.REFINE``).
    Returns:
        [num_classes, *out_size] float32: ``softmax(logit_scale * logits)`` over queries,
        max over the synonyms of each class.
    """
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
    probs = (logits * logit_scale).softmax(dim=0)
    if probs.shape[0] != num_classes:
        index = query_to_class.to(probs.device).view(-1, 1, 1).expand_as(probs)
        probs = probs.new_zeros((num_classes,) + tuple(probs.shape[1:])).scatter_reduce_(
            0, index, probs, reduce="amax", include_self=False
        )
    if refine is not None:
        probs = refine(probs)
    if prob_threshold > 0:
        below = probs.max(dim=0).values < prob_threshold
        probs[0] = torch.where(below, torch.full_like(probs[0], prob_threshold), probs[0])
    return probs
