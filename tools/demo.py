#!/usr/bin/env python
"""ClearCLIP open-vocabulary segmentation demo: overlays of the predicted classes.

Segments images and videos with any list of class names (no training), in the style of
Detectron2's demo::

    python tools/demo.py --config-file configs/clearclip_coco.yaml \\
        --input photos/ "more/*.jpg" clip.mp4 --output output/demo \\
        --vocabulary "cat, kitten; grass, lawn; sky" --save-masks \\
        --opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin \\
               MODEL.CLEARCLIP.FORCE_QUICK_GELU True

Inputs: image files, globs (quoted), folders (their images and videos, not recursive) and
video files, read frame by frame with OpenCV. Without ``--input`` the demo segments
scikit-image's bundled sample photos (public domain / CC0: astronaut, chelsea, coffee,
rocket), saved first as PNGs under ``<output>/inputs/``.

Outputs, per image ``<name>`` (``--output`` a folder, the default):

* ``<name>_overlay.png``: Detectron2's ``Visualizer`` overlay with the class names on the
  regions, and a legend panel on the right: the classes present, largest first, with their
  share of the pixels;
* with ``--save-masks``: ``<name>_labels.png`` (the class index of every pixel, 8-bit, 16-bit
  for more than 256 classes) and ``<name>_classes.json`` (class -> pixel share in [0, 1], in
  vocabulary order, so the n-th key is label n).

A video ``<name>`` gives the same files per frame in ``<output>/<name>/`` (``<name>_000000_...``)
and the overlay video ``<output>/<name>_overlay.mp4``. ``--output x.png`` (one image input)
writes the overlay there and the masks beside it.

``--vocabulary``: classes separated by ``;``, synonyms of one class by ``,`` (the first synonym
names the class). ``--vocabulary-file``: one class a line, synonyms comma-separated.
Everything the user gives is checked before the model is built; problems are printed as one
line and the exit status is 2. Nothing is written half-way (files appear complete or not at all).
The code is in ``clearclip_d2/engine/``: ``demo.py`` (the loop over inputs), ``visualizer.py``
(overlays, legend, masks) and ``video.py``.
"""

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence, Tuple

# fvcore scripts a function with torch.jit at import time; recent PyTorch warns about it on
# every run. Not actionable for demo users, so keep stderr for real problems.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.engine.demo import DEFAULT_OUTPUT, SAMPLE_IMAGES, demo_config, run_demo  # noqa: E402
from clearclip_d2.utils.cli import (  # noqa: E402
    add_config_file_option, add_opts_option, exit_on_user_error, setup_tool_loggers,
)

PROGRAM = "demo.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="ClearCLIP open-vocabulary semantic segmentation demo (Detectron2 overlays).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python tools/demo.py --input img.jpg --vocabulary 'cat, kitten; grass, lawn' "
        "--opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin MODEL.CLEARCLIP.FORCE_QUICK_GELU True",
    )
    add_config_file_option(parser)
    parser.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="image or video files, globs (quote them) or folders; default: scikit-image's sample photos "
        f"({', '.join(SAMPLE_IMAGES)}), saved under OUTPUT/inputs/",
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        metavar="PATH",
        help="output folder (default: %(default)s), or an image file name when there is one input image",
    )
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
        "--save-masks",
        action="store_true",
        help="also write <name>_labels.png (class index per pixel) and <name>_classes.json (class -> pixel share)",
    )
    add_opts_option(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    args = get_parser().parse_args(argv)
    setup_tool_loggers()
    with exit_on_user_error(PROGRAM):
        cfg = demo_config(args.config_file, args.opts, args.prob_threshold)
        return tuple(run_demo(cfg, args.input, args.output, args.vocabulary, args.vocabulary_file, args.save_masks))


if __name__ == "__main__":
    main()
