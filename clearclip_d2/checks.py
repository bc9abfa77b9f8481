"""Each validation of a user-given value, written once.

Every function here checks one value (or one group of values that only make sense together),
and raises :class:`~clearclip_d2.utils.errors.ClearCLIPError` naming the key and the fix. They
are called by :func:`clearclip_d2.config.check_clearclip_config` (before anything is built)
AND where the value enters the code (the meta-architecture, the backbone, the predictor, the
refiners), never re-written there.

Where ``check_clearclip_config`` lives, and why there is no import cycle: it stays in
``config.py`` beside the keys it checks, and ``config.py`` imports only ``constants``, this
module, ``utils`` and ``data.vocabulary`` -- nothing from ``modeling``. This module imports
only ``constants`` and ``utils``. Two checks need the modeling code itself: the CLIP weights
(open_clip's architecture and tag tables, ``modeling/clip/loading.py``) and the mask model of
``REFINE masks`` (a whole Detectron2 config, ``modeling/refinement/masks.py``). Those modules
register them here with :func:`register_config_check` when they are imported, and
``check_clearclip_config`` runs :func:`run_registered_config_checks`. The arrows only point
from ``modeling`` to ``checks``; ``import clearclip_d2`` imports ``modeling`` (to fill
Detectron2's registries), so the registered checks are always in place when a config is checked.
"""

import math
import os
from typing import Callable, List, Optional, Sequence

import torch

from .constants import (
    ATTENTION_VARIANT_NAMES,
    CLIP_PIXEL_STD,
    INPUT_FORMATS,
    PRECISION_NAMES,
    PROB_THRESHOLD_FROM_DATASET,
    REFINE_CHOICES,
    WHOLE_IMAGE_UPSAMPLES,
    WINDOW_PADDINGS,
)
from .utils.errors import ClearCLIPError

ConfigCheck = Callable[[object], None]
_REGISTERED_CONFIG_CHECKS: List[ConfigCheck] = []


# --------------------------------------------------------------------------- checks that need modeling
def register_config_check(check: ConfigCheck) -> ConfigCheck:
    """Have :func:`clearclip_d2.config.check_clearclip_config` also run ``check(cfg)``
    (used by the modeling modules for checks that need their code); usable as a decorator."""
    if check not in _REGISTERED_CONFIG_CHECKS:
        _REGISTERED_CONFIG_CHECKS.append(check)
    return check


def registered_config_checks() -> List[ConfigCheck]:
    """The checks registered with :func:`register_config_check`, in registration order."""
    return list(_REGISTERED_CONFIG_CHECKS)


def run_registered_config_checks(cfg) -> None:
    for check in _REGISTERED_CONFIG_CHECKS:
        check(cfg)


# --------------------------------------------------------------------------- input
def check_input_format(input_format: str, owner: str = "") -> None:
    """``INPUT.FORMAT`` must be RGB or BGR. ``owner``: whose config it is, e.g. "mask model x.yaml"."""
    if input_format not in INPUT_FORMATS:
        prefix = f"{owner}: " if owner else ""
        raise ClearCLIPError(f"{prefix}INPUT.FORMAT {input_format!r} is not supported; use {' or '.join(INPUT_FORMATS)}")


def check_pixel_normalisation(pixel_mean: Sequence[float], pixel_std: Sequence[float]) -> None:
    """``MODEL.PIXEL_MEAN`` / ``PIXEL_STD``: three finite values each, every std > 0 (a zero
    std divides a channel by zero and the model predicts one class everywhere)."""
    for key, values in (("MODEL.PIXEL_MEAN", pixel_mean), ("MODEL.PIXEL_STD", pixel_std)):
        if len(values) != 3 or not all(math.isfinite(float(v)) for v in values):
            raise ClearCLIPError(f"{key} {list(values)} must be three finite numbers, one per channel (0-255 scale)")
    if not all(float(v) > 0 for v in pixel_std):
        raise ClearCLIPError(
            f"MODEL.PIXEL_STD {list(pixel_std)} must be > 0 in every channel (CLIP's is {list(CLIP_PIXEL_STD)})"
        )


