"""The per-pixel work, fused: from window logits to probabilities or labels in one pass.

The plain computation (kept in ``tests/reference_per_pixel.py``) makes a dozen full
``Q x H x W`` passes per image: each window's logits upsampled, summed into the image, divided
by the overlap count, resized to the output, scaled, soft-maxed, reduced over synonyms,
thresholded, and finally arg-maxed by the evaluator. All of it before the softmax is linear
and separable: the upsampling of a window, its placement in the image, the division by the
window count (a product of a row count and a column count, since the windows form a grid)
and the resize to the output are each a matrix on the rows and one on the columns. So the
averaged logits of query ``q`` at the output size are::

    logits[q] = rows @ coarse[q] @ cols.T       rows [H, a], coarse [Q, a, b], cols [W, b]

where ``coarse`` holds the patch-grid logits of all windows side by side (a = window rows x
patch rows, b = window columns x patch columns). :class:`SeparableLogits` builds these
matrices once per image; :func:`separable_probabilities` and :func:`separable_labels` then
walk the output a block of rows at a time: a small matrix product gives the block's logits of
all queries (a block stays in the CPU's cache), softmax / synonym max / threshold or max /
log-sum-exp / arg-max run on it, and only the result is written. Output ``[K, H, W]`` is
written once; labels never allocate a ``Q x H x W`` map.

Same outputs as the plain computation up to float rounding (the sums run in another order;
tests/test_per_pixel.py checks 1e-6 on probabilities, equal labels).
"""

from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from .class_chunks import merge_chunk
from .slide_inference import Box, EncodedWindow, finish_probabilities, max_over_synonyms, threshold_background

# Elements of one block of rows (queries x rows x width): 2**19 floats = 2 MiB, a few of which
# (logits, exp, probabilities) fit in the last-level cache of a CPU; a GPU gets more per launch.
CPU_BLOCK_ELEMENTS = 2**19
CUDA_BLOCK_ELEMENTS = 2**26


def bilinear_matrix(in_size: int, out_size: int, device=None) -> torch.Tensor:
    """[out_size, in_size] float64 matrix of ``F.interpolate(mode="bilinear",
    align_corners=False)`` on fp32 input along one axis.

    Taken from the kernel itself (an identity resized along one axis) rather than recomputed:
    the weights are the kernel's fp32 ones on ``device``, whose source positions (fp64 or fp32
    arithmetic, depending on the kernel) a recomputation would miss by up to ~1e-4.
    """
    identity = torch.eye(in_size, dtype=torch.float32, device=device)[None, None]
    matrix = F.interpolate(identity, size=(out_size, in_size), mode="bilinear", align_corners=False)[0, 0]
    return matrix.double().cpu()


def window_axis_matrix(spans: Sequence[Tuple[int, int]], pads: Tuple[int, int], grid: int, size: int) -> torch.Tensor:
    """[size, len(spans) * grid] float64: along one image axis, each window's patch-grid logits
    upsampled to its padded extent, the padding cut off, placed at its span and divided by the
    number of windows covering each pixel.

    Args:
        spans: (start, end) pixels of each distinct window position on this axis.
        pads: (before, after) padding of every window on this axis.
        grid: patches per window on this axis.
        size: the image's size on this axis (the resized image the windows were cut from).
    """
    before, after = pads
    matrix = torch.zeros(size, len(spans) * grid, dtype=torch.float64)
    for index, (start, end) in enumerate(spans):
        upsample = bilinear_matrix(grid, end - start + before + after)[before : before + end - start]
        matrix[start:end, index * grid : (index + 1) * grid] = upsample
    coverage = (matrix != 0).any(dim=1, keepdim=True)  # rows with no window stay zero (cannot happen)
    counts = torch.zeros(size, 1, dtype=torch.float64)
    for start, end in spans:
        counts[start:end] += 1
    return torch.where(coverage, matrix / counts.clamp(min=1), matrix)


