"""Large vocabularies and large images within a fixed memory budget: classes in chunks.

The plain output is ``sem_seg`` [K, H, W]: the per-class probabilities at the original image
size, computed from [Q, h, w] logits at the resized image's size (Q queries = all synonyms),
upsampled to [Q, H, W]. For 2,000 classes at 4000 x 3000 pixels that is 96 GB per copy; for
2,000 classes on a 320 x 240 image resized to 597 x 448, the [Q, h, w] map is 2.1 GB although
the output is 0.6 GB. When ``Q * max(H * W, h * w)`` (:func:`dense_elements`) passes
``MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS`` the model takes this path instead: the queries are
compared with the (already encoded) image ``CLASS_CHUNK`` at a time, and a running
per-pixel maximum, log-sum-exp and arg-max give the prediction without ever holding more
than one chunk at the output size (:func:`.per_pixel.separable_labels`).

It returns what an evaluation needs: the label map (the arg-max of the plain path, with the
background threshold) and the highest class probability per pixel. Its memory bound is
:func:`chunked_peak_bytes` (and docs/LONG_EVALUATIONS.md#memory-bounds): no term has the vocabulary size. The
plain path's is :func:`plain_peak_bytes`, at most ``PLAIN_PATH_COPIES`` maps of
``MAX_DENSE_ELEMENTS`` floats; :func:`peak_bytes_bound` is the larger of the two, what one image
can need whichever path it takes.
"""

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

# Output keys of the chunked path (Detectron2's ``sem_seg`` [K, H, W] is not materialised).
LABELS_KEY = "sem_seg_labels"
CONFIDENCE_KEY = "sem_seg_confidence"

# Memory outside the documented bound: PyTorch's and the allocator's runtime buffers.
RUNTIME_BYTES = 100 * 2**20

# Per-pixel bytes of the running state and temporaries of :func:`chunked_labels` (and the smaller
# ones of :func:`.per_pixel.separable_labels`): running max,
# sum and arg-max (4 + 4 + 8), one chunk's max and arg-max (4 + 8), the comparison mask (1),
# the new max and the exp-sum (4 + 4), and the int64 label map plus the fp32 confidence
# returned (8 + 4), rounded up.
BYTES_PER_OUTPUT_PIXEL = 56

# [Q, ., .] maps the plain path holds at once, at most: the averaged logits at the resized size,
# their upsampled, scaled and softmaxed copies at the output size (3), and the [K, H, W] result
# or a window's upsampled logits (1).
PLAIN_PATH_COPIES = 5


def output_labels(output: dict) -> torch.Tensor:
    """[H, W] int64 predicted classes of one model output: ``sem_seg_labels`` when the chunked
    path gave it, else the argmax of ``sem_seg`` [K, H, W] (Detectron2's contract)."""
    return output[LABELS_KEY] if LABELS_KEY in output else output["sem_seg"].argmax(dim=0)


def dense_elements(num_queries: int, out_size: Tuple[int, int], working_size: Tuple[int, int]) -> int:
    """Floats of the largest [Q, ., .] map of the plain path: ``Q * max(H * W, h * w)``, with
    ``out_size`` (H, W) the output and ``working_size`` (h, w) the resized image the logits are
    averaged at (larger than the output for a small image: the short side goes up to 448)."""
    return num_queries * max(out_size[0] * out_size[1], working_size[0] * working_size[1])


def use_class_chunks(
    num_queries: int, out_size: Tuple[int, int], working_size: Tuple[int, int], max_dense_elements: int
) -> bool:
    """True when a [Q, ., .] map of the plain path would pass ``max_dense_elements`` floats."""
    return dense_elements(num_queries, out_size, working_size) > max_dense_elements


