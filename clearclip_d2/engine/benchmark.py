"""Inference speed of ClearCLIP (``tools/benchmark.py``): the fast path against the authors' way.

``fast`` is the model as it runs (windows in batches of ``WINDOW_BATCH``, the last block once,
fused attention); ``reference`` is the authors' way, built here from the model's public pieces
(:func:`reference_style_encode`, :func:`reference_style_forward`): one window at a time, every
block through open_clip's own ``forward``, the full last block computed and thrown away. Both
give the same probabilities. :func:`run_benchmark` measures latency, peak memory, FLOPs and the
machine's matmul peak per mode; :func:`format_report` prints them as a table.

FLOPs are floating-point operations with a multiply-add counted as 2 (fvcore counts one
multiply-add as one "flop"; its counts are doubled here), so they compare directly with the
``2 n^3`` of an ``n x n`` matrix product.
"""

import contextlib
import itertools
import logging
import resource
import statistics
import time
from functools import partial
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..modeling.clip.decomposition import decomposed_block_forward
from ..modeling.clip.dense_encoder import DenseCLIPEncoder
from ..modeling.clip.precision import PRECISIONS, WEIGHT_DTYPES, with_precision
from ..modeling.inference.per_pixel import separable_labels, separable_probabilities
from ..modeling.inference.slide_inference import padded_size, slide_window_boxes
from ..utils.errors import ClearCLIPError
from ..utils.io import write_proc_control
from ..utils.timing import synchronize

logger = logging.getLogger(__name__)

MODES = ("fast", "reference")
PLACEHOLDER_VOCABULARY = ["background", "person", "car", "tree", "sky", "road", "building", "grass"]


# ------------------------------------------------------------------------------ the authors' way
def reference_style_encode(encoder: DenseCLIPEncoder, images: torch.Tensor) -> torch.Tensor:
    """The authors' encoder pass, for speed comparisons: every block through open_clip's own
    ``forward``, the full last block computed and thrown away, then the decomposed last block on
    the same input. images [B, 3, H, W] -> [B, H/p * W/p, D], the same as ``encoder(images)``."""
    x = encoder.forward_until_last_block(images, fused=False)
    last_block = encoder.visual.transformer.resblocks[-1]
    encoder.open_clip_block(last_block, x)  # the reference's full pass, result unused
    layout = encoder.token_layout(*images.shape[-2:])
    x = decomposed_block_forward(last_block, x, encoder.attention, encoder.residual, encoder.ffn, layout)
    return encoder.project_tokens(x)


def reference_style_forward(model, batched_inputs: List[Dict]) -> List[Dict[str, torch.Tensor]]:
    """``model(batched_inputs)`` the authors' way: :func:`reference_style_encode` (at the model's
    ``PRECISION``) on one window at a time. Same outputs as the model's own forward."""
    encode = with_precision(partial(reference_style_encode, model.encoder), model.device, model.precision)
    with torch.no_grad():
        return model.inference(batched_inputs, encode=encode, window_batch=1)


def mode_forward(model, mode: str) -> Callable[[List[Dict]], List[Dict[str, torch.Tensor]]]:
    """The model's forward in ``mode`` (``fast`` or ``reference``)."""
    return partial(reference_style_forward, model) if mode == "reference" else model


# ------------------------------------------------------------------------------ timing
def time_runs(run: Callable[[], object], runs: int, warmup: int, device: torch.device) -> List[float]:
    """Seconds of each of ``runs`` calls of ``run`` after ``warmup`` untimed calls: on CUDA
    between two CUDA events around the call (the GPU's clock), elsewhere by the wall clock."""
    for _ in range(warmup):
        run()
    synchronize(device)
    timer = cuda_event_seconds if torch.device(device).type == "cuda" else wall_clock_seconds
    return [timer(run, device) for _ in range(runs)]


def wall_clock_seconds(run: Callable[[], object], device: torch.device) -> float:
    start = time.perf_counter()
    run()
    synchronize(device)
    return time.perf_counter() - start


def cuda_event_seconds(run: Callable[[], object], device: torch.device) -> float:
    """Seconds from a CUDA event recorded before ``run()`` to one recorded after it, on the
    current stream of ``device``, once the second has completed."""
    with torch.cuda.device(device):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        run()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000  # elapsed_time is in milliseconds


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
            flops += count_flops(_Call(encoder, lambda x: encoder.open_clip_block(last_block, x)), tokens)
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


