"""Build an open_clip model from ``MODEL.CLEARCLIP.MODEL_NAME`` / ``PRETRAINED``.

``MODEL_NAME`` is an open_clip architecture name (``ViT-B-16``) or the path of an open_clip
model-config JSON file. ``PRETRAINED`` is an open_clip pretrained tag (``openai``), a local
checkpoint file, or empty for random weights.

open_clip builds the model, finds and downloads the tagged weights and converts third-party
state dicts (``open_clip.convert.convert_state_dict``). On top of it this module keeps three
guarantees: the checkpoint file is read as tensors only (safetensors, or
``torch.load(weights_only=True)``), which ``open_clip.load_checkpoint`` does not promise for
every format (open_clip 3.x retries ``torch.load`` without ``weights_only`` on a
``TypeError`` and accepts TorchScript archives); ``PRETRAINED_SHA256`` is checked before the
file is read; QuickGELU is switched on for weights that were trained with it (open_clip only
warns). A checkpoint must then fit the architecture key by key and shape by shape.
"""

import json
import logging
import os
import socket
from typing import Any, Callable, Dict, List, Optional, Tuple

import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.pretrained import download_pretrained, get_pretrained_cfg, list_pretrained_tags_by_model
from torch import nn

from ...checks import register_config_check
from ...utils.errors import ClearCLIPError
from ...utils.io import file_sha256

logger = logging.getLogger(__name__)

RANDOM_WEIGHTS = ("", "none", "random")
CHECKPOINT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
HF_HOST = "huggingface.co"


def build_clip_model(
    model_name: str,
    pretrained: str,
    force_quick_gelu: bool = False,
    cache_dir: Optional[str] = None,
    expected_sha256: str = "",
    precision: str = "fp32",
) -> Tuple[nn.Module, Callable, str]:
    """Create the open_clip model, load its weights, and return ``(model, tokenizer, arch)``.

    The model is in eval mode, frozen, on the CPU, in fp32 -- or, for ``precision``
    "fp16_weights" (the authors' numerics), in open_clip's ``precision="fp16"``: fp16 weights,
    LayerNorm computed in fp32. ``arch`` is the resolved open_clip architecture name.
    ``expected_sha256``: if given, the checkpoint file must have this hash.
    """
    arch = resolve_architecture(model_name)
    checkpoint, quick_gelu = resolve_checkpoint(arch, pretrained, cache_dir)
    with torch.random.fork_rng(devices=[]):
        # Random weights are the same in every process and every run (seed 0).
        torch.manual_seed(0)
        model = open_clip.create_model(
            arch, pretrained=None, force_quick_gelu=force_quick_gelu or quick_gelu,
            precision="fp16" if precision == "fp16_weights" else "fp32",
        )
    if checkpoint is None:
        logger.warning(f"CLIP model {arch} has RANDOM weights (seed 0; MODEL.CLEARCLIP.PRETRAINED is empty)")
    else:
        if expected_sha256:
            check_checkpoint_hash(checkpoint, expected_sha256)
        load_checkpoint_strictly(model, checkpoint)
        logger.info(f"Loaded CLIP weights for {arch} from {checkpoint}")
    model.eval().requires_grad_(False)
    return model, open_clip.get_tokenizer(arch), arch


def build_clip_model_from_config(cfg) -> Tuple[nn.Module, Callable, str]:
    """:func:`build_clip_model` with the weights keys of ``MODEL.CLEARCLIP`` (``MODEL_NAME``,
    ``PRETRAINED``, ``FORCE_QUICK_GELU``, ``WEIGHTS_CACHE_DIR``, ``PRETRAINED_SHA256``, ``PRECISION``)."""
    cc = cfg.MODEL.CLEARCLIP
    return build_clip_model(
        cc.MODEL_NAME,
        cc.PRETRAINED,
        force_quick_gelu=cc.FORCE_QUICK_GELU,
        cache_dir=cc.WEIGHTS_CACHE_DIR or None,
        expected_sha256=cc.PRETRAINED_SHA256,
        precision=cc.PRECISION,
    )


