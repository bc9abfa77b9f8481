#!/usr/bin/env python
"""The ClearCLIP paper's analysis of CLIP's features (Sec. 3, Figs. 2-6) for any open_clip ViT.

Every block of the image tower computes ``X_sum = X_res + X_attn``: ``X_res`` is the block's
input (the residual connection), ``X_attn`` its attention output. On a set of images
(``--input`` files, globs or folders, or the images of ``--dataset``) this writes, into
``--output``:

* ``layer_statistics.csv`` and ``layer_norms.png`` / ``layer_entropy.png`` /
  ``layer_maximum.png``: per block and per feature (X_res, X_attn, X_sum) the mean token L2
  norm, the normalised entropy (Eq. 5) and the maximum entry (Fig. 4 a, b);
* ``channel_means.csv`` (every block) and ``channel_means.png`` (last block): the mean of
  each channel over all patches (Figs. 4 c and 5);
* ``attention_variants.csv`` / ``attention_variants.png``: per attention variant of the
  last block, the norms of X_res and X_attn and (with ``--dataset``) the mIoU of
  segmenting with X_attn (Fig. 2);

and with ``--dataset`` (a registered Detectron2 semantic-segmentation dataset):

* ``feature_miou.csv`` / ``feature_miou.png``: mIoU of segmenting with the last block's
  X_res, X_attn and X_sum (Fig. 3);
* ``alpha_sweep.csv`` / ``alpha_sweep.png``: mIoU of ``X_res + alpha * X_attn`` (Fig. 6).

Statistics are computed over the patch tokens (class token excluded) of each image, resized
so its short side is ``--size`` pixels and centre-cropped to ``--size`` x ``--size`` (one
sliding window; default ``MODEL.CLEARCLIP.SLIDE_CROP``), and averaged over the images.
Segmentation runs the plugin's own inference (sliding windows, text classifier) and
Detectron2's ``SemSegEvaluator`` with only the dense feature replaced::

    python tools/analyze_features.py --config-file configs/clearclip_coco.yaml \
        --dataset coco_2017_val_stuff_sem_seg --max-images 500 --output output/analysis \
        --opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin MODEL.CLEARCLIP.FORCE_QUICK_GELU True
"""

import argparse
import csv
import logging
import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from clearclip_d2.data import ClearCLIPDatasetMapper, ResizeShortLongEdge, read_image_or_fail  # noqa: E402
from clearclip_d2.data.image_files import expand_inputs  # noqa: E402
from clearclip_d2.analysis.features import FEATURE_WEIGHTS, FEATURES, FeatureStatistics, LastBlockFeatureEncoder  # noqa: E402
from clearclip_d2.modeling.decomposition import ATTENTION_VARIANTS, get_attention_variant  # noqa: E402
from clearclip_d2.utils import ClearCLIPError, atomic_write  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error, load_segmentor_config  # noqa: E402

PROGRAM = "analyze_features.py"
DEFAULT_CONFIG = "configs/clearclip_coco.yaml"
DEFAULT_OUTPUT = "output/analysis"
DEFAULT_ALPHAS = "0.25,0.5,1,2,4,8"
STATISTICS = tuple(FeatureStatistics.STATISTICS)
STATISTIC_TITLES = {
    "norm": "mean token L2 norm",
    "entropy": "normalised entropy (Eq. 5)",
    "maximum": "maximum entry",
}

logger = logging.getLogger("clearclip_d2.analyze_features")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="ClearCLIP's feature analysis (X_res / X_attn norms, entropy, maxima, channel means, "
        "mIoU per feature and the alpha sweep) with PNG plots and CSV numbers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE", help="config file (default: %(default)s)")
    parser.add_argument(
        "--input", nargs="+", metavar="PATH", help="images, globs (quote them) or folders for the statistics; "
        "default: the images of --dataset"
    )
    parser.add_argument(
        "--dataset", metavar="NAME", help="registered semantic-segmentation dataset for the mIoU parts (Figs. 2, 3, 6); "
        "without it only the statistics are computed"
    )
    parser.add_argument("--max-images", type=int, default=0, metavar="N", help="use the first N images only (0 = all)")
    parser.add_argument(
        "--size", type=int, default=0, metavar="S", help="statistics images are resized and centre-cropped to S x S "
        "pixels, a multiple of the patch size (default: MODEL.CLEARCLIP.SLIDE_CROP)"
    )
    parser.add_argument(
        "--variants", default=",".join(ATTENTION_VARIANTS), metavar="LIST",
        help="attention variants compared in Fig. 2 (default: %(default)s)",
    )
    parser.add_argument(
        "--attention", default="qk", metavar="NAME",
        help="attention of the last block's X_attn for Figs. 3 and 6 (default: %(default)s, plain CLIP as in the paper)",
    )
    parser.add_argument(
        "--alphas", default=DEFAULT_ALPHAS, metavar="LIST", help="alpha values of Fig. 6 (default: %(default)s)"
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help="output folder (default: %(default)s)")
    parser.add_argument(
        "--opts", default=[], nargs=argparse.REMAINDER, metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. MODEL.CLEARCLIP.PRETRAINED /path/to/weights.bin",
    )
    return parser