# ------------------------------------------------------------------------------ the benchmark run
def parse_size(text: str) -> Tuple[int, int]:
    """``"448x640"`` -> (448, 640); anything else is a one-line error."""
    try:
        height, width = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ClearCLIPError(f"--size {text!r} must be HEIGHTxWIDTH in pixels, e.g. 448x640") from None
    if height <= 0 or width <= 0:
        raise ClearCLIPError(f"--size {text!r} must be positive")
    return height, width


def parse_modes(text: str) -> List[str]:
    """``"fast,reference"`` -> the modes to run, each one of :data:`MODES`."""
    modes = [m.strip() for m in text.split(",") if m.strip()]
    if not modes or any(m not in MODES for m in modes):
        raise ClearCLIPError(f"--modes {text!r}: choose from fast, reference (comma-separated)")
    return modes


def build_inputs(args) -> List[List[Dict]]:
    """One batch (a list of Detectron2 input dicts): ``--batch`` times one synthetic image of ``--size``."""
    height, width = parse_size(args.size)
    image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    return [[{"image": image, "height": height, "width": width}] * max(args.batch, 1)]


def build_benchmark_model(cfg, args):
    """The model in eval mode with a vocabulary: the dataset's, the config's, or a placeholder."""
    from detectron2.modeling import build_model

    from ..modeling.meta_arch import vocabulary_from_config

    model = build_model(cfg).eval()
    if args.dataset:
        model.use_dataset(args.dataset)  # its classes and background threshold, as Trainer.test
    elif vocabulary_from_config(cfg) is None:
        model.set_vocabulary(PLACEHOLDER_VOCABULARY)
    return model


def build_model_with_text(cfg, args):
    """The benchmark's model (:func:`build_benchmark_model`) with its text embeddings computed,
    and the seconds they took (a one-off: cached on disk and in the model)."""
    model = build_benchmark_model(cfg, args)
    start = time.perf_counter()
    model.text_embeddings()
    return model, time.perf_counter() - start


def report_header(cfg, args, model, source: str, text_seconds: float) -> dict:
    """The fields every report starts with: what ran, where, on what input."""
    cc = cfg.MODEL.CLEARCLIP
    return {
        "config_file": args.config_file,
        "opts": list(args.opts),
        "model": cc.MODEL_NAME,
        "device": str(torch.device(cfg.MODEL.DEVICE)),
        "precision": cc.PRECISION,
        "threads": torch.get_num_threads(),
        "input": source,
        "num_queries": len(model.vocabulary.queries),
        "text_embedding_s": text_seconds,
    }


def measure_mode(model, batches, args, mode: str, flops_per_image: float, peak_flops: float) -> dict:
    """Timing, memory and FLOP figures of one mode (fast or reference)."""
    device = model.device
    forward = mode_forward(model, mode)
    next_batch = itertools.cycle(batches).__next__

    def run():
        return forward(next_batch())

    with torch.no_grad():
        run()  # first call: allocations, caches
        rss_before = current_rss_mib()
        exact_peak = reset_peak_memory(device)
        seconds = time_runs(run, args.runs, args.warmup, device)
        memory = peak_memory_mib(device)
    result = latency_summary(seconds, len(batches[0]))
    result.update(memory)
    result["rss_before_runs_mib"] = rss_before
    result["peak_rss_is_lifetime"] = not exact_peak
    if flops_per_image:
        result["encoder_gflops_per_image"] = flops_per_image / 1e9
        result["achieved_gflops_per_s"] = flops_per_image * result["images_per_s"] / 1e9
        result["fraction_of_matmul_peak"] = flops_per_image * result["images_per_s"] / peak_flops
    return result


