#!/usr/bin/env python
"""ClearCLIP open-vocabulary segmentation demo: overlays of the predicted classes.

Segments images with any list of class names (no training) and writes
``<output>/<name>_overlay.png`` per image, drawn with Detectron2's ``Visualizer``::

    python tools/demo.py --config-file configs/clearclip_coco.yaml \
        --input photos/ "more/*.jpg" --output output/demo \
        --vocabulary "cat, kitten; grass, lawn; sky" \
        --opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin \
               MODEL.CLEARCLIP.FORCE_QUICK_GELU True

``--vocabulary``: classes separated by ``;``, synonyms of one class by ``,`` (the first
synonym names the class). ``--vocabulary-file``: one class a line, synonyms comma-separated.
Without ``--input`` the demo segments scikit-image's bundled sample photos (public domain /
CC0: astronaut, chelsea, coffee, rocket), saved first as PNGs under ``<output>/inputs/``.
Errors the user can fix are printed as one line and the exit status is 2.
"""

import argparse
import logging
import os
import sys
import time
import warnings
from typing import List, Optional, Sequence, Tuple

# fvcore scripts a function with torch.jit at import time; recent PyTorch warns about it on
# every run. Not actionable for demo users, so keep stderr for real problems.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from clearclip_d2.config import check_clearclip_config, load_clearclip_config  # noqa: E402
from clearclip_d2.data import Vocabulary, load_vocabulary_file, read_image_or_fail, vocabulary_from_names  # noqa: E402
from clearclip_d2.data.image_files import expand_inputs  # noqa: E402
from clearclip_d2.utils import ClearCLIPError, atomic_write  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error, resolve_device  # noqa: E402

PROGRAM = "demo.py"
DEFAULT_CONFIG = "configs/clearclip_coco.yaml"
DEFAULT_OUTPUT = "output/demo"
# scikit-image's sample photos that ship inside its wheel (no download); all public domain or CC0.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
DEFAULT_VOCABULARY = (
    "person, astronaut; flag; cat, kitten; cup, mug; saucer, plate; spoon; table; "
    "rocket; smoke; sky; tree; grass; building, tower; wall; floor, carpet"
)
OVERLAY_ALPHA = 0.6

logger = logging.getLogger("clearclip_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="ClearCLIP open-vocabulary semantic segmentation demo (Detectron2 overlays).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python tools/demo.py --input img.jpg --vocabulary 'cat, kitten; grass, lawn' "
        "--opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin MODEL.CLEARCLIP.FORCE_QUICK_GELU True",
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE", help="config file (default: %(default)s)")
    parser.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="image files, globs (quote them) or folders; default: scikit-image's sample photos "
        f"({', '.join(SAMPLE_IMAGES)}), saved under OUTPUT/inputs/",
    )
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR", help="output folder (default: %(default)s)")
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument(
        "--vocabulary",
        metavar="CLASSES",
        help="classes separated by ';', synonyms of a class by ',' (e.g. \"cat, kitten; grass, lawn\"); "
        "default: MODEL.CLEARCLIP.CLASS_NAMES_FILE if set, else a vocabulary for the sample photos",
    )
    vocabulary.add_argument("--vocabulary-file", metavar="FILE", help="one class a line, synonyms comma-separated")
    parser.add_argument(
        "--prob-threshold",
        type=float,
        default=None,
        metavar="P",
        help="pixels whose highest class probability is below P get the FIRST class (list 'background' "
        "first to use it); sets MODEL.CLEARCLIP.PROB_THRESHOLD",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. MODEL.CLEARCLIP.PRETRAINED /path/to/weights.bin",
    )
    return parser


# ----------------------------------------------------------------------------- config
def setup_cfg(args):
    """Config from the file, the overrides and the flags; the device falls back to the CPU."""
    cfg = load_clearclip_config(args.config_file, args.opts)
    if args.prob_threshold is not None:
        cfg.MODEL.CLEARCLIP.PROB_THRESHOLD = float(args.prob_threshold)
    resolve_device(cfg)
    cfg.freeze()
    if cfg.MODEL.META_ARCHITECTURE != "ClearCLIPSegmentor":
        raise ClearCLIPError(f"MODEL.META_ARCHITECTURE is {cfg.MODEL.META_ARCHITECTURE!r}; the demo runs ClearCLIPSegmentor")
    check_clearclip_config(cfg)
    return cfg


def parse_vocabulary_string(text: str) -> Vocabulary:
    """``"cat, kitten; grass, lawn"`` -> two classes (empty entries, e.g. a trailing ';', are ignored)."""
    entries = [entry.strip() for entry in text.split(";") if entry.strip()]
    return vocabulary_from_names(entries, source="--vocabulary")


