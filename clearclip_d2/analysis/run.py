"""The paper's feature analysis over images and a dataset (``tools/analyze_features.py``).

:func:`run_analysis` computes the per-layer statistics of X_res, X_attn and X_sum
(:class:`~.features.FeatureStatistics`), the channel means and the attention variants' norms,
and with a dataset the mIoU of segmenting with each feature and the alpha sweep
(:class:`FeatureEvaluator`), and writes the CSV files and figures (:mod:`.plots`). See
``tools/analyze_features.py`` for the outputs.
"""

import logging
import os
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch

from ..data import ClearCLIPDatasetMapper, ResizeShortLongEdge, read_image_or_fail
from ..data.image_files import expand_inputs
from ..modeling.clip.decomposition import ATTENTION_VARIANTS, get_attention_variant
from ..utils.cli import load_segmentor_config
from ..utils.errors import ClearCLIPError
from .features import FEATURE_WEIGHTS, FEATURES, FeatureStatistics, LastBlockFeatureEncoder
from .plots import (
    STATISTIC_TITLES,
    STATISTICS,
    plot_alpha_sweep,
    plot_attention_variants,
    plot_channel_means,
    plot_feature_miou,
    plot_layer_statistic,
    write_csv,
)

DEFAULT_OUTPUT = "output/analysis"
DEFAULT_ALPHAS = "0.25,0.5,1,2,4,8"

logger = logging.getLogger("clearclip_d2.analyze_features")


# ----------------------------------------------------------------------------- arguments
def parse_variants(text: str, option: str) -> List[str]:
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise ClearCLIPError(f"{option} is empty; give attention variants such as {','.join(ATTENTION_VARIANTS)}")
    for name in names:
        if name not in ATTENTION_VARIANTS:
            raise ClearCLIPError(f"{option}: unknown attention variant {name!r}; valid: {', '.join(ATTENTION_VARIANTS)}")
    return list(dict.fromkeys(names))


def parse_alphas(text: str) -> List[float]:
    try:
        alphas = [float(value) for value in text.split(",") if value.strip()]
    except ValueError as e:
        raise ClearCLIPError(f"--alphas {text!r} must be comma-separated numbers, e.g. {DEFAULT_ALPHAS}") from e
    if not alphas or any(not np.isfinite(alpha) for alpha in alphas):
        raise ClearCLIPError(f"--alphas {text!r} must be comma-separated finite numbers, e.g. {DEFAULT_ALPHAS}")
    return alphas


def check_args(args) -> None:
    if not args.input and not args.dataset:
        raise ClearCLIPError("nothing to analyse: give --input images and/or --dataset NAME")
    if args.max_images < 0:
        raise ClearCLIPError(f"--max-images {args.max_images} must be >= 0 (0 = all)")
    if args.size < 0:
        raise ClearCLIPError(f"--size {args.size} must be > 0 (or 0 for MODEL.CLEARCLIP.SLIDE_CROP)")


def statistics_image_size(args, cfg, patch_size: int) -> int:
    size = args.size or cfg.MODEL.CLEARCLIP.SLIDE_CROP
    if size <= 0 or size % patch_size:
        raise ClearCLIPError(
            f"statistics image size {size} must be a positive multiple of the patch size {patch_size}; set --size"
        )
    return size


def dataset_dicts(dataset_name: str, max_images: int) -> List[Dict]:
    from detectron2.data import DatasetCatalog

    from ..data.datasets import check_dataset_prepared

    check_dataset_prepared(dataset_name)
    dicts = DatasetCatalog.get(dataset_name)
    return dicts[:max_images] if max_images else dicts


# ----------------------------------------------------------------------------- statistics
def load_square_image(path: str, size: int, image_format: str) -> torch.Tensor:
    """uint8 [3, size, size]: short side resized to ``size`` (bilinear, as at test time), centre crop."""
    image = read_image_or_fail(path, image_format)
    image = ResizeShortLongEdge(size, 10 * size * max(image.shape[:2])).get_transform(image).apply_image(image)
    top, left = (image.shape[0] - size) // 2, (image.shape[1] - size) // 2
    crop = np.ascontiguousarray(image[top : top + size, left : left + size].transpose(2, 0, 1))
    return torch.from_numpy(crop)


def image_batches(model, paths: Sequence[str], size: int, image_format: str, batch_size: int):
    """Normalised [b, 3, size, size] batches on the model's device."""
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        yield torch.stack([model.preprocess_image(load_square_image(path, size, image_format)) for path in chunk])


def collect_statistics(model, paths, size, image_format, batch_size, variants, naclip_std) -> FeatureStatistics:
    """Per-layer statistics over all images, and the last block's norms per attention variant."""
    statistics = FeatureStatistics({name: get_attention_variant(name, naclip_std) for name in variants})
    for images in image_batches(model, paths, size, image_format, batch_size):
        statistics.update(model.encoder, images)
    return statistics


