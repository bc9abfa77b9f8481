"""Class-agnostic masks from any Detectron2 model, for ``MODEL.CLEARCLIP.REFINE masks``.

The mask model is given by its own config (``MASK_MODEL_CONFIG``: a YAML file, or a name in
Detectron2's model zoo such as ``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml``) and
weights (``MASK_MODEL_WEIGHTS``). Its classes are ignored; only its masks are used:

* ``panoptic_seg`` (Panoptic FPN, Panoptic-DeepLab, Mask2Former): every segment;
* else ``instances`` with ``pred_masks`` (Mask R-CNN, PointRend, ...): every instance;
* else ``sem_seg``: the region of every predicted class.

Masks with a score below ``MASK_MIN_SCORE`` are dropped (panoptic stuff segments and semantic
regions have no score and count as 1). ClearCLIP's probabilities are averaged inside each mask
(:func:`refine_with_masks`); pixels outside every mask keep their own.
"""

import importlib
import logging
import os
from typing import Dict, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ...checks import check_input_format, check_mask_min_score, check_weights_file, register_config_check
from ...utils.errors import ClearCLIPError

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = "random"
MASK_WEIGHTS_KEY = "MODEL.CLEARCLIP.MASK_MODEL_WEIGHTS"
EXAMPLE_ZOO_CONFIG = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x.yaml"


