"""Large vocabularies and large images within a fixed memory budget: classes in chunks.

The plain output is ``sem_seg`` [K, H, W]: the per-class probabilities at the original image
size, computed from [Q, H, W] logits (Q queries = all synonyms). For 2,000 classes at
4000 x 3000 pixels that is 96 GB per copy. When ``Q * H * W`` passes
``MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS`` the model takes this path instead: the queries are
compared with the (already encoded) image ``CLASS_CHUNK`` at a time, and a running
per-pixel maximum, log-sum-exp and arg-max give the prediction without ever holding more
than one chunk at the output size.

It returns what an evaluation needs: the label map (the arg-max of the plain path, with the
background threshold) and the highest class probability per pixel. Its memory bound is
:func:`chunked_peak_bytes` (and docs/LONG_EVALUATIONS.md#memory-bounds): no term has the vocabulary size.
"""

from typing import Callable, Tuple

import torch
import torch.nn.functional as F

# Output keys of the chunked path (Detectron2's ``sem_seg`` [K, H, W] is not materialised).
LABELS_KEY = "sem_seg_labels"
CONFIDENCE_KEY = "sem_seg_confidence"

# Memory outside the documented bound: PyTorch's and the allocator's runtime buffers.
RUNTIME_BYTES = 100 * 2**20

# Per-pixel bytes of the running state and temporaries of :func:`chunked_labels`: running max,
# sum and arg-max (4 + 4 + 8), one chunk's max and arg-max (4 + 8), the comparison mask (1),
# the new max and the exp-sum (4 + 4), and the int64 label map plus the fp32 confidence
# returned (8 + 4), rounded up.
BYTES_PER_OUTPUT_PIXEL = 56


def output_labels(output: dict) -> torch.Tensor:
    """[H, W] int64 predicted classes of one model output: ``sem_seg_labels`` when the chunked
    path gave it, else the argmax of ``sem_seg`` [K, H, W] (Detectron2's contract)."""
    return output[LABELS_KEY] if LABELS_KEY in output else output["sem_seg"].argmax(dim=0)


def use_class_chunks(num_queries: int, out_size: Tuple[int, int], max_dense_elements: int) -> bool:
    """True when the plain [Q, H, W] probability map would pass ``max_dense_elements`` floats."""
    return num_queries * out_size[0] * out_size[1] > max_dense_elements


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
    from .slide_inference import padded_size, slide_window_boxes

    height, width_px = resized_size
    if crop > 0:
        num_windows = len(slide_window_boxes(height, width_px, crop, stride))
        window_h, window_w = min(crop, height), min(crop, width_px)
    else:
        num_windows, window_h, window_w = 1, height, width_px
    padded_h, padded_w = padded_size(window_h, window_w, patch_size)
    tokens = (padded_h // patch_size) * (padded_w // patch_size) + 1
    encoder = window_batch * tokens * (16 * width + heads * tokens) * 4
    windows = num_windows * tokens * embed_dim * 4
    chunk = class_chunk * (out_size[0] * out_size[1] + 2 * height * width_px + window_h * window_w) * 4
    return encoder + windows + chunk + out_size[0] * out_size[1] * BYTES_PER_OUTPUT_PIXEL
