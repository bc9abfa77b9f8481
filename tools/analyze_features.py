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
Detectron2's ``SemSegEvaluator`` with only the dense feature replaced. The code is
``clearclip_d2/analysis/`` (``run.py``, ``features.py``, ``plots.py``)::

    python tools/analyze_features.py --config-file configs/clearclip_coco.yaml \
        --dataset coco_2017_val_stuff_sem_seg --max-images 500 --output output/analysis \
        --opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin MODEL.CLEARCLIP.FORCE_QUICK_GELU True
"""

import argparse
import os
import sys
import warnings
from typing import Optional, Sequence, Tuple

warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from clearclip_d2.analysis.run import DEFAULT_ALPHAS, DEFAULT_OUTPUT, run_analysis  # noqa: E402
from clearclip_d2.modeling.clip.decomposition import ATTENTION_VARIANTS  # noqa: E402
from clearclip_d2.utils.cli import (  # noqa: E402
    add_config_file_option, add_opts_option, exit_on_user_error, setup_tool_loggers,
)

PROGRAM = "analyze_features.py"


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="ClearCLIP's feature analysis (X_res / X_attn norms, entropy, maxima, channel means, "
        "mIoU per feature and the alpha sweep) with PNG plots and CSV numbers.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_config_file_option(parser)
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
    add_opts_option(parser)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    args = get_parser().parse_args(argv)
    setup_tool_loggers()
    with exit_on_user_error(PROGRAM):
        return tuple(run_analysis(args, PROGRAM))


if __name__ == "__main__":
    main()
