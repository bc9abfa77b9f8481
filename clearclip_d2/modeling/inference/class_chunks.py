"""Large vocabularies and large images within a fixed memory budget: classes in chunks.

The plain output is ``sem_seg`` [K, H, W]: the per-class probabilities at the original image
size, computed from [Q, H, W] logits (Q queries = all synonyms). For 2,000 classes at
4000 x 3000 pixels that is 96 GB per copy. When ``Q * H * W`` passes
``MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS`` the model takes this path instead: the queries are
compared with the (already encoded) image ``CLASS_CHUNK`` at a time, and a running
per-pixel maximum, log-sum-exp and arg-max give the prediction without ever holding more
than one chunk at the output size (:func:`.per_pixel.separable_labels`).

It returns what an evaluation needs: the label map (the arg-max of the plain path, with the
background threshold) and the highest class probability per pixel. Its memory bound is
:func:`chunked_peak_bytes` (and README "Long evaluations"): no term has the vocabulary size.
"""

from typing import Tuple

import torch

# Output keys of the chunked path (Detectron2's ``sem_seg`` [K, H, W] is not materialised).
LABELS_KEY = "sem_seg_labels"
CONFIDENCE_KEY = "sem_seg_confidence"

# Memory outside the documented bound: PyTorch's and the allocator's runtime buffers.
RUNTIME_BYTES = 100 * 2**20

# Per-pixel bytes of the running state and temporaries of :func:`.per_pixel.separable_labels`: running max,
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