def weights_identity(arch: str, pretrained: str) -> Dict[str, str]:
    """What identifies the weights of ``PRETRAINED`` (text-embedding cache key, evaluation
    fingerprint): a checkpoint file by its content hash, an open_clip tag by tag and source, or
    random weights by their seed."""
    kind = check_pretrained(arch, pretrained)
    if kind == "random":
        return {"kind": "random", "seed": "0"}
    if kind == "file":
        return {"kind": "file", "sha256": file_sha256(pretrained)}
    tag_cfg = get_pretrained_cfg(arch, pretrained)
    return {"kind": "tag", "tag": pretrained, "source": str(tag_cfg.get("hf_hub") or tag_cfg.get("url", ""))}


def supported_architectures() -> List[str]:
    """open_clip architectures whose image tower is a plain ViT this plugin can decompose."""
    return [name for name in open_clip.list_models() if _is_plain_vit(open_clip.get_model_config(name) or {})]


def _is_plain_vit(model_cfg: Dict) -> bool:
    vision = model_cfg.get("vision_cfg", {})
    return (
        "timm_model_name" not in vision
        and isinstance(vision.get("layers", 12), int)
        and not vision.get("attentional_pool", False)
        and not model_cfg.get("multimodal_cfg")
    )


def resolve_architecture(model_name: str) -> str:
    """Return the open_clip architecture name for a name or a model-config JSON path."""
    if model_name.endswith(".json") or os.path.sep in model_name:
        return _register_json_config(model_name)
    arch = model_name.replace("/", "-")
    model_cfg = open_clip.get_model_config(arch)
    if model_cfg is None:
        raise ClearCLIPError(
            f"unknown MODEL.CLEARCLIP.MODEL_NAME {model_name!r}; valid open_clip ViT names: "
            f"{', '.join(supported_architectures())} (or the path of an open_clip model-config .json)"
        )
    if not _is_plain_vit(model_cfg):
        raise ClearCLIPError(
            f"MODEL.CLEARCLIP.MODEL_NAME {model_name!r} is not a plain open_clip ViT (timm, ResNet or "
            f"attention-pooled towers cannot be decomposed); use one of: {', '.join(supported_architectures())}"
        )
    return arch


def _register_json_config(path: str) -> str:
    if not os.path.isfile(path):
        raise ClearCLIPError(f"model-config file {path} (MODEL.CLEARCLIP.MODEL_NAME) does not exist")
    try:
        with open(path, encoding="utf-8") as f:
            model_cfg = json.load(f)
    except (OSError, ValueError) as e:
        raise ClearCLIPError(f"cannot read model-config JSON {path}: {e}") from e
    if not isinstance(model_cfg, dict) or "vision_cfg" not in model_cfg or "text_cfg" not in model_cfg:
        raise ClearCLIPError(f"model-config JSON {path} needs 'embed_dim', 'vision_cfg' and 'text_cfg' (open_clip format)")
    if not _is_plain_vit(model_cfg):
        raise ClearCLIPError(f"model-config JSON {path} does not describe a plain ViT image tower")
    check_vision_geometry(model_cfg["vision_cfg"], path)
    open_clip.add_model_config(path)
    return os.path.splitext(os.path.basename(path))[0]


def check_vision_geometry(vision: Dict, path: str) -> None:
    """A model-config JSON's image tower: at least one layer, a positive patch no larger than the
    image size (sizes may be ints or [height, width] pairs)."""

    def sides(value):
        return list(value) if isinstance(value, (list, tuple)) else [value, value]

    layers, patch, image = vision.get("layers", 12), sides(vision.get("patch_size", 16)), sides(vision.get("image_size", 224))
    if not isinstance(layers, int) or layers < 1:
        raise ClearCLIPError(f"model-config JSON {path}: vision_cfg.layers {layers!r} must be a whole number >= 1")
    if not all(isinstance(v, int) and v > 0 for v in patch + image) or any(p > i for p, i in zip(patch, image)):
        raise ClearCLIPError(
            f"model-config JSON {path}: vision_cfg.patch_size {vision.get('patch_size')} must be a positive size no "
            f"larger than vision_cfg.image_size {vision.get('image_size')}"
        )


