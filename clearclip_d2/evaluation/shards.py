"""Per-image shard store of a resumable evaluation (see :mod:`.resumable`).

Each image's contribution (sparse: the non-zero cells of the confusion matrix and of the boundary
confusion matrix) and its predicted label map (Detectron2's RLE entries of
``sem_seg_predictions.json``) are written, atomically, to one shard file by the process that
evaluated it::

    <output dir>/eval_shards/fingerprint.json      what the shards belong to (:mod:`.fingerprint`)
    <output dir>/eval_shards/images/<id>.json      one image each

Each shard also records the files its result came from (:func:`input_files_identity`): a shard
whose image or label map has changed since is not used, and that image is evaluated again. And
each shard records the digest of the evaluation's fingerprint (:func:`fingerprint_digest`): a
shard of another evaluation (another run that wrote into the same folder) is never counted, nor
is a shard whose counts are not a confusion matrix's (a cell outside the matrix, a negative or
non-integer count: a hand-edited or damaged file).
"""

import functools
import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np

from ..utils.errors import ClearCLIPError
from ..utils.io import atomic_write, atomic_write_json, file_sha256

logger = logging.getLogger(__name__)

SHARD_FOLDER = "eval_shards"
FINGERPRINT_FILE = "fingerprint.json"
# 2: CLIP weights identified as in the text-embedding cache; 3: boundary counts without the uint8
# overflow of earlier versions (their shards are not mixed with new ones: the fingerprint differs)
FORMAT_VERSION = 3

SparseCounts = Tuple[np.ndarray, np.ndarray]  # flat cell indices (unique), counts; both int64


# ----------------------------------------------------------------------------- per-image results
@dataclass
class ImageResult:
    """One image's part of the evaluation.

    Attributes:
        file_name: the image, as in the dataset dict.
        confusion: non-zero cells of the image's (K+1) x (K+1) confusion matrix
            (``pred * (K + 1) + gt``, ignore mapped to K).
        boundary_confusion: the same for the boundary IoU matrix, or None when not computed.
        predictions: Detectron2's RLE entries of the predicted label map.
    """

    file_name: str
    confusion: SparseCounts
    boundary_confusion: Optional[SparseCounts]
    predictions: List[Dict[str, Any]]

    @functools.cached_property
    def predictions_json(self) -> str:
        """``json.dumps(predictions)``: made once, where the result is made (the evaluator's
        background thread), so that writing ``sem_seg_predictions.json`` only joins texts."""
        return json.dumps(self.predictions)


def join_json_lists(texts: Iterable[str]) -> str:
    """The text ``json.dumps`` gives for the concatenation of the lists whose ``json.dumps`` texts
    are ``texts``."""
    return "[" + ", ".join(text[1:-1] for text in texts if text != "[]") + "]"


def sparse_counts(flat_cells: np.ndarray, num_cells: int) -> SparseCounts:
    """Count cell indices: the non-zero entries of ``bincount(flat_cells, minlength=num_cells)``."""
    counts = np.bincount(flat_cells.reshape(-1), minlength=num_cells)
    index = np.flatnonzero(counts)
    return index.astype(np.int64), counts[index].astype(np.int64)


def add_counts(matrix: np.ndarray, counts: Optional[SparseCounts]) -> None:
    """Add sparse counts to a confusion matrix in place."""
    if counts is not None:
        matrix.reshape(-1)[counts[0]] += counts[1]


def result_to_json(result: ImageResult, key: str, num_classes: int) -> Dict[str, Any]:
    def encode(counts):
        return None if counts is None else {"index": counts[0].tolist(), "count": counts[1].tolist()}

    return {
        "format": FORMAT_VERSION,
        "image": key,
        "num_classes": num_classes,
        "confusion": encode(result.confusion),
        "boundary_confusion": encode(result.boundary_confusion),
        "predictions": [{k: v for k, v in entry.items() if k != "file_name"} for entry in result.predictions],
    }


def result_from_json(record: Dict[str, Any], file_name: str) -> ImageResult:
    """The :class:`ImageResult` of a shard record; ``ValueError`` when its counts are not those
    of a ``(K+1) x (K+1)`` confusion matrix (K = ``record["num_classes"]``)."""
    num_cells = (int(record["num_classes"]) + 1) ** 2

    def decode(counts):
        if counts is None:
            return None
        return checked_counts(counts["index"], counts["count"], num_cells)

    predictions = [{"file_name": file_name, **entry} for entry in record["predictions"]]
    return ImageResult(file_name, decode(record["confusion"]), decode(record["boundary_confusion"]), predictions)


def checked_counts(index: List, count: List, num_cells: int) -> SparseCounts:
    """Sparse counts read from a file, refused (``ValueError``) unless every cell index is a
    distinct integer in ``[0, num_cells)`` and every count a positive integer."""
    index_array, count_array = np.asarray(index), np.asarray(count)
    if index_array.ndim != 1 or index_array.shape != count_array.shape:
        raise ValueError("its cell indices and counts do not pair up")
    if len(index_array) and not (np.issubdtype(index_array.dtype, np.integer) and np.issubdtype(count_array.dtype, np.integer)):
        raise ValueError("its cell indices or counts are not integers")
    index_array, count_array = index_array.astype(np.int64), count_array.astype(np.int64)
    if len(index_array) and (index_array.min() < 0 or index_array.max() >= num_cells):
        raise ValueError(f"a cell index is outside the {num_cells} cells of the confusion matrix (a class out of range)")
    if len(count_array) and count_array.min() <= 0:
        raise ValueError("a pixel count is zero or negative")
    if len(np.unique(index_array)) != len(index_array):
        raise ValueError("a cell index appears twice")
    return index_array, count_array