# --------------------------------------------------------------------------- method
def check_attention(name: str, naclip_std: Optional[float] = None) -> None:
    """``ATTENTION`` must name a variant; ``NACLIP_GAUSSIAN_STD`` (patches, if given) must be > 0 for naclip."""
    if name not in ATTENTION_VARIANT_NAMES:
        raise ClearCLIPError(
            f"unknown MODEL.CLEARCLIP.ATTENTION {name!r}; valid values: {', '.join(ATTENTION_VARIANT_NAMES)}"
        )
    if name == "naclip" and naclip_std is not None and not naclip_std > 0:
        raise ClearCLIPError(f"MODEL.CLEARCLIP.NACLIP_GAUSSIAN_STD {naclip_std} must be > 0 (patches)")


def check_templates(templates: Sequence[str]) -> None:
    """``PROMPT_TEMPLATES``: at least one, each with ``{}`` for the class name."""
    if len(templates) == 0:
        raise ClearCLIPError("MODEL.CLEARCLIP.PROMPT_TEMPLATES is empty; give at least one template such as 'a photo of a {}.'")
    for template in templates:
        if "{}" not in template:
            raise ClearCLIPError(f"prompt template {template!r} has no '{{}}' for the class name (MODEL.CLEARCLIP.PROMPT_TEMPLATES)")


def check_text_batch_size(text_batch_size: int) -> None:
    """``TEXT_BATCH_SIZE`` (prompts per text-encoder batch) > 0."""
    if int(text_batch_size) <= 0:
        raise ClearCLIPError(f"MODEL.CLEARCLIP.TEXT_BATCH_SIZE {text_batch_size} must be > 0 (prompts per text-encoder batch)")


def check_num_workers(num_workers: int) -> None:
    """``DATALOADER.NUM_WORKERS`` >= 0 (0 = load in the main process)."""
    if int(num_workers) < 0:
        raise ClearCLIPError(f"DATALOADER.NUM_WORKERS {num_workers} must be >= 0 (0 = load images in the main process)")


def check_prob_threshold(threshold: float) -> None:
    """``PROB_THRESHOLD`` in [0, 1], or ``PROB_THRESHOLD_FROM_DATASET`` (each dataset's own)."""
    if not (0.0 <= threshold <= 1.0 or threshold == PROB_THRESHOLD_FROM_DATASET):
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.PROB_THRESHOLD {threshold} must be in [0, 1], "
            f"or {PROB_THRESHOLD_FROM_DATASET} for each dataset's reference threshold"
        )


# --------------------------------------------------------------------------- inference
def check_sliding_window(crop: int, stride: int, window_batch: int) -> None:
    """``SLIDE_CROP`` >= 0 (0 = whole image), ``SLIDE_STRIDE`` > 0 when sliding, ``WINDOW_BATCH`` > 0."""
    if crop < 0 or (crop > 0 and stride <= 0) or window_batch <= 0:
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.SLIDE_CROP {crop} / SLIDE_STRIDE {stride} / WINDOW_BATCH "
            f"{window_batch}: need crop >= 0 (0 = whole image), stride > 0, window batch > 0"
        )


def check_window_padding(window_padding: str) -> None:
    """``MODEL.CLEARCLIP.WINDOW_PADDING`` must be one of :data:`~clearclip_d2.constants.WINDOW_PADDINGS`."""
    if window_padding not in WINDOW_PADDINGS:
        raise ClearCLIPError(
            f"unknown MODEL.CLEARCLIP.WINDOW_PADDING {window_padding!r}; valid values: {', '.join(WINDOW_PADDINGS)}"
        )


def check_class_chunking(class_chunk: int, max_dense_elements: int) -> None:
    """``CLASS_CHUNK`` > 0 and ``MAX_DENSE_ELEMENTS`` >= 0."""
    if class_chunk <= 0 or max_dense_elements < 0:
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.CLASS_CHUNK {class_chunk} must be > 0 and MAX_DENSE_ELEMENTS "
            f"{max_dense_elements} >= 0 (0 = always chunked)"
        )