def measure_encoder_alone(model, mode: str, args, peak_flops: float, window_flops: float) -> dict:
    """The image encoder on one batch of full windows (WINDOW_BATCH; 1 window for the reference);
    ``window_flops``: FLOPs of one window."""
    encoder, device = model.encoder, model.device
    crop = model.slide_crop or 448
    reference = mode == "reference"
    windows = 1 if reference else model.window_batch
    images = torch.randn(windows, 3, crop, crop, device=device)
    forward = partial(reference_style_encode, encoder) if reference else encoder
    encode = with_precision(forward, device, model.precision)
    with torch.no_grad():
        seconds = time_runs(lambda: encode(images), max(args.runs // 2, 2), 1, device)
    result = {"windows_per_batch": windows, "window_size": crop}
    result["windows_per_s"] = windows * len(seconds) / sum(seconds)
    if window_flops:
        result["achieved_gflops_per_s"] = window_flops * result["windows_per_s"] / 1e9
        result["fraction_of_matmul_peak"] = window_flops * result["windows_per_s"] / peak_flops
    return result


def max_probability_difference(model, batch) -> float:
    """Largest difference between the fast and the reference-style outputs on one batch."""
    with torch.no_grad():
        fast, reference = (mode_forward(model, mode)(batch) for mode in MODES)
    difference = 0.0
    for ours, theirs in zip(fast, reference):
        for key in ours:
            difference = max(difference, float((ours[key].float() - theirs[key].float()).abs().max()))
    return difference


# ------------------------------------------------------------------------------ per-pixel work
def parse_class_counts(text: str) -> List[int]:
    """``"3,171,847"`` -> [3, 171, 847]; ``""`` -> [] (no per-pixel measurement)."""
    try:
        counts = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        counts = [0]
    if any(c < 1 for c in counts):
        raise ClearCLIPError(f"--per-pixel-classes {text!r} must be comma-separated positive class counts, e.g. 3,171,847")
    return counts


def measure_per_pixel(model, batch: List[Dict], class_counts: Sequence[int], runs: int) -> dict:
    """The encoder and the per-pixel work of the first image of ``batch``, timed apart in the
    same run: per class count (random unit text embeddings, one query per class), the seconds
    of the probabilities (``sem_seg``) and of the labels (:meth:`labels_only`, what the
    evaluator asks for), and their ratios to the encoder's seconds (measured before and after,
    the median of both kept, so that load on a shared machine shows in the ratios less)."""
    device = model.device
    first = batch[0]
    images = [model.preprocess_image(first["image"])]
    out_size = (int(first["height"]), int(first["width"]))
    text = model.text_embeddings()
    with torch.no_grad():
        encode = lambda: model.encode_images(images, text=text)  # noqa: E731
        encoder_seconds = time_runs(encode, runs, 1, device)
        separable = encode()[0]
        generator = torch.Generator().manual_seed(0)
        rows = []
        for classes in class_counts:
            queries = torch.nn.functional.normalize(torch.randn(classes, text.shape[1], generator=generator), dim=-1).to(device)
            query_to_class = torch.arange(classes, device=device)
            common = (separable, queries, out_size, model.logit_scale)
            probabilities = time_runs(
                lambda: separable_probabilities(*common, query_to_class, classes, model.prob_threshold), runs, 1, device
            )
            labels = time_runs(
                lambda: separable_labels(*common, query_to_class, model.prob_threshold, classes), runs, 1, device
            )
            rows.append({"classes": classes, "probabilities_s": statistics.median(probabilities),
                         "labels_s": statistics.median(labels)})
        encoder_seconds += time_runs(encode, runs, 0, device)
    encoder = statistics.median(encoder_seconds)
    for row in rows:
        row["probabilities_over_encoder"] = row["probabilities_s"] / encoder
        row["labels_over_encoder"] = row["labels_s"] / encoder
    return {"encoder_s": encoder, "encoder_s_spread": [min(encoder_seconds), max(encoder_seconds)], "classes": rows}


def measure_text_embedding(model, classes: int, templates: int, sample_prompts: int = 256) -> dict:
    """Seconds to embed ``classes x templates`` prompts with the model's text tower, extrapolated
    from one batch of ``sample_prompts`` (the cost is linear in the prompt count)."""
    from ..modeling.clip.text_classifier import build_text_classifier

    templates_used = model.prompt_templates[:templates]
    queries = [f"class number {i}" for i in range(max(1, sample_prompts // len(templates_used)))]
    prompts = len(queries) * len(templates_used)
    start = time.perf_counter()
    build_text_classifier(model.clip_model, model.tokenizer, queries, templates_used, model.text_batch_size)
    synchronize(model.device)
    seconds = time.perf_counter() - start
    return {"prompts_measured": prompts, "seconds_measured": seconds, "prompts": classes * templates,
            "seconds_extrapolated": seconds * classes * templates / prompts}


def check_benchmark_args(args) -> List[str]:
    """Refuse bad numbers before any work; returns the modes to run."""
    from .loop_benchmark import MIN_LOOP_IMAGES

    modes = parse_modes(args.modes)
    if args.runs < 1 or args.warmup < 0 or args.batch < 1:
        raise ClearCLIPError("--runs and --batch must be >= 1 and --warmup >= 0")
    if args.num_images < MIN_LOOP_IMAGES:
        raise ClearCLIPError(f"--num-images {args.num_images}: the loop needs at least {MIN_LOOP_IMAGES} images "
                             "(the first image's iteration holds the loader's start-up)")
    if not args.gpu_model_ms > 0:
        raise ClearCLIPError(f"--gpu-model-ms {args.gpu_model_ms} must be a positive time in milliseconds")
    if not args.dataset:
        parse_size(args.size)
    parse_class_counts(args.per_pixel_classes)
    return modes


def modes_for_encoder(modes: List[str], encoder: str, no_flops: bool) -> Tuple[List[str], bool]:
    """The modes and whether to skip the FLOP count for ``MODEL.CLEARCLIP.ENCODER``: the
    reference-style path and the FLOP count are written for the ``decomposed`` encoder only, so
    other encoders (ProxyCLIP, SC-CLIP, ResCLIP) are timed on their fast path alone."""
    if encoder == "decomposed":
        return modes, no_flops
    kept = [mode for mode in modes if mode != "reference"]
    if not kept:
        raise ClearCLIPError(
            f"--modes reference: the reference-style path exists for ENCODER decomposed only, not {encoder!r}; use --modes fast"
        )
    if kept != modes:
        logger.warning(f"ENCODER {encoder}: no reference-style path; timing the fast path only (no FLOP count)")
    return kept, True


def run_benchmark(args, program: str = "benchmark.py") -> dict:
    """The benchmark of ``tools/benchmark.py``'s arguments; returns the report (see
    :func:`format_report`)."""
    from ..utils.cli import load_segmentor_config

    modes = check_benchmark_args(args)
    cfg = load_segmentor_config(args.config_file, args.opts, program)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.dataset:
        return run_loop_benchmark(cfg, args)
    cc = cfg.MODEL.CLEARCLIP
    device = torch.device(cfg.MODEL.DEVICE)
    modes, skip_flops = modes_for_encoder(modes, cc.ENCODER, args.no_flops)
    batches = build_inputs(args)
    model, text_seconds = build_model_with_text(cfg, args)

    compute_dtype = PRECISIONS[cc.PRECISION] or WEIGHT_DTYPES.get(cc.PRECISION, torch.float32)
    peak = matmul_peak_flops(device, compute_dtype, seconds=2.0)
    first = batches[0][0]["image"]
    height, width = int(first.shape[-2]), int(first.shape[-1])
    windows = len(slide_window_boxes(height, width, cc.SLIDE_CROP, cc.SLIDE_STRIDE)) if cc.SLIDE_CROP > 0 else 1
    report = {
        **report_header(cfg, args, model, f"synthetic {height}x{width}", text_seconds),
        "image_size": [height, width],
        "batch": len(batches[0]),
        "runs": args.runs,
        "warmup": args.warmup,
        "crop": cc.SLIDE_CROP,
        "stride": cc.SLIDE_STRIDE,
        "windows_per_image": windows,
        "window_batch": cc.WINDOW_BATCH,
        "text_cache_dir": cc.CACHE_DIR,
        "matmul_peak_gflops_per_s": peak / 1e9,
        "modes": {},
    }
    crop = cc.SLIDE_CROP
    for mode in modes:
        reference = mode == "reference"
        flops = 0.0 if skip_flops else float(image_encoder_flops(model.encoder, height, width, crop, cc.SLIDE_STRIDE, reference))
        window_flops = 0.0 if skip_flops else float(encoder_flops(model.encoder, crop or 448, crop or 448, reference))
        result = measure_mode(model, batches, args, mode, flops, peak)
        result["encoder_alone"] = measure_encoder_alone(model, mode, args, peak, window_flops)
        report["modes"][mode] = result
    # Measured again at the end, the higher figure kept: another process on the machine during
    # one measurement would otherwise make the peak look low (and fractions above 100%).
    peak_again = matmul_peak_flops(device, compute_dtype)
    if peak_again > peak:
        scale = peak / peak_again
        report["matmul_peak_gflops_per_s"] = peak_again / 1e9
        for result in report["modes"].values():
            for part in (result, result["encoder_alone"]):
                if "fraction_of_matmul_peak" in part:
                    part["fraction_of_matmul_peak"] *= scale
    counts = parse_class_counts(args.per_pixel_classes)
    if counts:
        report["per_pixel"] = measure_per_pixel(model, batches[0], counts, max(args.runs, 1))
        report["text_embedding_large"] = measure_text_embedding(model, max(counts), 80)
    if len(modes) == 2:
        report["speedup"] = report["modes"]["fast"]["images_per_s"] / report["modes"]["reference"]["images_per_s"]
        report["max_probability_difference"] = max_probability_difference(model, batches[0])
    return report


# ------------------------------------------------------------------------------ the evaluation loop
def run_loop_benchmark(cfg, args) -> dict:
    """``--dataset``: the evaluation loop of ``Trainer.test`` on the first ``--num-images``
    images (:mod:`.loop_benchmark`); the report's ``loop`` holds milliseconds per image."""
    from .loop_benchmark import per_image_report, run_evaluation_loop

    model, text_seconds = build_model_with_text(cfg, args)
    loop = run_evaluation_loop(cfg, model, args.dataset, args.num_images, args.evaluator_in_line)
    return {
        **report_header(cfg, args, model, args.dataset, text_seconds),
        "images": loop["images"],
        "num_workers": loop["num_workers"],
        "evaluator": "in line" if loop["evaluator_in_line"] else "background thread",
        "loop": per_image_report(loop, args.gpu_model_ms),
    }


LOOP_ROWS = [
    ("loop, per image", "wall_ms"),
    ("model (forward)", "model_ms"),
    ("loader wait (main process)", "loader_wait_ms"),
    ("evaluator.process (main thread)", "process_ms"),
    ("other (inference_on_dataset)", "other_ms"),
    ("evaluator.evaluate, amortised (without the drain)", "evaluate_ms"),
    ("everything else = loop - model + evaluate", "overhead_ms"),
]


def format_loop_report(report: dict) -> str:
    """The ``--dataset`` report: ms per image per part of the loop, and the overhead against the bound."""
    from tabulate import tabulate

    loop = report["loop"]
    median = loop["median_ms"]

    def row(label, value, part=""):
        return [label, f"{value:.2f}", f"{median[part]:.2f}" if part in median else ""]

    rows = [row(label, loop[key], key[: -len("_ms")]) for label, key in LOOP_ROWS]
    rows += [row(f"  process: {name}", value, name) for name, value in loop["process_parts_ms"].items()]
    rows += [row(f"evaluator background thread: {name}", value, name) for name, value in loop.get("evaluator_worker_ms", {}).items()]
    if "evaluator_worker_total_ms" in loop:
        rows.append(row("evaluator background thread, all (overlaps the model)", loop["evaluator_worker_total_ms"]))
    rows.append(row("loader worker: mapping one image (overlaps the model)", loop["mapping_ms"]))
    header = (
        f"evaluation loop: {report['model']} on {report['device']} ({report['precision']}, {report['threads']} threads), "
        f"{report['input']}, {report['images']} images, {report['num_workers']} loader workers, {report['num_queries']} queries, "
        f"evaluator work {report['evaluator']}\n"
        f"one-offs: plan {loop['plan_s']:.2f} s, loader start-up (first batch) {loop['startup_s']:.2f} s, "
        f"loader shut-down {loop['shutdown_s']:.2f} s, drain (the background thread's last images) {loop['drain_s']:.2f} s; "
        f"text embeddings {report['text_embedding_s']:.2f} s\n"
        f"per image: the loop running (images 2..{report['images']}), evaluate's own work over all images"
    )
    verdict = "met" if loop["bound_met"] else "NOT met"
    footer = (
        f"everything else {loop['overhead_ms']:.2f} ms/image = {loop['overhead_over_model']:.1%} of this model's "
        f"{loop['model_ms']:.2f} ms, {loop['overhead_over_gpu_model']:.1%} of a GPU-sized model's {loop['gpu_model_ms']:g} ms "
        f"(--gpu-model-ms); bound {loop['bound_ms']:.2f} ms (10%): {verdict}"
    )
    if "evaluator_worker_total_ms" in loop:
        below = "below" if loop["evaluator_worker_below_gpu_model"] else "NOT below"
        footer += (
            f"\nevaluator background thread {loop['evaluator_worker_total_ms']:.2f} ms/image: {below} the GPU-sized "
            f"model's {loop['gpu_model_ms']:g} ms (it overlaps the model; above it, it would be the bottleneck)"
        )
    return "\n".join([header, tabulate(rows, headers=["ms per image", "mean", "median"], tablefmt="github"), footer])


# ------------------------------------------------------------------------------ the report
ROWS = [
    ("images/s", "images_per_s", "{:.3f}"),
    ("latency median (ms)", "latency_median_ms", "{:.1f}"),
    ("latency p90 (ms)", "latency_p90_ms", "{:.1f}"),
    ("peak RSS (MiB)", "peak_rss_mib", "{:.0f}"),
    ("RSS before runs (MiB)", "rss_before_runs_mib", "{:.0f}"),
    ("CUDA max allocated (MiB)", "cuda_max_allocated_mib", "{:.0f}"),
    ("encoder GFLOPs / image", "encoder_gflops_per_image", "{:.1f}"),
    ("achieved GFLOP/s (end to end)", "achieved_gflops_per_s", "{:.1f}"),
    ("fraction of matmul peak", "fraction_of_matmul_peak", "{:.1%}"),
]


ENCODER_ROWS = [
    ("encoder alone: windows per batch", "windows_per_batch", "{}"),
    ("encoder alone: windows/s", "windows_per_s", "{:.3f}"),
    ("encoder alone: GFLOP/s", "achieved_gflops_per_s", "{:.1f}"),
    ("encoder alone: fraction of matmul peak", "fraction_of_matmul_peak", "{:.1%}"),
]


def table_rows(specs, columns: List[dict]) -> List[List[str]]:
    """One row per ``(label, key, format)`` of ``specs`` that some column has ("-" where missing)."""
    rows = []
    for label, key, fmt in specs:
        values = [column.get(key) for column in columns]
        if any(v is not None for v in values):
            rows.append([label] + [fmt.format(v) if v is not None else "-" for v in values])
    return rows


def format_report(report: dict) -> str:
    """The report of :func:`run_benchmark` as a header, a table (a column per mode) and the speed-up."""
    from tabulate import tabulate

    if "loop" in report:
        return format_loop_report(report)

    modes = list(report["modes"])
    results = [report["modes"][m] for m in modes]
    rows = table_rows(ROWS, results) + table_rows(ENCODER_ROWS, [r["encoder_alone"] for r in results])
    header = (
        f"{report['model']} on {report['device']} ({report['precision']}, {report['threads']} threads), "
        f"{report['input']}, batch {report['batch']}, {report['windows_per_image']} windows/image "
        f"(crop {report['crop']}, stride {report['stride']}), window batch {report['window_batch']}, "
        f"{report['num_queries']} queries\n"
        f"matmul peak {report['matmul_peak_gflops_per_s']:.1f} GFLOP/s; text embeddings {report['text_embedding_s']:.2f} s"
    )
    lines = [header, tabulate(rows, headers=["", *modes], tablefmt="github")]
    if "per_pixel" in report:
        lines.append(format_per_pixel(report["per_pixel"]))
    if "text_embedding_large" in report:
        text = report["text_embedding_large"]
        lines.append(
            f"text embedding of {text['prompts']} prompts: {text['seconds_extrapolated']:.0f} s "
            f"(extrapolated from {text['prompts_measured']} prompts in {text['seconds_measured']:.2f} s; cached afterwards)"
        )
    if "speedup" in report:
        lines.append(
            f"speed-up fast / reference: {report['speedup']:.2f}x; "
            f"largest probability difference: {report['max_probability_difference']:.2e}"
        )
    return "\n".join(lines)


def format_per_pixel(per_pixel: dict) -> str:
    """The per-pixel table: seconds and ratio to the encoder, per class count."""
    from tabulate import tabulate

    rows = [
        [row["classes"], f"{row['probabilities_s']:.3f}", f"{row['probabilities_over_encoder']:.2f}",
         f"{row['labels_s']:.3f}", f"{row['labels_over_encoder']:.2f}"]
        for row in per_pixel["classes"]
    ]
    low, high = per_pixel["encoder_s_spread"]
    header = f"encoder {per_pixel['encoder_s']:.3f} s per image (runs {low:.3f}-{high:.3f} s); per-pixel work:"
    table = tabulate(rows, headers=["classes", "sem_seg (s)", "/ encoder", "labels only (s)", "/ encoder"], tablefmt="github")
    return header + "\n" + table
