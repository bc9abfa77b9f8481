"""Measurements behind ``tools/benchmark.py``: latency, peak memory, FLOPs, matmul peak.

FLOPs are floating-point operations with a multiply-add counted as 2 (fvcore counts one
multiply-add as one "flop"; its counts are doubled here), so they compare directly with the
``2 n^3`` of an ``n x n`` matrix product.
"""

import contextlib
import resource
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..modeling.clip.dense_encoder import DenseCLIPEncoder
from ..modeling.inference.slide_inference import padded_size, slide_window_boxes
from ..utils.io import write_proc_control


# ------------------------------------------------------------------------------ timing
def synchronize(device: torch.device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(run: Callable[[], object], runs: int, warmup: int, device: torch.device) -> List[float]:
    """Seconds of each of ``runs`` calls of ``run`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        run()
    synchronize(device)
    seconds = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def latency_summary(seconds: Sequence[float], images_per_run: int) -> Dict[str, float]:
    """images/s (all runs), median and 90th-percentile latency per run in milliseconds."""
    ordered = sorted(seconds)
    p90 = ordered[min(len(ordered) - 1, int(round(0.9 * (len(ordered) - 1))))]
    return {
        "images_per_s": images_per_run * len(seconds) / sum(seconds),
        "latency_median_ms": 1000 * statistics.median(seconds),
        "latency_p90_ms": 1000 * p90,
    }


# ------------------------------------------------------------------------------ memory
def _proc_status_kib(field: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def current_rss_mib() -> float:
    kib = _proc_status_kib("VmRSS")
    return (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def reset_peak_memory(device: torch.device) -> bool:
    """Reset the peak counters: CUDA's allocator stats, and Linux's peak RSS (``VmHWM``, reset
    by writing 5 to ``/proc/self/clear_refs``). False if the CPU peak cannot be reset (then the
    reported CPU peak is the process's lifetime peak)."""
    if torch.device(device).type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        write_proc_control("/proc/self/clear_refs", "5")
        return True
    except OSError:
        return False


def peak_memory_mib(device: torch.device) -> Dict[str, float]:
    """Peak RSS of this process since the last reset (MiB), and CUDA max allocated if on CUDA."""
    kib = _proc_status_kib("VmHWM")
    peak = {"peak_rss_mib": (kib if kib is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024}
    if torch.device(device).type == "cuda":
        peak["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated(device) / 2**20
    return peak


# ------------------------------------------------------------------------------ FLOPs
def _sdpa_macs(inputs, outputs) -> int:
    """aten::scaled_dot_product_attention: q [..., N, d], k [..., M, d], v [..., M, dv]."""
    from fvcore.nn.jit_handles import get_shape

    q, v = get_shape(inputs[0]), get_shape(inputs[2])
    batch = 1
    for size in q[:-2]:
        batch *= size
    return batch * q[-2] * v[-2] * (q[-1] + v[-1])


def _native_mha_macs(inputs, outputs) -> int:
    """aten::_native_multi_head_attention (open_clip's blocks in inference): q/k/v/out
    projections and the two attention products, query [B, N, C]."""
    from fvcore.nn.jit_handles import get_shape

    batch, tokens, width = get_shape(inputs[0])
    return batch * tokens * width * 4 * width + batch * tokens * tokens * width * 2


FLOP_HANDLES = {
    "aten::scaled_dot_product_attention": _sdpa_macs,
    "aten::_native_multi_head_attention": _native_mha_macs,
}
# Normalisation and elementwise ops: not matrix products, negligible next to them (counted as 0;
# fvcore counts layer_norm by default).
IGNORED_OPS = ("aten::layer_norm", "aten::gelu", "aten::add", "aten::mul", "aten::sub", "aten::div", "aten::softmax")


def _no_flops(inputs, outputs) -> int:
    return 0


class _Call(nn.Module):
    """A module whose forward is ``fn`` (fvcore traces modules)."""

    def __init__(self, owner: nn.Module, fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__()
        self.owner = owner
        self.fn = fn

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fn(images)


def count_flops(module: nn.Module, inputs: torch.Tensor) -> int:
    """FLOPs (multiply-add = 2) of ``module(inputs)``, matrix products only (fvcore trace).

    A trace keeps only what reaches the output: work whose result is thrown away is not counted.
    """
    import logging

    from fvcore.nn import FlopCountAnalysis

    handles = dict(FLOP_HANDLES, **{op: _no_flops for op in IGNORED_OPS})
    analysis = FlopCountAnalysis(module, inputs).set_op_handle(*sum(handles.items(), ()))
    analysis.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    fvcore_logger = logging.getLogger("fvcore")
    level = fvcore_logger.level
    fvcore_logger.setLevel(logging.ERROR)  # the tracer's warnings are about the wrappers here
    try:
        return 2 * int(analysis.total())
    finally:
        fvcore_logger.setLevel(level)


def encoder_flops(encoder: DenseCLIPEncoder, height: int, width: int, reference_style: bool = False) -> int:
    """FLOPs (multiply-add = 2) of one encoder pass over one ``height`` x ``width`` input.

    ``reference_style``: the authors' pass, which also runs the full last block (its result
    is unused, so it is counted on its own).
    """
    parameter = next(encoder.parameters())
    images = torch.zeros(1, 3, height, width, device=parameter.device, dtype=parameter.dtype)
    with torch.no_grad():
        tokens = encoder.forward_until_last_block(images)  # also fills the positional-embedding cache
        flops = count_flops(_Call(encoder, encoder.forward), images)
        if reference_style:
            last_block = encoder.visual.transformer.resblocks[-1]
            flops += count_flops(_Call(encoder, lambda x: encoder._open_clip_block(last_block, x)), tokens)
    return flops


def window_sizes(height: int, width: int, crop: int, stride: int, patch_size: int) -> Dict[Tuple[int, int], int]:
    """{padded window (h, w): windows of that size} for one image; crop 0 = the whole image."""
    if crop <= 0:
        return {(height // patch_size * patch_size, width // patch_size * patch_size): 1}
    sizes: Dict[Tuple[int, int], int] = {}
    for y1, x1, y2, x2 in slide_window_boxes(height, width, crop, stride):
        size = padded_size(y2 - y1, x2 - x1, patch_size)
        sizes[size] = sizes.get(size, 0) + 1
    return sizes


def image_encoder_flops(
    encoder: DenseCLIPEncoder, height: int, width: int, crop: int, stride: int, reference_style: bool = False
) -> int:
    """Encoder FLOPs of all windows of one ``height`` x ``width`` image."""
    return sum(
        count * encoder_flops(encoder, h, w, reference_style)
        for (h, w), count in window_sizes(height, width, crop, stride, encoder.patch_size).items()
    )


# ------------------------------------------------------------------------------ matmul peak
def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, size: int = 0, seconds: float = 1.0) -> float:
    """The machine's measured matrix-product rate (FLOP/s): the best of repeated ``size``^3
    GEMMs for about ``seconds`` (size default 2048 on the CPU, 8192 on CUDA)."""
    device = torch.device(device)
    size = size or (8192 if device.type == "cuda" else 2048)
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    torch.mm(a, b)
    synchronize(device)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
        if time.perf_counter() > deadline:
            break
    return 2 * size**3 / best


@contextlib.contextmanager
def num_threads(threads: int):
    """``torch.set_num_threads(threads)`` inside the block (0 = leave as is)."""
    before = torch.get_num_threads()
    if threads > 0:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)