# ----------------------------------------------------------------------------- arguments
def setup_cfg(args):
    return load_segmentor_config(args.config_file, args.opts, PROGRAM)


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

    from clearclip_d2.data.datasets import check_dataset_prepared

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

        from clearclip_d2.evaluation import ClearCLIPSemSegEvaluator

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


# ----------------------------------------------------------------------------- outputs
def write_csv(path: str, header: Sequence[str], rows: Sequence[Sequence]) -> str:
    with atomic_write(path, "w") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([_csv_value(value) for value in row] for row in rows)
    return path


def _csv_value(value):
    if isinstance(value, float):
        return "" if value != value else f"{value:.8g}"
    return value


def save_figure(figure, path: str) -> str:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_write(path, "wb") as f:
        figure.savefig(f, format="png", dpi=120)
    plt.close(figure)
    return path


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_layer_statistic(rows, statistic: str, title: str, path: str) -> str:
    plt = pyplot()
    from matplotlib.ticker import MaxNLocator

    column = 2 + STATISTICS.index(statistic)
    figure, axis = plt.subplots(figsize=(5, 3.5))
    for feature in FEATURES:
        points = [(row[0], row[column]) for row in rows if row[1] == feature]
        axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=feature)
    axis.set_xlabel("layer")
    axis.xaxis.set_major_locator(MaxNLocator(integer=True))
    axis.set_ylabel(STATISTIC_TITLES[statistic])
    axis.set_title(title)
    axis.legend()
    return save_figure(figure, path)


def plot_channel_means(channel_rows, layer: int, path: str) -> str:
    plt = pyplot()
    figure, axes = plt.subplots(len(FEATURES), 1, figsize=(7, 6), sharex=True)
    for axis, feature in zip(axes, FEATURES):
        means = [row[3] for row in channel_rows if row[0] == layer and row[1] == feature]
        axis.bar(range(len(means)), means, width=1.0)
        axis.set_ylabel(feature)
    axes[0].set_title(f"per-channel mean over all patches, layer {layer}")
    axes[-1].set_xlabel("channel")
    return save_figure(figure, path)


def plot_attention_variants(variant_rows, path: str) -> str:
    plt = pyplot()
    names = [row[0] for row in variant_rows]
    positions = np.arange(len(names))
    figure, axis = plt.subplots(figsize=(6, 3.5))
    axis.bar(positions - 0.2, [row[1] for row in variant_rows], width=0.4, label="||X_res||")
    axis.bar(positions + 0.2, [row[2] for row in variant_rows], width=0.4, label="||X_attn||")
    axis.set_xticks(positions, names)
    axis.set_ylabel("mean token L2 norm")
    axis.legend(loc="upper left")
    mious = [row[3] for row in variant_rows]
    if not all(value != value for value in mious):
        twin = axis.twinx()
        twin.plot(positions, mious, color="black", marker="o", label="mIoU (X_attn)")
        twin.set_ylabel("mIoU of X_attn")
        twin.legend(loc="upper right")
    axis.set_title("last block: attention variants")
    return save_figure(figure, path)


def plot_feature_miou(rows, path: str) -> str:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(4, 3.5))
    axis.bar([row[1] for row in rows], [row[2] for row in rows])
    axis.set_ylabel("mIoU")
    axis.set_title(f"segmenting with the last block's features ({rows[0][0]})")
    return save_figure(figure, path)


def plot_alpha_sweep(rows, path: str) -> str:
    plt = pyplot()
    figure, axis = plt.subplots(figsize=(5, 3.5))
    alphas = [row[1] for row in rows]
    axis.plot(alphas, [row[2] for row in rows], marker="o")
    if min(alphas) > 0:
        axis.set_xscale("log", base=2)
    axis.set_xticks(alphas, [f"{alpha:g}" for alpha in alphas])
    axis.set_xlabel("alpha")
    axis.set_ylabel("mIoU")
    axis.set_title(f"X_res + alpha * X_attn ({rows[0][0]})")
    return save_figure(figure, path)


# ----------------------------------------------------------------------------- main
def run(args) -> List[str]:
    check_args(args)
    cfg = setup_cfg(args)
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


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="clearclip_d2", abbrev_name="clearclip")
    with exit_on_user_error(PROGRAM):
        return tuple(run(args))


if __name__ == "__main__":
    main()
