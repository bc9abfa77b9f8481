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


def patch_logits(features: torch.Tensor, grid: Tuple[int, int], text_embeddings: torch.Tensor) -> torch.Tensor:
    """[T, D] unit patch features x [Q, D] unit text embeddings -> [Q, grid_h, grid_w] cosines (fp32)."""
    logits = features @ text_embeddings.t().to(features.dtype)
    # contiguous: the transposed view is channels-last, which makes the upsampling 2x slower.
    return logits.t().reshape(-1, *grid).float().contiguous()


def drop_small_classes(probs: torch.Tensor, area_threshold: float) -> torch.Tensor:
    """SCLIP's ``area_thd`` on [K, H, W] probabilities: classes 1..K-1 whose argmax area is not
    above ``area_threshold`` times the total argmax area of classes 1..K-1 get probability 0
    (class 0, the background, is never dropped; nothing is renormalised). In place; returned."""
    num_classes = probs.shape[0]
    area = torch.bincount(probs.argmax(dim=0).flatten(), minlength=num_classes)[1:]
    keep = (area > area_threshold * area.sum()).to(probs.dtype)
    probs[1:] *= keep.view(-1, 1, 1)
    return probs


def logits_to_probabilities(
    logits: torch.Tensor,
    out_size: Tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    num_classes: int,
    prob_threshold: float,
    refine: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    refine_logits: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    area_threshold: float = 0.0,
    renormalize: bool = False,
) -> torch.Tensor:
    """Per-class probabilities at the output size, with the background threshold applied.

    The steps, in the order of the authors' code (SCLIP, NACLIP):
    upsample to the output size -> ``refine_logits`` (PAMR on every query's cosines) ->
    ``softmax(logit_scale * logits)`` over queries -> max over each class's synonyms ->
    ``refine`` (masks) -> area threshold -> background threshold decided on the highest
    probability -> renormalisation -> background channel raised where the threshold decided.

    Args:
        logits: [Q, h, w] averaged cosine similarities.
        out_size: (height, width) of the original image.
        query_to_class: [Q] int64 class index of each query.
        prob_threshold: where the highest class probability (after the area threshold, before
            the renormalisation) is below it, the background channel (class 0) is raised to
            ``max(prob_threshold, highest probability)`` so that argmax gives class 0 (argmax
            returns the first of equal values); all other values are the authors' probabilities.
        refine: optional [K, H, W] -> [K, H, W] refinement of the probabilities (``REFINE masks``).
        refine_logits: optional [Q, H, W] -> [Q, H, W] refinement of the cosines (``REFINE pamr``).
        area_threshold: ``AREA_THRESHOLD`` (0 = off), see :func:`drop_small_classes`.
        renormalize: divide by the sum over classes (``RENORMALIZE``).
    Returns:
        [num_classes, *out_size] float32.
    """
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
    if refine_logits is not None:
        logits = refine_logits(logits)
    probs = max_over_synonyms((logits * logit_scale).softmax(dim=0), query_to_class, num_classes, dim=0)
    return finish_probabilities(probs, prob_threshold, refine, area_threshold, renormalize)


def max_over_synonyms(probs: torch.Tensor, query_to_class: torch.Tensor, num_classes: int, dim: int) -> torch.Tensor:
    """Per-query probabilities (queries along ``dim``) -> per-class ones, the highest of each
    class's queries; unchanged when every class has one query."""
    if probs.shape[dim] == num_classes:
        return probs
    shape = [1] * probs.dim()
    shape[dim] = -1
    index = query_to_class.to(probs.device).view(shape).expand_as(probs)
    out_shape = list(probs.shape)
    out_shape[dim] = num_classes
    return probs.new_zeros(out_shape).scatter_reduce_(dim, index, probs, reduce="amax", include_self=False)


def finish_probabilities(
    probs: torch.Tensor,
    prob_threshold: float,
    refine: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    area_threshold: float = 0.0,
    renormalize: bool = False,
) -> torch.Tensor:
    """The steps of :func:`logits_to_probabilities` after the synonym max, on [K, H, W]:
    ``refine``, area threshold, background threshold (with the renormalisation)."""
    if refine is not None:
        probs = refine(probs)
    if area_threshold > 0:
        probs = drop_small_classes(probs, area_threshold)
    return threshold_background(probs, prob_threshold, renormalize, dim=0)


def threshold_background(probs: torch.Tensor, prob_threshold: float, renormalize: bool, dim: int) -> torch.Tensor:
    """The background threshold on class probabilities (classes along ``dim``): where the
    highest is below ``prob_threshold`` (decided before the renormalisation, if any), class 0
    is raised to ``max(prob_threshold, highest)`` so that argmax gives 0. May write in place."""
    below = probs.amax(dim=dim) < prob_threshold if prob_threshold > 0 else None
    if renormalize:
        probs = probs / probs.sum(dim=dim, keepdim=True)
    if below is not None:
        background = probs.select(dim, 0)
        background.copy_(torch.where(below, probs.amax(dim=dim).clamp(min=prob_threshold), background))
    return probs