# --------------------------------------------------------------------------- averaging in masks
def assign_pixels_to_masks(masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Which mask each pixel belongs to, masks overlapping.

    Args:
        masks: [M, H, W] bool.
        scores: [M] confidence of each mask.
    Returns:
        [H, W] int64: the index of the highest-scoring mask covering the pixel (equal scores:
        the lower index), -1 where no mask covers it.
    """
    if masks.shape[0] == 0:
        return torch.full(masks.shape[-2:], -1, dtype=torch.long, device=masks.device)
    ranked = torch.where(masks, scores.float().view(-1, 1, 1), torch.tensor(float("-inf"), device=masks.device))
    owner = ranked.argmax(dim=0)  # the first of equal maxima
    return torch.where(masks.any(dim=0), owner, torch.full_like(owner, -1))


def average_in_regions(probs: torch.Tensor, regions: torch.Tensor) -> torch.Tensor:
    """Replace the probabilities of every region by their mean over the region.

    Args:
        probs: [K, H, W].
        regions: [H, W] int64 region index, -1 = no region (pixel kept as it is).
    Returns:
        [K, H, W].
    """
    num_classes = probs.shape[0]
    flat, ids = probs.reshape(num_classes, -1), regions.reshape(-1).to(probs.device)
    inside = ids >= 0
    if not bool(inside.any()):
        return probs.clone()
    ids_inside = ids[inside]
    num_regions = int(ids_inside.max()) + 1
    sums = flat.new_zeros((num_classes, num_regions)).index_add_(1, ids_inside, flat[:, inside])
    counts = torch.bincount(ids_inside, minlength=num_regions).clamp(min=1).to(flat.dtype)
    out = flat.clone()
    out[:, inside] = (sums / counts)[:, ids_inside]
    return out.view_as(probs)


def refine_with_masks(probs: torch.Tensor, masks: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """``REFINE masks``: each pixel goes to the highest-scoring mask that covers it
    (:func:`assign_pixels_to_masks`); the probabilities are averaged over the pixels of each
    mask; pixels outside every mask keep their own. probs [K, H, W], masks [M, H, W] bool."""
    return average_in_regions(probs, assign_pixels_to_masks(masks.to(probs.device), scores.to(probs.device)))


# --------------------------------------------------------------------------- the mask model
def model_zoo_config_dir() -> str:
    """The folder of Detectron2's model-zoo configs (found without importing
    ``detectron2.model_zoo``, which needs ``pkg_resources``)."""
    import detectron2

    return os.path.join(os.path.dirname(os.path.abspath(detectron2.__file__)), "model_zoo", "configs")


def resolve_mask_model_config(path: str) -> str:
    """A config file path, or a model-zoo config name turned into its file."""
    key = "MODEL.CLEARCLIP.MASK_MODEL_CONFIG"
    if not path:
        raise ClearCLIPError(f"REFINE masks needs {key}: a Detectron2 config file or a model-zoo name such as {EXAMPLE_ZOO_CONFIG}")
    if path.endswith(".py"):
        raise ClearCLIPError(f"{key} {path}: LazyConfig (.py) files are not supported; give a YAML config")
    if os.path.isfile(path):
        return path
    zoo_path = os.path.join(model_zoo_config_dir(), path)
    if os.path.isfile(zoo_path):
        return zoo_path
    raise ClearCLIPError(
        f"{key} {path} does not exist (neither a file nor a Detectron2 model-zoo config such as {EXAMPLE_ZOO_CONFIG})"
    )


def call_config_hook(hook: str, cfg) -> None:
    """``MASK_MODEL_ADD_CONFIG`` ``"package.module:function"``: import it (which also registers the
    project's models) and call ``function(cfg)`` to add the project's config keys."""
    module_name, _, function_name = hook.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError, ValueError) as e:
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.MASK_MODEL_ADD_CONFIG {hook!r}: cannot import it ({e}); give 'package.module:function', "
            "e.g. 'mask2former:add_maskformer2_config'"
        ) from e
    function(cfg)


def load_mask_model_config(config: str, weights: str, device: str = "cpu", add_config: str = "", trust_pickled: bool = False):
    """The mask model's Detectron2 config (frozen), with the weights to load in ``MODEL.WEIGHTS``
    ("" = random weights). Everything is checked; nothing is built. ``trust_pickled``:
    ``MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS`` (a Detectron2 ``.pkl`` is refused without it)."""
    from detectron2.config import get_cfg
    from detectron2.modeling import META_ARCH_REGISTRY

    path = resolve_mask_model_config(config)
    cfg = get_cfg()
    if add_config:
        call_config_hook(add_config, cfg)
    try:
        cfg.merge_from_file(path)
    except (KeyError, ValueError, AssertionError, TypeError, OSError) as e:
        raise ClearCLIPError(
            f"bad MODEL.CLEARCLIP.MASK_MODEL_CONFIG {path}: {e} (keys of another project need "
            "MODEL.CLEARCLIP.MASK_MODEL_ADD_CONFIG)"
        ) from e
    meta_arch = cfg.MODEL.META_ARCHITECTURE
    if meta_arch == "ClearCLIPSegmentor":
        raise ClearCLIPError(f"MODEL.CLEARCLIP.MASK_MODEL_CONFIG {path} is a ClearCLIP config; give a model that predicts masks")
    if meta_arch not in META_ARCH_REGISTRY:
        raise ClearCLIPError(
            f"mask model {path}: META_ARCHITECTURE {meta_arch!r} is not registered; import its project "
            "(MODEL.CLEARCLIP.MASK_MODEL_ADD_CONFIG does it)"
        )
    check_input_format(cfg.INPUT.FORMAT, owner=f"mask model {path}")
    cfg.MODEL.WEIGHTS = resolve_mask_model_weights(weights, cfg.MODEL.WEIGHTS, path)
    check_weights_file(cfg.MODEL.WEIGHTS, MASK_WEIGHTS_KEY, trust_pickled)
    cfg.MODEL.DEVICE = device
    cfg.freeze()
    return cfg


def resolve_mask_model_weights(weights: str, config_weights: str, config_path: str) -> str:
    """``MASK_MODEL_WEIGHTS``: a file or URL; ``""`` = the mask config's ``MODEL.WEIGHTS``;
    ``"random"`` = no weights (tests). Returns what to load ("" = nothing)."""
    key = MASK_WEIGHTS_KEY
    if weights == RANDOM_WEIGHTS:
        return ""
    if not weights:
        if not config_weights or "ImageNetPretrained" in config_weights:
            raise ClearCLIPError(
                f"mask model {config_path} has no trained weights (its MODEL.WEIGHTS is {config_weights!r}); set {key} "
                "to a checkpoint (file or detectron2:// URL), or 'random' for an untrained model"
            )
        weights = config_weights
    return weights


def build_mask_model(mask_cfg, trust_pickled: bool = False) -> nn.Module:
    """Build the mask model of a config from :func:`load_mask_model_config`, load its weights
    (tensors only; a ``.pkl`` only with ``trust_pickled``), eval mode."""
    from detectron2.modeling import build_model

    from ..checkpoint import load_weights

    model = build_model(mask_cfg)
    if mask_cfg.MODEL.WEIGHTS:
        try:
            load_weights(model, mask_cfg.MODEL.WEIGHTS, trust_pickled, key=MASK_WEIGHTS_KEY)
        except ClearCLIPError:
            raise
        except Exception as e:  # fvcore raises AssertionError / OSError alike
            raise ClearCLIPError(
                f"cannot load the mask model weights {mask_cfg.MODEL.WEIGHTS}: {type(e).__name__}: {e}"
            ) from e
    else:
        logger.warning("The mask model has random weights (MASK_MODEL_WEIGHTS 'random'): its masks are meaningless")
    return model.eval()


def class_agnostic_masks(output: Dict, min_score: float) -> Tuple[torch.Tensor, torch.Tensor]:
    """Masks of one Detectron2 output dict: ([M, H, W] bool, [M] float scores), low scores dropped."""
    if "panoptic_seg" in output:
        masks, scores = _panoptic_masks(*output["panoptic_seg"])
    elif "instances" in output:
        instances = output["instances"]
        if not instances.has("pred_masks"):
            raise ClearCLIPError(
                "the mask model predicts boxes without masks; choose an instance or panoptic segmentation model"
            )
        masks = instances.pred_masks
        masks = masks if masks.dtype == torch.bool else masks > 0.5
        scores = instances.scores.float() if instances.has("scores") else torch.ones(len(masks), device=masks.device)
    elif "sem_seg" in output:
        labels = output["sem_seg"].argmax(dim=0)
        masks = labels[None] == labels.unique()[:, None, None]
        scores = torch.ones(len(masks), device=masks.device)
    else:
        raise ClearCLIPError(
            f"the mask model's output has none of panoptic_seg, instances, sem_seg (got {', '.join(output)})"
        )
    keep = scores >= min_score
    return masks[keep], scores[keep]


def _panoptic_masks(segments: torch.Tensor, segments_info: Optional[list]) -> Tuple[torch.Tensor, torch.Tensor]:
    """Detectron2's panoptic format: ids with ``segments_info`` (id 0 = no segment), or, when
    it is None, every value except -1 is a segment."""
    if segments_info is None:
        ids = [int(i) for i in segments.unique() if int(i) != -1]
        scores = [1.0] * len(ids)
    else:
        ids = [int(info["id"]) for info in segments_info]
        scores = [float(info.get("score", 1.0)) for info in segments_info]
    ids_tensor = torch.tensor(ids, dtype=segments.dtype, device=segments.device)
    masks = segments[None] == ids_tensor.view(-1, 1, 1)
    return masks, torch.tensor(scores, device=segments.device)


class MaskModelRefiner(nn.Module):
    """``REFINE masks``: run the mask model on the image, average ClearCLIP's probabilities in its masks.

    The mask model gets the image ClearCLIP saw (resized to ``INPUT.MIN_SIZE_TEST``), resized
    again with its own test size (``ResizeShortestEdge`` of its config, as Detectron2's
    ``DefaultPredictor`` does) and in its own channel order; it predicts at the output size.
    """

    # What it refines (see refinement/__init__.py): the per-class probabilities [K, H, W].
    refines = "probabilities"

    def __init__(self, model: nn.Module, model_format: str, min_size: int, max_size: int, input_format: str, min_score: float):
        super().__init__()
        from detectron2.data import transforms as T

        self.model = model
        self.model_format = model_format
        self.input_format = input_format
        self.min_score = float(min_score)
        self.resize = T.ResizeShortestEdge([min_size, min_size], max_size) if min_size > 0 else None

    @classmethod
    def from_clearclip_config(cls, cfg) -> "MaskModelRefiner":
        cc = cfg.MODEL.CLEARCLIP
        check_mask_min_score(cc.MASK_MIN_SCORE)
        mask_cfg = load_mask_model_config(
            cc.MASK_MODEL_CONFIG, cc.MASK_MODEL_WEIGHTS, cfg.MODEL.DEVICE, cc.MASK_MODEL_ADD_CONFIG, cc.TRUST_PICKLED_WEIGHTS
        )
        return cls(
            build_mask_model(mask_cfg, cc.TRUST_PICKLED_WEIGHTS),
            mask_cfg.INPUT.FORMAT,
            mask_cfg.INPUT.MIN_SIZE_TEST,
            mask_cfg.INPUT.MAX_SIZE_TEST,
            cfg.INPUT.FORMAT,
            cc.MASK_MIN_SCORE,
        )

    def predict_masks(self, image: torch.Tensor, out_size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """image uint8 [3, h, w] in ClearCLIP's ``INPUT.FORMAT`` -> ([M, *out_size] bool, [M] scores)."""
        array = image.permute(1, 2, 0).cpu().numpy()
        if self.model_format != self.input_format:
            array = array[:, :, ::-1]
        if self.resize is not None:
            array = self.resize.get_transform(array).apply_image(array)
        tensor = torch.as_tensor(np.ascontiguousarray(array.transpose(2, 0, 1)))
        output = self.model([{"image": tensor, "height": out_size[0], "width": out_size[1]}])[0]
        masks, scores = class_agnostic_masks(output, self.min_score)
        if tuple(masks.shape[-2:]) != tuple(out_size):
            raise ClearCLIPError(
                f"the mask model predicted {tuple(masks.shape[-2:])} masks for an output of {tuple(out_size)}; "
                "it must honour the input's height/width"
            )
        return masks, scores

    def forward(self, probs: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        """probs [K, H, W]; image uint8 [3, h, w] -> [K, H, W] averaged inside the masks."""
        masks, scores = self.predict_masks(image, tuple(probs.shape[-2:]))
        return refine_with_masks(probs, masks, scores)


@register_config_check
def check_mask_model_config(cfg) -> None:
    """With ``REFINE masks``: check its keys (config file, project hook, weights) without
    building anything; other refinements need nothing here."""
    cc = cfg.MODEL.CLEARCLIP
    if str(cc.REFINE).lower() != "masks":
        return
    check_mask_min_score(cc.MASK_MIN_SCORE)
    load_mask_model_config(
        cc.MASK_MODEL_CONFIG, cc.MASK_MODEL_WEIGHTS, cfg.MODEL.DEVICE, cc.MASK_MODEL_ADD_CONFIG, cc.TRUST_PICKLED_WEIGHTS
    )
