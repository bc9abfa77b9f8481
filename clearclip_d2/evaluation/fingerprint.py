"""The fingerprint of an evaluation: what its results depend on.

A resume (``--resume-eval``) with another fingerprint than the stored one is refused, never
mixed. The fingerprint covers:

* config: every ``MODEL.*`` and ``INPUT.*`` key except those that only change speed or memory
  (:data:`RESULT_NEUTRAL_KEYS`), with the device type; the dataset name, its classes and
  ignore label; the content of ``CLASS_NAMES_FILE`` and of a model-config JSON; this package's
  version;
* weights: the SHA-256 of the checkpoint file (``PRETRAINED``, ProxyCLIP's ``PROXY.PRETRAINED``
  and ``MODEL.WEIGHTS``), or the open_clip tag (timm's "timm"), or "random";
* dataset: the names of its images and label maps, relative to their folders (so the dataset
  may move, e.g. to another ``DETECTRON2_DATASETS``, between runs).
"""

import hashlib
import json
import os
from typing import Any, Dict, List, Optional

from detectron2.data import MetadataCatalog

from ..utils.io import file_sha256
from .shards import FORMAT_VERSION, common_folder, relative_path

# Keys that change speed or memory only: changing them between a run and its resume is allowed.
RESULT_NEUTRAL_KEYS = frozenset(
    {
        "MODEL.CLEARCLIP.WINDOW_BATCH",
        "MODEL.CLEARCLIP.TEXT_BATCH_SIZE",
        "MODEL.CLEARCLIP.CLASS_CHUNK",
        "MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS",
        "MODEL.CLEARCLIP.WEIGHTS_CACHE_DIR",
        "MODEL.CLEARCLIP.CACHE_DIR",
        "MODEL.CLEARCLIP.PRETRAINED_SHA256",
        "MODEL.CLEARCLIP.TRUST_PICKLED_WEIGHTS",
        # Stand for weights: the fingerprint holds the file hashes instead of the paths.
        "MODEL.CLEARCLIP.PRETRAINED",
        "MODEL.CLEARCLIP.PROXY.PRETRAINED",
        "MODEL.WEIGHTS",
    }
)


def evaluation_fingerprint(cfg, dataset_name: str, dataset_dicts: List[Dict]) -> Dict[str, Any]:
    """What the results of evaluating ``dataset_name`` with ``cfg`` depend on (JSON-able)."""
    return {
        "format": FORMAT_VERSION,
        "config": result_relevant_config(cfg, dataset_name),
        "weights": weights_identity(cfg),
        "dataset": dataset_identity(dataset_dicts),
    }


def flatten_config(node, prefix: str) -> Dict[str, Any]:
    """``{"MODEL.CLEARCLIP.LOGIT_SCALE": 50.0, ...}`` for a CfgNode."""
    flat = {}
    for key, value in node.items():
        name = f"{prefix}.{key}"
        if hasattr(value, "items"):
            flat.update(flatten_config(value, name))
        else:
            flat[name] = list(value) if isinstance(value, tuple) else value
    return flat


def result_relevant_config(cfg, dataset_name: str) -> Dict[str, Any]:
    from ..constants import __version__

    config = {**flatten_config(cfg.MODEL, "MODEL"), **flatten_config(cfg.INPUT, "INPUT")}
    config = {key: value for key, value in config.items() if key not in RESULT_NEUTRAL_KEYS}
    config["MODEL.DEVICE"] = str(cfg.MODEL.DEVICE).split(":")[0]
    cc = cfg.MODEL.get("CLEARCLIP")
    if cc is not None:
        if cc.MODEL_NAME.endswith(".json") and os.path.isfile(cc.MODEL_NAME):
            config["MODEL.CLEARCLIP.MODEL_NAME"] = f"{os.path.basename(cc.MODEL_NAME)} sha256 {file_sha256(cc.MODEL_NAME)}"
        if cc.CLASS_NAMES_FILE:
            config["MODEL.CLEARCLIP.CLASS_NAMES_FILE"] = f"sha256 {file_sha256(cc.CLASS_NAMES_FILE)}"
    meta = MetadataCatalog.get(dataset_name)
    config["dataset"] = dataset_name
    config["dataset stuff_classes"] = list(meta.get("stuff_classes") or [])
    config["dataset ignore_label"] = meta.get("ignore_label")
    config["clearclip_d2 version"] = __version__
    return json.loads(json.dumps(config, default=str))


def weights_identity(cfg) -> Dict[str, str]:
    """The weights' identity: file hashes, an open_clip tag, or "random"."""
    identity = {}
    cc = cfg.MODEL.get("CLEARCLIP")
    if cc is not None:
        from ..modeling.clip.loading import resolve_architecture, weights_identity as clip_weights

        identity["MODEL.CLEARCLIP.PRETRAINED"] = clip_weights(resolve_architecture(cc.MODEL_NAME), cc.PRETRAINED)
        if cc.ENCODER == "proxyclip":  # the VFM's weights: a file's hash, "timm" (timm's own) or random
            vfm = cc.PROXY.PRETRAINED
            identity["MODEL.CLEARCLIP.PROXY.PRETRAINED"] = f"sha256 {file_sha256(vfm)}" if os.path.isfile(vfm) else vfm or "random"
    if cfg.MODEL.WEIGHTS:
        weights = cfg.MODEL.WEIGHTS
        identity["MODEL.WEIGHTS"] = f"sha256 {file_sha256(weights)}" if os.path.isfile(weights) else weights
    return identity


def dataset_identity(dataset_dicts: List[Dict]) -> Dict[str, Any]:
    """Image count and a digest of the image and label-map names, relative to their folders."""
    image_root = common_folder(d["file_name"] for d in dataset_dicts)
    label_root = common_folder(d["sem_seg_file_name"] for d in dataset_dicts)
    names = [[relative_path(d["file_name"], image_root), relative_path(d["sem_seg_file_name"], label_root)] for d in dataset_dicts]
    return {"images": len(names), "sha256": hashlib.sha256(json.dumps(names).encode("utf-8")).hexdigest()}


def fingerprint_difference(stored: Dict[str, Any], current: Dict[str, Any]) -> Optional[str]:
    """A short description of the first differences, or None when the fingerprints agree."""
    if stored == current:
        return None
    differences = []
    for part in ("config", "weights"):
        old, new = stored.get(part) or {}, current.get(part) or {}
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                differences.append(f"{part} {key}: {_short(old.get(key))} -> {_short(new.get(key))}")
    if stored.get("dataset") != current.get("dataset"):
        old, new = stored.get("dataset") or {}, current.get("dataset") or {}
        differences.append(
            f"dataset: {old.get('images')} images -> {new.get('images')} images"
            + ("" if old.get("images") != new.get("images") else " with other names")
        )
    if not differences:
        differences.append(f"format {stored.get('format')} -> {current.get('format')}")
    more = f" (and {len(differences) - 3} more)" if len(differences) > 3 else ""
    return "; ".join(differences[:3]) + more


def _short(value, limit: int = 60) -> str:
    text = "missing" if value is None else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