def resolve_checkpoint(arch: str, pretrained: str, cache_dir: Optional[str]) -> Tuple[Optional[str], bool]:
    """Turn ``PRETRAINED`` into a local file path (or None) and whether it needs QuickGELU.

    A pretrained tag is looked up in open_clip's table and fetched into the cache (or found
    there). Weights trained with QuickGELU (OpenAI's, MetaCLIP's) get QuickGELU, as open_clip's
    table says, whatever the architecture's JSON says.
    """
    kind = check_pretrained(arch, pretrained)
    if kind == "random":
        return None, False
    if kind == "file":
        return pretrained, False
    tag_cfg = get_pretrained_cfg(arch, pretrained)
    return _download_tag(arch, pretrained, tag_cfg, cache_dir), bool(tag_cfg.get("quick_gelu", False))


def check_pretrained(arch: str, pretrained: str) -> str:
    """Classify ``PRETRAINED`` as "random", "file" or "tag" without downloading anything;
    raise a clear error for a missing file or an unknown tag."""
    if pretrained.strip().lower() in RANDOM_WEIGHTS:
        return "random"
    if os.path.isfile(pretrained):
        return "file"
    if pretrained.endswith(CHECKPOINT_SUFFIXES) or os.path.sep in pretrained:
        raise ClearCLIPError(f"checkpoint file {pretrained} (MODEL.CLEARCLIP.PRETRAINED) does not exist")
    if not get_pretrained_cfg(arch, pretrained):
        tags = list_pretrained_tags_by_model(arch)
        raise ClearCLIPError(
            f"unknown MODEL.CLEARCLIP.PRETRAINED {pretrained!r} for {arch}: not a file and not one of its open_clip "
            f"tags ({', '.join(tags) if tags else 'none'})"
        )
    return "tag"


@register_config_check
def check_weights_config(cfg) -> None:
    """``MODEL_NAME`` and ``PRETRAINED`` name an architecture and weights that exist (nothing is downloaded)."""
    cc = cfg.MODEL.CLEARCLIP
    check_pretrained(resolve_architecture(cc.MODEL_NAME), cc.PRETRAINED)


def _download_tag(arch: str, tag: str, tag_cfg: Dict, cache_dir: Optional[str]) -> str:
    cached = _cached_tag_file(tag_cfg, cache_dir)
    if cached:
        return cached
    source = tag_cfg.get("hf_hub") or tag_cfg.get("url", "")
    fix = (
        f"download the weights ({source}) on a machine with internet and set "
        f"MODEL.CLEARCLIP.PRETRAINED /path/to/the/file"
        + (" and MODEL.CLEARCLIP.FORCE_QUICK_GELU True" if tag_cfg.get("quick_gelu") else "")
    )
    if not _host_resolves(HF_HOST):
        raise ClearCLIPError(f"cannot download CLIP weights {arch}/{tag}: no internet connection; {fix}")
    try:
        return download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as e:  # network and hub errors come in many types
        raise ClearCLIPError(f"cannot download CLIP weights {arch}/{tag} ({type(e).__name__}); {fix}") from e


def _cached_tag_file(tag_cfg: Dict, cache_dir: Optional[str]) -> Optional[str]:
    """The path of an already downloaded hub checkpoint, without touching the network."""
    hub = tag_cfg.get("hf_hub", "")
    if not hub:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    repo_id, filename = os.path.split(hub)
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    for name in candidates:
        path = try_to_load_from_cache(repo_id, name, cache_dir=cache_dir)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _host_resolves(host: str) -> bool:
    try:
        socket.getaddrinfo(host, 443)
        return True
    except OSError:
        return False


def read_checkpoint_safely(path: str, key: str = "") -> Any:
    """The content of a checkpoint file, read without running any code from it: a safetensors
    file as ``{name: tensor}``, anything else with ``torch.load(weights_only=True)`` (tensors,
    containers of them and plain Python values only). Every weight file of this project is read
    here (``PRETRAINED``, ``MODEL.WEIGHTS``, ``MASK_MODEL_WEIGHTS``). ``key``: the config key
    that named the file, for the error message."""
    named = f" ({key})" if key else ""
    try:
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file

            return load_file(path, device="cpu")
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ClearCLIPError(f"refusing checkpoint {path}{named}: {_unreadable_reason(path, e)}") from e


