"""Disk cache of the class-query text embeddings (``MODEL.CLEARCLIP.CACHE_DIR``).

Embedding a vocabulary is 80 templates x every query through the text tower (COCO-Stuff:
13,680 prompts, minutes on a CPU); the result depends only on the model, its weights, the
templates and the queries, so it is computed once and stored as
``<CACHE_DIR>/<key>.safetensors``, ``key`` the SHA-256 of all four:

- model: the open_clip model-config JSON content (the architecture, named or from a file)
  and ``FORCE_QUICK_GELU``;
- weights: random (seed 0), a pretrained tag (with its source in open_clip's table), or a
  checkpoint file by the SHA-256 of its content. The content hash, not size + mtime: a
  rewritten file of the same size is caught, and the hash is computed once per process
  (seconds for ViT-L, against minutes of text embedding; shared with ``PRETRAINED_SHA256``);
- templates and queries (every synonym, in order).

Files are written atomically (temporary file + rename), so concurrent ranks writing the same
entry leave one whole file. On load the stored key, shape, dtype and unit norms are checked:
a corrupt, truncated or foreign file is rebuilt with a warning, never used. A cache folder
that cannot be written only costs a warning. The default folder is
:func:`~clearclip_d2.constants.default_text_cache_dir`.
"""

import hashlib
import json
import logging
import os
from typing import Callable, Dict, Optional, Sequence

import open_clip
import torch

from ...utils.io import atomic_write
from .loading import weights_identity
from .precision import WEIGHT_DTYPES

logger = logging.getLogger(__name__)

CACHE_FORMAT = "clearclip_d2.text_embeddings.v1"
TENSOR_NAME = "text_embeddings"


def model_identity(arch: str, pretrained: str, force_quick_gelu: bool) -> Dict:
    """The model part of the cache key: architecture config, QuickGELU switch, weights."""
    return {
        "architecture": arch,
        "model_config": open_clip.get_model_config(arch),
        "force_quick_gelu": bool(force_quick_gelu),
        "weights": weights_identity(arch, pretrained),
    }


def text_cache_key(model: Dict, templates: Sequence[str], queries: Sequence[str]) -> str:
    """SHA-256 (hex) of the model identity, the templates and the queries (order matters)."""
    content = {"format": CACHE_FORMAT, "model": model, "templates": list(templates), "queries": list(queries)}
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode("utf-8")).hexdigest()


class TextEmbeddingCache:
    """Text embeddings of one model on disk, one file per (templates, queries).

    Args:
        directory: the cache folder (``~`` is expanded; created on the first write).
        model: :func:`model_identity` of the CLIP model.
    """

    def __init__(self, directory: str, model: Dict):
        self.directory = os.path.expanduser(directory)
        self.model = model

    @classmethod
    def from_config(cls, cfg, arch: str) -> Optional["TextEmbeddingCache"]:
        """The cache of ``MODEL.CLEARCLIP.CACHE_DIR``, or None when it is "" (disabled)."""
        cc = cfg.MODEL.CLEARCLIP
        if not cc.CACHE_DIR:
            return None
        identity = model_identity(arch, cc.PRETRAINED, cc.FORCE_QUICK_GELU)
        if cc.PRECISION in WEIGHT_DTYPES:  # the text tower runs in these weights too (other keys unchanged)
            identity["weights_precision"] = cc.PRECISION
        return cls(cc.CACHE_DIR, identity)

    def path(self, key: str) -> str:
        return os.path.join(self.directory, f"{key}.safetensors")

    def get_or_build(
        self, templates: Sequence[str], queries: Sequence[str], build: Callable[[], torch.Tensor]
    ) -> torch.Tensor:
        """The [Q, D] embeddings from the cache, or ``build()`` them and store them.

        Returns a float32 CPU tensor when read from disk, else what ``build`` returned.
        """
        key = text_cache_key(self.model, templates, queries)
        path = self.path(key)
        cached = self.load(path, key, len(queries)) if os.path.exists(path) else None
        if cached is not None:
            logger.info(f"Text embeddings of {len(queries)} queries read from the cache {path}")
            return cached
        embeddings = build()
        self.store(path, key, embeddings)
        return embeddings

    def load(self, path: str, key: str, num_queries: int) -> Optional[torch.Tensor]:
        """The embeddings in ``path`` if it is a whole, matching entry; else None (warned)."""
        try:
            from safetensors import safe_open

            with safe_open(path, framework="pt", device="cpu") as f:
                metadata = f.metadata() or {}
                tensor = f.get_tensor(TENSOR_NAME)
        except Exception as e:  # truncated or foreign files fail in many ways
            logger.warning(f"text-embedding cache file {path} is unreadable ({type(e).__name__}: {e}); rebuilding it")
            return None
        problem = entry_problem(metadata, tensor, key, num_queries)
        if problem:
            logger.warning(f"text-embedding cache file {path} is not valid ({problem}); rebuilding it")
            return None
        return tensor

    def store(self, path: str, key: str, embeddings: torch.Tensor) -> None:
        """Write ``embeddings`` with its key, shape and dtype, atomically; warn on failure."""
        from safetensors.torch import save

        tensor = embeddings.detach().float().cpu().contiguous()
        metadata = {"format": CACHE_FORMAT, "key": key, "shape": json.dumps(list(tensor.shape)), "dtype": "float32"}
        try:
            with atomic_write(path, "wb") as f:
                f.write(save({TENSOR_NAME: tensor}, metadata=metadata))
        except OSError as e:
            logger.warning(f"cannot write the text-embedding cache {path} ({e}); set MODEL.CLEARCLIP.CACHE_DIR (\"\" = off)")


def entry_problem(metadata: Dict[str, str], tensor: torch.Tensor, key: str, num_queries: int) -> str:
    """Why a cache entry cannot be used ("" if it can): key, shape, dtype, finite unit rows."""
    if metadata.get("format") != CACHE_FORMAT or metadata.get("key") != key:
        return "written for another model, vocabulary or templates"
    if metadata.get("shape") != json.dumps(list(tensor.shape)) or metadata.get("dtype") != "float32":
        return f"stored shape/dtype {metadata.get('shape')}/{metadata.get('dtype')} do not match the tensor"
    if tensor.dtype != torch.float32 or tensor.ndim != 2 or tensor.shape[0] != num_queries:
        return f"tensor {tuple(tensor.shape)} {tensor.dtype}, expected [{num_queries}, D] float32"
    norms = tensor.norm(dim=-1)
    if not bool(torch.isfinite(tensor).all()) or not bool(torch.allclose(norms, torch.ones_like(norms), atol=1e-3)):
        return "rows are not finite unit vectors"
    return ""