# ----------------------------------------------------------------------------- segmentation
class FeatureEvaluator:
    """mIoU of the segmentor with its dense feature replaced, on one dataset (results cached)."""

    def __init__(self, cfg, model, dataset_name: str, dicts: List[Dict]):
        self.cfg = cfg
        self.model = model
        self.dataset_name = dataset_name
        self.dicts = dicts
        self.original_encoder = model.encoder
        self.results: Dict[Tuple[str, float, float], float] = {}
        model.use_dataset(dataset_name)

    def miou(self, attention: str, res_weight: float, attn_weight: float) -> float:
        key = (attention, float(res_weight), float(attn_weight))
        if key not in self.results:
            self.results[key] = self._evaluate(*key)
        return self.results[key]

    def _evaluate(self, attention: str, res_weight: float, attn_weight: float) -> float:
        from detectron2.data import build_detection_test_loader
        from detectron2.evaluation import inference_on_dataset

        from ..evaluation import ClearCLIPSemSegEvaluator

        logger.info(f"Segmenting {self.dataset_name} with {res_weight:g} * X_res + {attn_weight:g} * X_attn ({attention})")
        encoder = LastBlockFeatureEncoder(
            self.original_encoder.visual, attention, res_weight, attn_weight, self.cfg.MODEL.CLEARCLIP.NACLIP_GAUSSIAN_STD
        )
        self.model.encoder = encoder
        try:
            loader = build_detection_test_loader(
                self.dicts, mapper=ClearCLIPDatasetMapper(self.cfg, False), num_workers=self.cfg.DATALOADER.NUM_WORKERS
            )
            evaluator = ClearCLIPSemSegEvaluator(self.dataset_name, distributed=True, output_dir=None)
            results = inference_on_dataset(self.model, loader, evaluator)
        finally:
            self.model.encoder = self.original_encoder
        return float(results["sem_seg"]["mIoU"])


# ----------------------------------------------------------------------------- the analysis
def run_analysis(args, program: str = "analyze_features.py") -> List[str]:
    """The analysis of ``tools/analyze_features.py``'s arguments (``config_file``, ``opts``,
    ``input``, ``dataset``, ``max_images``, ``size``, ``variants``, ``attention``, ``alphas``,
    ``output``); returns the files written. Bad arguments are a one-line ClearCLIPError."""
    check_args(args)
    cfg = load_segmentor_config(args.config_file, args.opts, program)
    variants = parse_variants(args.variants, "--variants")
    attention = parse_variants(args.attention, "--attention")
    if len(attention) != 1:
        raise ClearCLIPError(f"--attention takes one variant, got {args.attention!r}")
    attention = attention[0]
    alphas = parse_alphas(args.alphas)
    dicts = dataset_dicts(args.dataset, args.max_images) if args.dataset else None
    paths = expand_inputs(args.input) if args.input else [record["file_name"] for record in dicts]
    if args.max_images:
        paths = paths[: args.max_images]

    from detectron2.modeling import build_model

    model = build_model(cfg).eval()
    size = statistics_image_size(args, cfg, model.encoder.patch_size)
    out = args.output
    written: List[str] = []

    logger.info(f"Statistics over {len(paths)} image(s) at {size}x{size}")
    cc = cfg.MODEL.CLEARCLIP
    statistics = collect_statistics(model, paths, size, cfg.INPUT.FORMAT, cc.WINDOW_BATCH, variants, cc.NACLIP_GAUSSIAN_STD)
    rows = statistics.layer_rows()
    written.append(write_csv(os.path.join(out, "layer_statistics.csv"), ["layer", "feature", *STATISTICS], rows))
    channel_rows = [
        [layer, feature, channel, mean]
        for layer in statistics.layers
        for feature in FEATURES
        for channel, mean in enumerate(statistics.channel_means(layer, feature).tolist())
    ]
    written.append(write_csv(os.path.join(out, "channel_means.csv"), ["layer", "feature", "channel", "mean"], channel_rows))
    for statistic, figure_name in (("norm", "layer_norms"), ("entropy", "layer_entropy"), ("maximum", "layer_maximum")):
        title = f"{STATISTIC_TITLES[statistic]} per layer"
        written.append(plot_layer_statistic(rows, statistic, title, os.path.join(out, f"{figure_name}.png")))
    written.append(plot_channel_means(channel_rows, statistics.layers[-1], os.path.join(out, "channel_means.png")))

    evaluator = FeatureEvaluator(cfg, model, args.dataset, dicts) if args.dataset else None
    variant_rows = [
        [*row, evaluator.miou(row[0], 0.0, 1.0) if evaluator else float("nan")] for row in statistics.variant_rows()
    ]
    written.append(write_csv(
        os.path.join(out, "attention_variants.csv"), ["attention", "norm_x_res", "norm_x_attn", "miou_x_attn"], variant_rows
    ))
    written.append(plot_attention_variants(variant_rows, os.path.join(out, "attention_variants.png")))

    if evaluator is not None:
        feature_rows = [[attention, feature, evaluator.miou(attention, *FEATURE_WEIGHTS[feature])] for feature in FEATURES]
        written.append(write_csv(os.path.join(out, "feature_miou.csv"), ["attention", "feature", "miou"], feature_rows))
        written.append(plot_feature_miou(feature_rows, os.path.join(out, "feature_miou.png")))
        sweep_rows = [[attention, alpha, evaluator.miou(attention, 1.0, alpha)] for alpha in alphas]
        written.append(write_csv(os.path.join(out, "alpha_sweep.csv"), ["attention", "alpha", "miou"], sweep_rows))
        written.append(plot_alpha_sweep(sweep_rows, os.path.join(out, "alpha_sweep.png")))
    else:
        logger.info("No --dataset: skipping the mIoU parts (Figs. 2 mIoU, 3 and 6)")
    logger.info(f"Wrote {len(written)} files to {out}")
    return written