def _unreadable_reason(path: str, error: Exception) -> str:
    text = str(error)
    if "weights_only" in text or "Unsupported global" in text:
        return "it holds pickled Python objects, not only tensors"
    if "constants.pkl" in text or _is_torchscript_archive(path):
        return "it is a TorchScript archive (OpenAI's original .pt); use the open_clip/Hugging Face weights"
    if isinstance(error, (KeyError, EOFError, UnicodeDecodeError)) or "invalid load key" in text:
        # torch.load's messages for a text or truncated file are a bare byte value ("101") or nothing
        return "it is not a PyTorch or safetensors checkpoint (a text file, an HTML page or a truncated download?)"
    return text.strip().splitlines()[0] if text.strip() else type(error).__name__


def read_state_dict_safely(path: str) -> Dict[str, torch.Tensor]:
    """Read a checkpoint as a flat ``{name: tensor}`` dict without unpickling any code."""
    checkpoint = read_checkpoint_safely(path)
    for key in ("state_dict", "model"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            checkpoint = checkpoint[key]
    if not isinstance(checkpoint, dict) or not all(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        raise ClearCLIPError(f"refusing checkpoint {path}: it is not a state dict of tensors")
    if checkpoint and all(k.startswith("module.") for k in checkpoint):
        checkpoint = {k[len("module."):]: v for k, v in checkpoint.items()}
    return checkpoint


def check_checkpoint_hash(path: str, expected_sha256: str) -> None:
    """Refuse a checkpoint whose SHA-256 is not ``expected_sha256`` (a changed or damaged file)."""
    actual = file_sha256(path)
    if actual.lower() != expected_sha256.strip().lower():
        raise ClearCLIPError(
            f"refusing checkpoint {path}: its SHA-256 is {actual}, not MODEL.CLEARCLIP.PRETRAINED_SHA256 "
            f"{expected_sha256.strip()}; the file was changed or damaged: download it again (or fix the hash)"
        )


def _is_torchscript_archive(path: str) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            return any(name.endswith("constants.pkl") or "/code/" in name for name in archive.namelist())
    except (OSError, zipfile.BadZipFile):
        return False


def load_checkpoint_strictly(model: nn.Module, path: str) -> None:
    """Load ``path`` into ``model``; refuse it, naming the first mismatches, if it does not fit.

    The tensors read here go through open_clip's conversion of third-party formats, then into
    ``model.load_state_dict(strict=True)``.
    """
    state_dict = convert_state_dict(model, read_state_dict_safely(path))
    expected = model.state_dict()
    if "logit_bias" in expected and "logit_bias" not in state_dict:
        state_dict["logit_bias"] = torch.zeros_like(expected["logit_bias"])
    mismatches = checkpoint_mismatches(expected, state_dict)
    if mismatches:
        raise ClearCLIPError(
            f"checkpoint {path} does not fit the architecture: {_first_few(mismatches)}; check MODEL.CLEARCLIP.MODEL_NAME"
        )
    damaged = checkpoint_value_problems(state_dict)
    if damaged:
        raise ClearCLIPError(f"refusing checkpoint {path}: {_first_few(damaged)}; the file is damaged: download it again")
    model.load_state_dict(state_dict, strict=True)


def _first_few(problems: List[str], shown: int = 5) -> str:
    more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more


def checkpoint_value_problems(given: Dict[str, torch.Tensor]) -> List[str]:
    """Tensors that cannot be CLIP weights: not floating point, or holding NaN/Inf (a damaged file).

    fp16/bf16 weights are fine (they are cast to fp32 when loaded).
    """
    problems = []
    for key, value in given.items():
        if not value.is_floating_point():
            problems.append(f"{key} has dtype {value.dtype}, expected floating point")
        elif not bool(torch.isfinite(value).all()):
            problems.append(f"{key} holds NaN or Inf values")
    return problems


def checkpoint_mismatches(expected: Dict[str, torch.Tensor], given: Dict[str, torch.Tensor]) -> List[str]:
    """Human-readable differences between a model's state dict and a checkpoint's."""
    problems = [f"missing {k}" for k in expected if k not in given]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [
        f"{k} has shape {tuple(given[k].shape)}, expected {tuple(v.shape)}"
        for k, v in expected.items()
        if k in given and tuple(given[k].shape) != tuple(v.shape)
    ]
    return problems