def check_precision(precision: str, device: Optional[str] = None) -> None:
    """Refuse unknown precisions, and fp16 on the CPU (``device`` None: not checked)."""
    if precision not in PRECISION_NAMES:
        raise ClearCLIPError(f"unknown MODEL.CLEARCLIP.PRECISION {precision!r}; valid values: {', '.join(PRECISION_NAMES)}")
    if precision in ("fp16", "fp16_weights") and device is not None and torch.device(device).type == "cpu":
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.PRECISION {precision} needs a CUDA device (MODEL.DEVICE cuda); on the CPU use fp32 or bf16"
        )


# --------------------------------------------------------------------------- refinement
def check_refine(refine: str, pamr_iterations: int, pamr_dilations: Sequence[int]) -> str:
    """``REFINE`` and, for pamr, ``PAMR_ITERATIONS`` / ``PAMR_DILATIONS``; returns the
    refinement's name in lower case."""
    name = str(refine).lower()
    if name not in REFINE_CHOICES:
        raise ClearCLIPError(f"MODEL.CLEARCLIP.REFINE {refine!r} is not one of {', '.join(REFINE_CHOICES)}")
    if name == "pamr":
        if int(pamr_iterations) < 1:
            raise ClearCLIPError(f"MODEL.CLEARCLIP.PAMR_ITERATIONS {pamr_iterations} must be >= 1")
        if not len(pamr_dilations) or any(int(d) < 1 for d in pamr_dilations):
            raise ClearCLIPError(
                f"MODEL.CLEARCLIP.PAMR_DILATIONS {list(pamr_dilations)} must be a non-empty list of positive pixel counts"
            )
    return name


def check_area_threshold(area_threshold: float) -> None:
    """``AREA_THRESHOLD`` in [0, 1) (a fraction of the non-background predicted area; 0 = off)."""
    if not 0.0 <= float(area_threshold) < 1.0:
        raise ClearCLIPError(f"MODEL.CLEARCLIP.AREA_THRESHOLD {area_threshold} must be in [0, 1) (0 = off)")


def check_whole_image_upsample(mode: str) -> None:
    """``WHOLE_IMAGE_UPSAMPLE`` must be one of :data:`~clearclip_d2.constants.WHOLE_IMAGE_UPSAMPLES`."""
    if mode not in WHOLE_IMAGE_UPSAMPLES:
        raise ClearCLIPError(
            f"unknown MODEL.CLEARCLIP.WHOLE_IMAGE_UPSAMPLE {mode!r}; valid values: {', '.join(WHOLE_IMAGE_UPSAMPLES)}"
        )


def check_dense_only_options(refine: bool, area_threshold: float, num_queries: int, out_size, max_dense_elements: int) -> None:
    """Refuse, on the class-chunked path (queries x output pixels above ``MAX_DENSE_ELEMENTS``),
    what needs every class at once: ``REFINE`` (PAMR mixes each query's logits over the image,
    the masks average every class) and ``AREA_THRESHOLD`` (it re-ranks pixels after dropping classes)."""
    fixes = {"REFINE": "REFINE none", "AREA_THRESHOLD": "AREA_THRESHOLD 0"}
    needs = [name for name, used in (("REFINE", refine), ("AREA_THRESHOLD", area_threshold > 0)) if used]
    if needs:
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.{' and '.join(needs)} {'needs' if len(needs) == 1 else 'need'} the whole probability "
            f"map, but {num_queries} queries x {out_size[0]}x{out_size[1]} pixels exceed MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS "
            f"{max_dense_elements}: raise MAX_DENSE_ELEMENTS or set {' and '.join(fixes[n] for n in needs)}"
        )


def check_mask_min_score(min_score: float) -> None:
    """``MASK_MIN_SCORE`` in [0, 1]."""
    if not 0.0 <= float(min_score) <= 1.0:
        raise ClearCLIPError(f"MODEL.CLEARCLIP.MASK_MIN_SCORE {min_score} must be in [0, 1]")


