"""Shared fixtures: tiny random open_clip models and their checkpoint files.

Every test builds what it needs here: no weights or datasets are downloaded.
"""

import contextlib
import json
import logging
import os
import sys
import tempfile

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def capturing_warnings(caplog, logger_name):
    """``caplog`` capturing the warnings of ``logger_name`` even where Detectron2's
    ``setup_logger`` made the package's logger non-propagating (pytest < 9 listens only at the
    root logger)."""
    logger = logging.getLogger(logger_name)
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger=logger_name):
            yield
    finally:
        logger.removeHandler(caplog.handler)
sys.path.insert(0, os.path.join(REPO_ROOT, "tests"))

# The tests (and the tools they start as subprocesses) never write the user's text-embedding
# cache: the default MODEL.CLEARCLIP.CACHE_DIR points at a folder of this test run.
os.environ["CLEARCLIP_D2_CACHE_DIR"] = tempfile.mkdtemp(prefix="clearclip_d2_test_cache_")

# Width 64, 2 layers, patch 16 on a 224 training size: the geometry of ViT-B/16 (14 x 14
# pretrained grid, positional-embedding interpolation for 448 crops) at a tiny cost.
TINY_VIT = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
# Tolerance for un-normalised O(1) patch features against open_clip's own blocks: the plugin
# runs blocks 1..L-1 with fused attention (scaled_dot_product_attention), open_clip's CPU path
# with bmm + softmax + bmm; their float sums differ by up to ~3e-5 after the tiny model's
# scaled-up attention weights (a wrong computation differs by > 1e-3). Probabilities keep 1e-4.
FEATURE_ATOL = 5e-5
# Few templates keep text embedding fast; the production default (80 templates) is tested on its own.
FEW_TEMPLATES = ["a photo of a {}.", "a bad photo of the {}.", "a sculpture of a {}."]



def pytest_configure(config):
    config.addinivalue_line(
        "markers", "open_clip_next: runs tests under open_clip's main-branch snapshot (tests/test_open_clip_next.py)"
    )
    config.addinivalue_line(
        "markers", "cuda: needs a CUDA device, skipped without one (tests/test_cuda.py; run by tools/gpu_check.sh)"
    )

def write_model_config(directory, name="tiny-vit", config=None) -> str:
    path = os.path.join(str(directory), f"{name}.json")
    with open(path, "w") as f:
        json.dump(config or TINY_VIT, f)
    return path


def save_random_checkpoint(model_json: str, path: str, seed: int = 123) -> str:
    """Save the state dict of a freshly initialised model (seeded) as ``path``."""
    import open_clip

    open_clip.add_model_config(model_json)
    torch.manual_seed(seed)
    model = open_clip.create_model(os.path.splitext(os.path.basename(model_json))[0], pretrained=None)
    # open_clip leaves the image tower's attention projections at PyTorch's default init,
    # which makes all tokens alike; spread them so the attention variants differ visibly.
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.attn.in_proj_weight.normal_(0, 0.3)
    state = model.state_dict()
    if path.endswith(".safetensors"):
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def tiny_model_files(tmp_path_factory):
    """(model-config JSON path, safetensors checkpoint path) of a tiny random ViT CLIP."""
    directory = tmp_path_factory.mktemp("tiny_model")
    model_json = write_model_config(directory)
    checkpoint = save_random_checkpoint(model_json, os.path.join(str(directory), "tiny-vit.safetensors"))
    return model_json, checkpoint


@pytest.fixture(scope="session")
def tiny_clip(tiny_model_files):
    """(open_clip model with the checkpoint's weights, tokenizer) built independently of the plugin."""
    import open_clip
    from safetensors.torch import load_file

    model_json, checkpoint = tiny_model_files
    open_clip.add_model_config(model_json)
    model = open_clip.create_model("tiny-vit", pretrained=None)
    model.load_state_dict(load_file(checkpoint))
    return model.eval(), open_clip.get_tokenizer("tiny-vit")


def tiny_cfg(model_files, **overrides):
    """A ClearCLIP config for the tiny model on the CPU."""
    from detectron2.config import get_cfg

    from clearclip_d2 import add_clearclip_config

    model_json, checkpoint = model_files
    cfg = get_cfg()
    add_clearclip_config(cfg)
    cfg.MODEL.META_ARCHITECTURE = "ClearCLIPSegmentor"
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.CLEARCLIP.MODEL_NAME = model_json
    cfg.MODEL.CLEARCLIP.PRETRAINED = checkpoint
    cfg.MODEL.CLEARCLIP.PROMPT_TEMPLATES = list(FEW_TEMPLATES)
    cfg.MODEL.CLEARCLIP.CACHE_DIR = ""  # memory only; tests of the disk cache set their own folder
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split(".")
        for parent in parents:
            node = getattr(node, parent)
        setattr(node, leaf, value)
    return cfg
