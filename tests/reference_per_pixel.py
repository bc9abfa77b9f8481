"""The per-pixel work as it was before issue 14 (plain, one full [Q, H, W] pass per step), kept
as the reference that tests/test_per_pixel.py compares the fused implementation with.

Copied from clearclip_d2/modeling/inference/slide_inference.py and class_chunks.py at the
commit before the change; do not optimise.
"""

from typing import Callable, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F


def patch_logits(features: torch.Tensor, grid: Tuple[int, int], text_embeddings: torch.Tensor) -> torch.Tensor:
    """[T, D] unit patch features x [Q, D] unit text embeddings -> [Q, grid_h, grid_w] cosines (fp32)."""
    logits = features @ text_embeddings.t().to(features.dtype)
    # contiguous: the transposed view is channels-last, which makes the upsampling 2x slower.
    return logits.t().reshape(-1, *grid).float().contiguous()


def window_logits(window, text_embeddings: torch.Tensor) -> torch.Tensor:
    """Cosine similarities of one window with the text queries at window resolution:
    [Q, y2 - y1, x2 - x1], bilinearly upsampled from the patch grid, padding cut off."""
    left, right, top, bottom = window.padding
    height, width = window.box[2] - window.box[0], window.box[3] - window.box[1]
    logits = patch_logits(window.features, window.grid, text_embeddings)
    padded_size = (height + top + bottom, width + left + right)
    logits = F.interpolate(logits[None], size=padded_size, mode="bilinear", align_corners=False)[0]
    return logits[:, top : top + height, left : left + width]


def average_window_logits(
    windows: Sequence, text_embeddings: torch.Tensor, image_size: Tuple[int, int]
) -> torch.Tensor:
    """Average the window logits of one image over the windows covering each pixel.

    Windows are upsampled one at a time, so the memory is ``Q * (H * W + crop**2)`` floats.

    Args:
        windows: all windows of one image.
        text_embeddings: [Q, D] unit rows (all queries, or one chunk of them).
        image_size: (H, W) of the image the windows were cut from.
    Returns:
        [Q, H, W] averaged cosine similarities.
    """
    total = text_embeddings.new_zeros((text_embeddings.shape[0],) + tuple(image_size), dtype=torch.float32)
    count = text_embeddings.new_zeros((1,) + tuple(image_size), dtype=torch.float32)
    for window in windows:
        y1, x1, y2, x2 = window.box
        total[:, y1:y2, x1:x2] += window_logits(window, text_embeddings)
        count[:, y1:y2, x1:x2] += 1
    return total / count


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


def chunked_labels(
    chunk_logits: Callable[[torch.Tensor], torch.Tensor],
    text_embeddings: torch.Tensor,
    out_size: Tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    prob_threshold: float,
    class_chunk: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The prediction of :func:`~.slide_inference.logits_to_probabilities` + ``argmax``, chunk by chunk.

    Args:
        chunk_logits: [C, D] text embeddings of a chunk of queries -> [C, h, w] averaged cosine
            similarities at the working resolution (resized image, or patch grid).
        text_embeddings: [Q, D] unit text embeddings of all queries.
        out_size: (H, W) of the original image.
        query_to_class: [Q] int64 class of each query (queries of a class are consecutive).
        prob_threshold: pixels whose highest class probability is below it get class 0.
        class_chunk: queries per chunk.
    Returns:
        labels [H, W] int64 class indices, and the highest class probability [H, W] float32
        (the softmax over all queries of the query that wins; in (0, 1]).
    """
    height, width = out_size
    device = text_embeddings.device
    running_max = torch.full((height, width), float("-inf"), device=device)
    running_sum = torch.zeros((height, width), device=device)
    best_query = torch.zeros((height, width), dtype=torch.int64, device=device)
    for start in range(0, text_embeddings.shape[0], class_chunk):
        scaled = scaled_logits_at(chunk_logits(text_embeddings[start : start + class_chunk]), out_size, logit_scale)
        chunk_max, chunk_best = scaled.max(dim=0)
        # Strictly greater: on ties the earlier query wins, as argmax does in the plain path.
        best_query = torch.where(chunk_max > running_max, chunk_best + start, best_query)
        del chunk_best
        new_max = torch.maximum(running_max, chunk_max)
        del chunk_max
        running_sum = running_sum * torch.exp(running_max - new_max) + scaled.sub_(new_max).exp_().sum(dim=0)
        running_max = new_max
        del scaled
    confidence = running_sum.reciprocal_()  # exp(max - max) / sum
    labels = query_to_class.to(device)[best_query]
    del best_query
    if prob_threshold > 0:
        labels[confidence < prob_threshold] = 0
    return labels, confidence


def scaled_logits_at(logits: torch.Tensor, out_size: Tuple[int, int], logit_scale: float) -> torch.Tensor:
    """[C, h, w] cosines -> [C, H, W] ``logit_scale * cosine`` at the output size (bilinear),
    the same operations as the plain path. ``logits`` may be overwritten."""
    if tuple(logits.shape[-2:]) != tuple(out_size):
        logits = F.interpolate(logits[None], size=out_size, mode="bilinear", align_corners=False)[0]
    return logits.mul_(logit_scale)