@dataclass
class SeparableLogits:
    """The averaged window logits of one image, as ``rows @ coarse @ cols.T`` per query.

    Attributes:
        features: [N, T, D] unit patch features of the image's N windows (row-major window grid).
        grid: (window rows, window columns, patch rows, patch columns).
        row_matrix: [h, a] float64, a = window rows x patch rows (the resized image's rows).
        col_matrix: [w, b] float64, b = window columns x patch columns.
        image_size: (h, w) the logits' working resolution (resized image, or the patch grid in
            whole-image mode, where the matrices are identities).
    """

    features: torch.Tensor
    grid: Tuple[int, int, int, int]
    row_matrix: torch.Tensor
    col_matrix: torch.Tensor
    image_size: Tuple[int, int]

    @classmethod
    def from_windows(cls, windows: Sequence[EncodedWindow], image_size: Tuple[int, int]) -> "SeparableLogits":
        """The windows of one image (:func:`~.slide_inference.encode_windows`), which cover it as a grid."""
        row_spans = sorted({(w.box[0], w.box[2]) for w in windows})
        col_spans = sorted({(w.box[1], w.box[3]) for w in windows})
        grids = {(w.grid, w.padding) for w in windows}
        if len(grids) != 1 or len(windows) != len(row_spans) * len(col_spans):
            raise ValueError("the windows of an image must form a grid of equal windows")
        (grid_h, grid_w), (left, right, top, bottom) = grids.pop()
        position = {box: i for i, box in enumerate(windows_in_grid_order(row_spans, col_spans))}
        order = sorted(range(len(windows)), key=lambda i: position[windows[i].box])
        features = torch.stack([windows[i].features for i in order])
        return cls(
            features,
            (len(row_spans), len(col_spans), grid_h, grid_w),
            window_axis_matrix(row_spans, (top, bottom), grid_h, image_size[0]),
            window_axis_matrix(col_spans, (left, right), grid_w, image_size[1]),
            tuple(image_size),
        )

    @classmethod
    def from_patch_grid(
        cls, features: torch.Tensor, grid: Tuple[int, int], input_size: Optional[Tuple[int, int]] = None
    ) -> "SeparableLogits":
        """Whole-image mode: [T, D] patch features on a (grid_h, grid_w) grid, at grid resolution
        (``WHOLE_IMAGE_UPSAMPLE direct``), or, given the resized ``input_size``, bilinearly
        upsampled to it first (``via_input``, the first of NACLIP's two upsampling steps; the
        second is to the output size). No window averaging."""
        size = tuple(input_size) if input_size is not None else tuple(grid)
        rows, cols = (bilinear_matrix(side, target) for side, target in zip(grid, size))
        return cls(features[None], (1, 1, *grid), rows, cols, size)

    def coarse(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[C, D] unit text embeddings -> [C, a, b] fp32 patch-grid cosines of all windows, side by side."""
        rows, cols, grid_h, grid_w = self.grid
        logits = self.features @ text_embeddings.t().to(self.features.dtype)  # [N, T, C]
        logits = logits.float().view(rows, cols, grid_h, grid_w, -1)
        return logits.permute(4, 0, 2, 1, 3).reshape(-1, rows * grid_h, cols * grid_w)

    def matrices(self, out_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """fp32 ``rows`` [H, a] and ``cols`` [W, b] giving the logits at ``out_size`` (H, W):
        the window averaging followed by the bilinear resize to the output."""
        rows, cols = self.row_matrix, self.col_matrix
        if tuple(out_size) != tuple(self.image_size):
            rows = bilinear_matrix(self.image_size[0], out_size[0]) @ rows
            cols = bilinear_matrix(self.image_size[1], out_size[1]) @ cols
        device = self.features.device
        return rows.to(device, torch.float32), cols.to(device, torch.float32)

    def __call__(self, text_embeddings: torch.Tensor) -> torch.Tensor:
        """[C, D] -> [C, h, w] averaged cosines at the working resolution (the plain
        ``chunk_logits`` contract, for code that wants the whole map)."""
        rows, cols = self.matrices(self.image_size)
        return rows @ self.coarse(text_embeddings) @ cols.t()


def windows_in_grid_order(row_spans, col_spans) -> List[Box]:
    """Window boxes row by row, as :func:`~.slide_inference.slide_window_boxes` lists them."""
    return [(y1, x1, y2, x2) for y1, y2 in row_spans for x1, x2 in col_spans]


@dataclass
class RowBlocks:
    """The output rows in blocks, pixel-major: the logits of rows ``y0:y1`` are
    ``rows[y0:y1, j0:j1] @ half[j0:j1]`` viewed as [(y1 - y0) * W, C], where ``half`` [a, W, C]
    holds the logits interpolated along the width only (:meth:`half_product`). The columns of
    ``rows`` are sorted by image position, so that a block of rows touches a narrow band j0:j1
    (overlapping windows' patch rows side by side).
    """

    rows: torch.Tensor  # [H, a] fp32, columns sorted by image position
    order: torch.Tensor  # [a] the column order applied
    blocks: List[Tuple[int, int, int, int]]  # (y0, y1, j0, j1)

    @classmethod
    def plan(cls, rows: torch.Tensor, queries: int, width: int) -> "RowBlocks":
        weight = rows.abs()
        position = torch.arange(rows.shape[0], dtype=rows.dtype, device=rows.device)[:, None]
        order = torch.argsort((weight * position).sum(0) / weight.sum(0).clamp(min=1e-12))
        rows = rows[:, order].contiguous()
        budget = CUDA_BLOCK_ELEMENTS if rows.device.type == "cuda" else CPU_BLOCK_ELEMENTS
        step = max(1, budget // max(1, queries * width))
        nonzero = (rows != 0).cpu()
        blocks = []
        for y0 in range(0, rows.shape[0], step):
            y1 = min(y0 + step, rows.shape[0])
            used = nonzero[y0:y1].any(dim=0).nonzero().flatten()
            j0, j1 = (int(used[0]), int(used[-1]) + 1) if len(used) else (0, 1)
            blocks.append((y0, y1, j0, j1))
        return cls(rows, order, blocks)

    def half_product(self, separable: SeparableLogits, text: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """[a, W, C] (columns of ``rows``' order): ``coarse @ cols.T`` for the [C, D] queries ``text``."""
        coarse = separable.coarse(text)[:, self.order]  # [C, a, b]
        return torch.matmul(cols, coarse.permute(1, 2, 0))  # [a, W, b] @ [a, b, C]

    def logits(self, half: torch.Tensor):
        """Yield (y0, y1, [(y1 - y0) * W, C] logits) block by block, ``half`` from :meth:`half_product`."""
        flat = half.view(half.shape[0], -1)
        for y0, y1, j0, j1 in self.blocks:
            yield y0, y1, (self.rows[y0:y1, j0:j1] @ flat[j0:j1]).view(-1, half.shape[-1])


def separable_probabilities(
    separable: SeparableLogits,
    text_embeddings: torch.Tensor,
    out_size: Tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    num_classes: int,
    prob_threshold: float,
    refine: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    area_threshold: float = 0.0,
    renormalize: bool = False,
) -> torch.Tensor:
    """:func:`~.slide_inference.logits_to_probabilities` of the averaged window logits, fused
    (without ``refine_logits``, which needs the whole [Q, H, W] logits: ``separable(text)``).

    Returns [num_classes, *out_size] float32: ``softmax(logit_scale * logits)`` over the Q
    queries, max over the synonyms of each class, ``refine`` (if any), area threshold,
    background threshold and renormalisation. The last two run per block of rows unless a step
    before them needs the whole map (``refine``, ``area_threshold``).
    """
    rows, cols = separable.matrices(out_size)
    height, width = out_size
    blocks = RowBlocks.plan(rows * logit_scale, text_embeddings.shape[0], width)
    probs = rows.new_empty((num_classes, height, width))
    whole_map = refine is not None or area_threshold > 0
    for y0, y1, scaled in blocks.logits(blocks.half_product(separable, text_embeddings, cols)):
        # [pixels, Q] -> [pixels, K]; logit_scale is in the row matrix
        block = max_over_synonyms(scaled.softmax(dim=1), query_to_class, num_classes, dim=1)
        if not whole_map:
            block = threshold_background(block, prob_threshold, renormalize, dim=1)
        probs[:, y0:y1].copy_(block.t().view(num_classes, y1 - y0, width))
    if whole_map:
        probs = finish_probabilities(probs, prob_threshold, refine, area_threshold, renormalize)
    return probs


def separable_labels(
    separable: SeparableLogits,
    text_embeddings: torch.Tensor,
    out_size: Tuple[int, int],
    logit_scale: float,
    query_to_class: torch.Tensor,
    prob_threshold: float,
    class_chunk: int,
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The labels and highest class probability of :func:`separable_probabilities` (without
    refinement) + ``argmax``, without the [K, H, W] map: per block of rows and chunk of
    ``class_chunk`` queries, the softmax of the chunk, its highest probability and where it is
    (:func:`block_best`); chunks are merged with a running max and sum of exponentials.

    Returns labels [H, W] int64 and the highest class probability [H, W] float32.
    """
    rows, cols = separable.matrices(out_size)
    device = rows.device
    height, width = out_size
    queries = text_embeddings.shape[0]
    class_chunk = min(class_chunk, queries)
    blocks = RowBlocks.plan(rows * logit_scale, class_chunk, width)
    best_query = torch.zeros((height, width), dtype=torch.int64, device=device)
    confidence = torch.zeros((height, width), device=device)
    if class_chunk < queries:
        running_max = torch.full((height, width), float("-inf"), device=device)
    for start in range(0, queries, class_chunk):
        half = blocks.half_product(separable, text_embeddings[start : start + class_chunk], cols)
        for y0, y1, scaled in blocks.logits(half):
            best, top = block_best(scaled)
            if class_chunk == queries:
                best_query[y0:y1].view(-1).copy_(best)
                confidence[y0:y1].view(-1).copy_(top)
            else:  # confidence holds the running sum of exp(logit - running max)
                chunk_max = scaled.gather(1, best[:, None])[:, 0]
                state = (running_max[y0:y1].view(-1), confidence[y0:y1].view(-1), best_query[y0:y1].view(-1))
                merge_chunk(chunk_max, best + start, top.reciprocal_(), *state)
        del half
    if class_chunk < queries:
        confidence.reciprocal_()  # exp(max - max) / sum
    labels = query_to_class.to(device)[best_query]
    if prob_threshold > 0:
        labels[confidence < prob_threshold] = 0
    return labels, confidence


def block_best(scaled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """[P, C] scaled logits -> the first query of highest softmax probability per pixel [P]
    int64, and that probability [P].

    ``argmax`` runs at a fraction of the softmax's speed on CPUs; instead the one-hot rows of
    the maximum times the query indices (a matrix-vector product) give the index, and their
    sums the number of maxima; the rare pixels with tied maxima take ``argmax``.
    """
    probs = scaled.softmax(dim=1)
    top = probs.amax(dim=1)
    hits = torch.eq(probs, top[:, None], out=probs)  # one-hot rows, written over the probabilities
    best = (hits @ torch.arange(hits.shape[1], device=hits.device, dtype=hits.dtype)).long()
    tied = (hits.sum(dim=1) != 1).nonzero().flatten()
    if len(tied):
        best[tied] = scaled[tied].softmax(dim=1).argmax(dim=1)
    return best, top