def chunked_labels(
    chunk_logits: Callable[[torch.Tensor], torch.Tensor],
    text_embeddings: torch.Tensor,
    out_size: Tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    prob_threshold: float,
    class_chunk: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The prediction of :func:`~.slide_inference.logits_to_probabilities` + ``argmax``, chunk by
    chunk, for any ``chunk_logits`` (the model's window averages take the fused
    :func:`.per_pixel.separable_labels`; ResCLIP's first pass, with PAMR on the logits, this).

    Args:
        chunk_logits: [C, D] text embeddings of a chunk of queries -> [C, h, w] cosine
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
        chunk_sum = scaled.sub_(chunk_max).exp_().sum(dim=0)
        del scaled
        merge_chunk(chunk_max, chunk_best.add_(start), chunk_sum, running_max, running_sum, best_query)
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


def merge_chunk(chunk_max, chunk_best, chunk_sum, running_max, running_sum, best_query) -> None:
    """Fold one chunk's per-pixel max logit, its query and sum of ``exp(logit - max)`` (same
    shapes) into the running max, sum and arg-max (updated in place)."""
    # Strictly greater: on ties the earlier query wins, as argmax does on the whole map.
    best_query.copy_(torch.where(chunk_max > running_max, chunk_best, best_query))
    new_max = torch.maximum(running_max, chunk_max)
    running_sum.mul_(torch.exp(running_max - new_max)).add_(chunk_sum * torch.exp(chunk_max - new_max))
    running_max.copy_(new_max)


def chunked_peak_bytes(
    out_size: Tuple[int, int],
    resized_size: Tuple[int, int],
    crop: int,
    stride: int,
    patch_size: int,
    width: int,
    heads: int,
    embed_dim: int,
    window_batch: int,
    class_chunk: int,
) -> int:
    """The documented bound of the memory one image needs on the chunked path, in bytes
    (besides the weights, the text embeddings and ~100 MB of runtime buffers)::

        WINDOW_BATCH * T * (16 * width + heads * T) * 4 B      encoder, one batch of windows
      + N * T * D * 4 B                                        the image's encoded windows
      + CLASS_CHUNK * (H * W + 2 * h * w + crop**2) * 4 B      one chunk of queries
      + H * W * 56 B                                           per-pixel running state, outputs

    with T tokens per window (``(crop / patch)**2 + 1``), N windows, D the embedding size,
    ``h x w`` the resized image and ``H x W`` the output (``crop`` 0: the whole image is one
    window). No term has the vocabulary size in it, and none multiplies the window batch by
    the class chunk.
    """
    height, width_px = resized_size
    window_h, window_w = _window_size(resized_size, crop)
    chunk = class_chunk * (out_size[0] * out_size[1] + 2 * height * width_px + window_h * window_w) * 4
    encoder_and_windows = _encoder_bytes(resized_size, crop, stride, patch_size, width, heads, embed_dim, window_batch)
    return encoder_and_windows + chunk + out_size[0] * out_size[1] * BYTES_PER_OUTPUT_PIXEL


def plain_peak_bytes(
    resized_size: Tuple[int, int],
    crop: int,
    stride: int,
    patch_size: int,
    width: int,
    heads: int,
    embed_dim: int,
    window_batch: int,
    max_dense_elements: int,
) -> int:
    """The documented bound of the memory one image needs on the plain path (``REFINE none``),
    in bytes, with the terms of :func:`chunked_peak_bytes` for the encoder and windows::

        encoder + encoded windows + PLAIN_PATH_COPIES * MAX_DENSE_ELEMENTS * 4 B

    It holds because the plain path is taken only when :func:`dense_elements` -- every [Q, ., .]
    map it allocates, at the output and at the resized size -- is at most ``MAX_DENSE_ELEMENTS``.
    """
    encoder_and_windows = _encoder_bytes(resized_size, crop, stride, patch_size, width, heads, embed_dim, window_batch)
    return encoder_and_windows + PLAIN_PATH_COPIES * max_dense_elements * 4


def peak_bytes_bound(out_size, resized_size, crop, stride, patch_size, width, heads, embed_dim, window_batch,
                     class_chunk, max_dense_elements) -> int:
    """What one image can need, whichever path it takes: the larger of :func:`plain_peak_bytes`
    and :func:`chunked_peak_bytes` (besides the weights, the text embeddings and ``RUNTIME_BYTES``)."""
    shared = (crop, stride, patch_size, width, heads, embed_dim, window_batch)
    return max(
        plain_peak_bytes(resized_size, *shared, max_dense_elements),
        chunked_peak_bytes(out_size, resized_size, *shared, class_chunk),
    )


def _window_size(resized_size: Tuple[int, int], crop: int) -> Tuple[int, int]:
    return (min(crop, resized_size[0]), min(crop, resized_size[1])) if crop > 0 else tuple(resized_size)


def _encoder_bytes(resized_size, crop, stride, patch_size, width, heads, embed_dim, window_batch) -> int:
    """The image encoder on one batch of windows, and the image's encoded windows, in bytes."""
    from .slide_inference import padded_size, slide_window_boxes

    num_windows = len(slide_window_boxes(resized_size[0], resized_size[1], crop, stride)) if crop > 0 else 1
    padded_h, padded_w = padded_size(*_window_size(resized_size, crop), patch_size)
    tokens = (padded_h // patch_size) * (padded_w // patch_size) + 1
    return window_batch * tokens * (16 * width + heads * tokens) * 4 + num_windows * tokens * embed_dim * 4