# --------------------------------------------------------------------------- ResCLIP
def check_resclip(resclip) -> None:
    """``MODEL.CLEARCLIP.RESCLIP``: two (tau, lambda) pairs with lambda in [0, 1], a first-pass
    threshold in [0, 1], a positive Gaussian std, first-pass PAMR iterations >= 0 with positive
    dilations, and RCS layers (:func:`check_rcs_layers`)."""
    key = "MODEL.CLEARCLIP.RESCLIP"
    for name in ("RCS_WEIGHTS", "SFR_WEIGHTS"):
        pair = list(getattr(resclip, name))
        if len(pair) != 2 or not 0.0 <= float(pair[1]) <= 1.0:
            raise ClearCLIPError(f"{key}.{name} {pair} must be [tau, lambda] with lambda in [0, 1]")
    if not 0.0 <= float(resclip.FIRST_PASS_THRESHOLD) <= 1.0:
        raise ClearCLIPError(f"{key}.FIRST_PASS_THRESHOLD {resclip.FIRST_PASS_THRESHOLD} must be in [0, 1]")
    if not float(resclip.GAUSSIAN_STD) > 0:
        raise ClearCLIPError(f"{key}.GAUSSIAN_STD {resclip.GAUSSIAN_STD} must be > 0 (patches)")
    dilations = list(resclip.FIRST_PASS_PAMR_DILATIONS)
    if int(resclip.FIRST_PASS_PAMR_ITERATIONS) < 0 or not dilations or any(int(d) < 1 for d in dilations):
        raise ClearCLIPError(
            f"{key}.FIRST_PASS_PAMR_ITERATIONS {resclip.FIRST_PASS_PAMR_ITERATIONS} must be >= 0 (0 = off) and "
            f"FIRST_PASS_PAMR_DILATIONS {dilations} a non-empty list of positive pixel counts"
        )
    check_rcs_layers(resclip.RCS_LAYERS)


def check_rcs_layers(layers: Sequence[int], blocks_before_last: Optional[int] = None) -> None:
    """``MODEL.CLEARCLIP.RESCLIP.RCS_LAYERS``: non-empty, each >= 0 and (if ``blocks_before_last``
    is given, when the model is built) one of the blocks before the last."""
    layers = [int(i) for i in layers]
    limit = blocks_before_last if blocks_before_last is not None else float("inf")
    if not layers or any(not 0 <= i < limit for i in layers):
        valid = f"0..{blocks_before_last - 1}" if blocks_before_last is not None else "indices >= 0"
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.RESCLIP.RCS_LAYERS {layers} must be a non-empty list of blocks before the last "
            f"({valid}, 0-based); set it for this MODEL_NAME"
        )


# --------------------------------------------------------------------------- weights
PICKLED_WEIGHTS_SUFFIX = ".pkl"
TRUST_PICKLED_WEIGHTS_KEY = "MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS"


def check_weights_file(path: str, key: str, trust_pickled: bool = False) -> None:
    """A Detectron2 weights file named by ``key`` (``MODEL.WEIGHTS``, ``MASK_MODEL_WEIGHTS``):
    a local file must exist, and a pickled ``.pkl`` (which can run code when read) needs the
    opt-in ``MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS`` (``trust_pickled``). URLs are not fetched here."""
    if not path:
        return
    if "://" not in path and not os.path.isfile(path):
        raise ClearCLIPError(f"{key} {path} does not exist; give an existing checkpoint file (or leave {key} empty)")
    if path.endswith(PICKLED_WEIGHTS_SUFFIX) and not trust_pickled:
        raise ClearCLIPError(
            f"refusing {key} {path}: a Detectron2 .pkl file is a Python pickle, which can run code when read; "
            f"convert it to a .pth/.safetensors state dict, or, if you trust its source, set "
            f"{TRUST_PICKLED_WEIGHTS_KEY} True"
        )


# --------------------------------------------------------------------------- evaluation
def check_vocabulary_matches_dataset(num_names: int, dataset_name: str, num_classes: int, source: str) -> None:
    """A fixed vocabulary (``CLASS_NAMES_FILE``, ``source``) evaluated on a dataset must have one
    name per dataset class, in the dataset's order: prediction ``i`` is scored as class ``i``."""
    if num_names != num_classes:
        raise ClearCLIPError(
            f"{source} has {num_names} classes but dataset {dataset_name} has {num_classes}; predictions are "
            f"scored by class index, so give one line per dataset class in its order (see its stuff_classes), "
            f"or leave MODEL.CLEARCLIP.CLASS_NAMES_FILE empty to use the dataset's own classes"
        )