def fingerprint_digest(fingerprint: Dict[str, Any]) -> str:
    """SHA-256 (hex) of a fingerprint's canonical JSON: what every shard of its evaluation records."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True, default=str).encode("utf-8")).hexdigest()


# ----------------------------------------------------------------------------- shard store
def common_folder(paths: Iterable[str]) -> str:
    """The deepest folder that contains all ``paths``."""
    folders = [os.path.dirname(os.path.abspath(p)) for p in paths]
    return os.path.commonpath(folders) if folders else ""


def relative_path(path: str, root: str) -> str:
    return os.path.relpath(os.path.abspath(path), root)


def input_files_identity(image_file: str, label_file: str) -> Dict[str, Any]:
    """What one image's result came from: the image's size in bytes (a re-encoded or repaired
    image changes it) and the SHA-256 of the label map (small, and it defines the metrics)."""
    try:
        image_bytes = os.path.getsize(image_file)
    except OSError:
        image_bytes = None
    return {"image_bytes": image_bytes, "label_sha256": file_sha256(label_file) if os.path.isfile(label_file) else None}


class ShardStore:
    """The per-image shards of one dataset's evaluation, in ``folder``.

    Images are keyed by their path relative to ``image_root`` (the dataset's common folder).
    ``fingerprint_digest``: the :func:`fingerprint_digest` of the evaluation the store serves,
    written into every shard and required of every shard read (set by :mod:`.resumable`).
    """

    def __init__(self, folder: str, image_root: str, fingerprint_digest: Optional[str] = None):
        self.folder = folder
        self.image_root = image_root
        self.images_folder = os.path.join(folder, "images")
        self.fingerprint_digest = fingerprint_digest

    def key(self, file_name: str) -> str:
        return relative_path(file_name, self.image_root)

    def shard_path_of_key(self, key: str) -> str:
        digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:24]
        return os.path.join(self.images_folder, f"{digest}.json")

    def write(self, result: ImageResult, num_classes: int, label_file: str) -> None:
        """Write one image's shard atomically (a killed run leaves it whole or absent). Not
        synced to the disk (an fsync per image costs more than the rest of the evaluator's
        work): after a crash of the machine a shard may be empty, and :meth:`load` ignores it."""
        key = self.key(result.file_name)
        record = result_to_json(result, key, num_classes)
        record["files"] = input_files_identity(result.file_name, label_file)
        record["fingerprint"] = self.fingerprint_digest
        with atomic_write(self.shard_path_of_key(key), "w", durable=False) as f:
            f.write(json.dumps(record, separators=(",", ":")))

    def load(self, dataset_dicts: Iterable[Dict], num_classes: int) -> Dict[str, ImageResult]:
        """The stored results of the images that have a usable shard, by file name.

        A shard that cannot be read, holds another image or class count, belongs to another
        evaluation (fingerprint digest), holds impossible counts, or whose image or label map
        changed since it was written is not used (its image is evaluated again).
        """
        done = {}
        for record in dataset_dicts:
            file_name = record["file_name"]
            key = self.key(file_name)
            path = self.shard_path_of_key(key)
            if not os.path.isfile(path):
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    shard = json.load(f)
                if shard.get("image") != key or shard.get("num_classes") != num_classes:
                    raise ValueError("it belongs to another image or class count")
                if shard.get("fingerprint") != self.fingerprint_digest:
                    raise ValueError("it belongs to another evaluation (fingerprint)")
                result = result_from_json(shard, file_name)
            except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
                logger.warning(f"Ignoring shard {path} ({e}); {file_name} will be evaluated again")
                continue
            if shard.get("files") != input_files_identity(file_name, record["sem_seg_file_name"]):
                logger.warning(f"{file_name} or its label map changed since it was evaluated; evaluating it again")
                continue
            done[file_name] = result
        return done

    def count(self) -> int:
        """Number of shards on disk (all processes)."""
        if not os.path.isdir(self.images_folder):
            return 0
        return sum(1 for name in os.listdir(self.images_folder) if name.endswith(".json"))

    def read_fingerprint(self) -> Optional[Dict[str, Any]]:
        path = os.path.join(self.folder, FINGERPRINT_FILE)
        try:
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            raise ClearCLIPError(
                f"cannot read {path} ({e}); delete {self.folder} to start the evaluation afresh"
            ) from e

    def start_afresh(self, fingerprint: Dict[str, Any]) -> None:
        """Remove every shard, then record the fingerprint of the new evaluation."""
        shutil.rmtree(self.images_folder, ignore_errors=True)
        os.makedirs(self.images_folder, exist_ok=True)
        atomic_write_json(os.path.join(self.folder, FINGERPRINT_FILE), fingerprint)
