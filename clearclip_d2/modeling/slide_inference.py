"""Sliding-window inference, laid out like mmseg's ``slide_inference``.

Windows of ``crop`` pixels every ``stride`` pixels; the last window of a row or column is
aligned to the image border, and an image smaller than the window is used as one smaller
window. Each window is padded (centred, zeros) to a multiple of the patch size, encoded,
compared with the text embeddings, upsampled to the padded window and the padding cut off.
Overlaps are averaged.

All windows of one size go through the encoder together, ``window_batch`` at a time: in a
batch of images every window of every image has the same size unless an image is smaller
than the crop, so the encoder sees full batches.
"""

from collections import defaultdict
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


def centred_padding(height: int, width: int, multiple: int) -> Tuple[int, int, int, int]:
    """(left, right, top, bottom) zero padding that makes both sides multiples of ``multiple``."""
    pad_w = (multiple - width % multiple) % multiple
    pad_h = (multiple - height % multiple) % multiple
    return pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2


def window_logits(
    encode: Callable[[torch.Tensor], torch.Tensor],
    text_embeddings: torch.Tensor,
    windows: torch.Tensor,
    patch_size: int,
) -> torch.Tensor:
    """Cosine similarities of windows with the text queries, at window resolution.

    Args:
        encode: images [n, 3, h', w'] (multiples of ``patch_size``) -> features [n, h'/p * w'/p, D].
        text_embeddings: [Q, D], unit rows.
        windows: [n, 3, h, w] normalised crops, all the same size.
    Returns:
        [n, Q, h, w] cosine similarities (in [-1, 1]).
    """
    height, width = windows.shape[-2:]
    left, right, top, bottom = centred_padding(height, width, patch_size)
    padded = F.pad(windows, (left, right, top, bottom))
    features = F.normalize(encode(padded), dim=-1)
    logits = features @ text_embeddings.t().to(features.dtype)
    grid_h, grid_w = padded.shape[-2] // patch_size, padded.shape[-1] // patch_size
    logits = logits.permute(0, 2, 1).reshape(len(windows), -1, grid_h, grid_w)
    logits = F.interpolate(logits, size=padded.shape[-2:], mode="bilinear", align_corners=False)
    return logits[:, :, top : top + height, left : left + width]


def slide_inference(
    images: Sequence[torch.Tensor],
    encode: Callable[[torch.Tensor], torch.Tensor],
    text_embeddings: torch.Tensor,
    patch_size: int,
    crop: int,
    stride: int,
    window_batch: int,
) -> List[torch.Tensor]:
    """Average window logits over each image.

    Args:
        images: normalised images, each [3, H_i, W_i].
    Returns:
        one [Q, H_i, W_i] tensor of averaged cosine similarities per image.
    """
    num_queries = text_embeddings.shape[0]
    sums = [img.new_zeros((num_queries,) + tuple(img.shape[-2:]), dtype=torch.float32) for img in images]
    counts = [img.new_zeros((1,) + tuple(img.shape[-2:]), dtype=torch.float32) for img in images]
    windows_by_size: Dict[Tuple[int, int], List[Tuple[int, Box]]] = defaultdict(list)
    for index, image in enumerate(images):
        for box in slide_window_boxes(image.shape[-2], image.shape[-1], crop, stride):
            windows_by_size[(box[2] - box[0], box[3] - box[1])].append((index, box))
    for jobs in windows_by_size.values():
        for start in range(0, len(jobs), window_batch):
            chunk = jobs[start : start + window_batch]
            crops = torch.stack([images[i][:, y1:y2, x1:x2] for i, (y1, x1, y2, x2) in chunk])
            logits = window_logits(encode, text_embeddings, crops, patch_size).float()
            for (index, (y1, x1, y2, x2)), window in zip(chunk, logits):
                sums[index][:, y1:y2, x1:x2] += window
                counts[index][:, y1:y2, x1:x2] += 1
    return [total / count for total, count in zip(sums, counts)]


def whole_image_logits(
    image: torch.Tensor,
    encode: Callable[[torch.Tensor], torch.Tensor],
    text_embeddings: torch.Tensor,
    patch_size: int,
    out_size: Tuple[int, int],
) -> torch.Tensor:
    """Without sliding windows (``SLIDE_CROP`` 0): the whole image, unpadded, in one pass.

    As in the reference, the patch embedding truncates sizes that are not multiples of the
    patch size, and the patch-grid logits go straight to ``out_size``. Returns [Q, *out_size].
    """
    features = F.normalize(encode(image[None]), dim=-1)
    logits = features @ text_embeddings.t().to(features.dtype)
    grid_h, grid_w = image.shape[-2] // patch_size, image.shape[-1] // patch_size
    logits = logits.permute(0, 2, 1).reshape(1, -1, grid_h, grid_w).float()
    return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)[0]


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