def choose_vocabulary(args, cfg) -> Optional[Vocabulary]:
    """The vocabulary to set on the model; None keeps the model's (MODEL.CLEARCLIP.CLASS_NAMES_FILE)."""
    if args.vocabulary is not None:
        return parse_vocabulary_string(args.vocabulary)
    if args.vocabulary_file:
        return load_vocabulary_file(args.vocabulary_file)
    if cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE:
        return None
    return parse_vocabulary_string(DEFAULT_VOCABULARY)


# ----------------------------------------------------------------------------- inputs
def write_sample_images(folder: str) -> List[str]:
    """Save scikit-image's bundled sample photos as PNGs in ``folder``; return their paths."""
    try:
        import skimage.data
    except ImportError as e:
        raise ClearCLIPError(
            "scikit-image is not installed, so there are no sample images: pip install scikit-image, or pass --input"
        ) from e
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in SAMPLE_IMAGES:
        path = os.path.join(folder, f"{name}.png")
        if not os.path.isfile(path):
            image = np.asarray(getattr(skimage.data, name)())
            with atomic_write(path, "wb") as f:
                Image.fromarray(image).convert("RGB").save(f, format="PNG")
        paths.append(path)
    return paths


def output_names(paths: Sequence[str]) -> List[str]:
    """File stems for the outputs; a stem seen before gets a ``-2``, ``-3``... suffix."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        names.append(stem if count == 1 else f"{stem}-{count}")
    return names


# ----------------------------------------------------------------------------- drawing
def make_metadata(class_names: Sequence[str]):
    """Detectron2 metadata with the vocabulary's names and a fixed colour per class."""
    from detectron2.data.catalog import Metadata
    from detectron2.utils.colormap import colormap

    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    colors = [palette[i % len(palette)] for i in range(len(class_names))]
    return Metadata(name="clearclip_demo", stuff_classes=list(class_names), stuff_colors=colors)


def draw_overlay(image_rgb: np.ndarray, labels: np.ndarray, metadata) -> np.ndarray:
    """H x W x 3 uint8 RGB: the image with each class region coloured and named."""
    from detectron2.utils.visualizer import Visualizer

    visualizer = Visualizer(image_rgb, metadata=metadata)
    return visualizer.draw_sem_seg(labels, alpha=OVERLAY_ALPHA).get_image()


def save_png(image_rgb: np.ndarray, path: str) -> None:
    from PIL import Image

    with atomic_write(path, "wb") as f:
        Image.fromarray(image_rgb).save(f, format="PNG")


def class_summary(labels: np.ndarray, class_names: Sequence[str], top: int = 5) -> str:
    """``"cat 62%, grass 20%, ..."``: the largest predicted classes by area."""
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    order = np.argsort(-counts)[:top]
    return ", ".join(f"{class_names[i]} {100.0 * counts[i] / labels.size:.0f}%" for i in order if counts[i] > 0)


# ----------------------------------------------------------------------------- main
def run(args) -> List[str]:
    cfg = setup_cfg(args)
    vocabulary = choose_vocabulary(args, cfg)
    if args.input:
        inputs = expand_inputs(args.input)
    else:
        inputs = write_sample_images(os.path.join(args.output, "inputs"))
        logger.info(f"No --input: using scikit-image's sample photos, saved in {os.path.join(args.output, 'inputs')}")
    names = output_names(inputs)
    os.makedirs(args.output, exist_ok=True)

    from tqdm import tqdm

    from clearclip_d2.engine import ClearCLIPPredictor

    cc = cfg.MODEL.CLEARCLIP
    logger.info(f"Building ClearCLIP: {cc.MODEL_NAME} (weights: {cc.PRETRAINED or 'random'}) on {cfg.MODEL.DEVICE}")
    predictor = ClearCLIPPredictor(cfg)
    if vocabulary is not None:
        predictor.set_vocabulary(vocabulary)
    class_names = predictor.class_names
    logger.info(f"Vocabulary ({len(class_names)} classes): {'; '.join(', '.join(c) for c in predictor.vocabulary.classes)}")
    metadata = make_metadata(class_names)

    written = []
    for path, name in zip(tqdm(inputs, desc="ClearCLIP demo", unit="image"), names):
        start = time.perf_counter()
        image = read_image_or_fail(path, cfg.INPUT.FORMAT)
        labels = predictor.predict_labels(image).numpy()
        image_rgb = image[:, :, ::-1] if cfg.INPUT.FORMAT == "BGR" else image
        out_path = os.path.join(args.output, f"{name}_overlay.png")
        save_png(draw_overlay(np.ascontiguousarray(image_rgb), labels, metadata), out_path)
        written.append(out_path)
        logger.info(
            f"{path} ({image.shape[1]}x{image.shape[0]}, {time.perf_counter() - start:.1f} s): "
            f"{class_summary(labels, class_names)} -> {out_path}"
        )
    logger.info(f"Wrote {len(written)} overlay(s) to {args.output}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="clearclip_d2", abbrev_name="clearclip")
    with exit_on_user_error(PROGRAM):
        return tuple(run(args))


if __name__ == "__main__":
    main()
