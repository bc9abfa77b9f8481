"""ClearCLIP as a Detectron2 backbone: features, freezing, and two training iterations of a head."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY, build_model
from PIL import Image

import reference_clearclip as ref
from conftest import REPO_ROOT, tiny_cfg
from test_modeling_exactness import smooth_image

from clearclip_d2 import ClearCLIPError
from clearclip_d2.modeling.backbone import check_clearclip_backbone_config

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
CONFIG = os.path.join(REPO_ROOT, "configs", "clearclip_backbone_sem_seg_fpn_coco.yaml")


def backbone_cfg(tiny_model_files, **overrides):
    """The shipped config's model on the tiny CLIP (as a test would set it from the command line)."""
    cfg = tiny_cfg(tiny_model_files)
    cfg.merge_from_file(CONFIG)
    cfg.MODEL.CLEARCLIP.MODEL_NAME, cfg.MODEL.CLEARCLIP.PRETRAINED = tiny_model_files
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.SEM_SEG_HEAD.CONVS_DIM = 32
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def build_backbone(tiny_model_files, **overrides):
    cfg = backbone_cfg(tiny_model_files, **overrides)
    return BACKBONE_REGISTRY.get(cfg.MODEL.BACKBONE.NAME)(cfg, ShapeSpec(channels=3))


def test_features_are_the_normalised_dense_clearclip_features(tiny_model_files, tiny_clip):
    backbone = build_backbone(tiny_model_files)
    model, _ = tiny_clip
    assert backbone.output_shape()["clip"].channels == 32 and backbone.output_shape()["clip"].stride == 16
    assert backbone.size_divisibility == 16
    images = torch.randn(2, 3, 64, 96)
    features = backbone(images)["clip"]
    assert features.shape == (2, 32, 4, 6)
    with torch.no_grad():
        expected = F.normalize(ref.encode_image(model.visual, images), dim=-1)  # [B, N, D], row-major patches
    expected = expected.transpose(1, 2).reshape(2, 32, 4, 6)
    assert torch.allclose(features, expected, atol=1e-5), (features - expected).abs().max()


def test_the_backbone_takes_every_weights_and_encoder_key_of_the_segmentor(tiny_model_files):
    from clearclip_d2 import ClearCLIPError

    with pytest.raises(ClearCLIPError, match="SHA-256|sha256"):
        build_backbone(tiny_model_files, **{"MODEL.CLEARCLIP.PRETRAINED_SHA256": "ab" * 32})
    naclip = build_backbone(tiny_model_files, **{"MODEL.CLEARCLIP.ATTENTION": "naclip", "MODEL.CLEARCLIP.NACLIP_GAUSSIAN_STD": 1.5})
    default_std = build_backbone(tiny_model_files, **{"MODEL.CLEARCLIP.ATTENTION": "naclip"})
    images = torch.randn(1, 3, 64, 96)
    assert not torch.allclose(naclip(images)["clip"], default_std(images)["clip"], atol=1e-4)


def test_sizes_that_are_not_multiples_of_the_patch_are_padded(tiny_model_files):
    backbone = build_backbone(tiny_model_files)
    images = torch.randn(1, 3, 50, 70)
    features = backbone(images)["clip"]
    assert features.shape == (1, 32, 4, 5)
    assert torch.allclose(features, backbone(F.pad(images, (0, 10, 0, 14)))["clip"], atol=1e-6)


def test_bgr_input_and_unnormalised_option(tiny_model_files):
    rgb = build_backbone(tiny_model_files)
    bgr = build_backbone(tiny_model_files, **{"INPUT.FORMAT": "BGR"})
    images = torch.randn(1, 3, 32, 48)
    assert torch.allclose(rgb(images)["clip"], bgr(images.flip(1))["clip"], atol=1e-6)
    raw = build_backbone(tiny_model_files, **{"MODEL.CLEARCLIP.BACKBONE_L2_NORMALIZE": False})(images)["clip"]
    assert not torch.allclose(raw.norm(dim=1), torch.ones(1, 2, 3))
    assert torch.allclose(F.normalize(raw, dim=1), rgb(images)["clip"], atol=1e-5)


def test_backbone_is_frozen_and_the_head_learns(tiny_model_files):
    model = build_model(backbone_cfg(tiny_model_files))
    model.train()
    assert not model.backbone.encoder.training and model.sem_seg_head.training
    assert not any(p.requires_grad for p in model.backbone.parameters())
    batch = [{"image": torch.randint(0, 256, (3, 48, 64), dtype=torch.uint8), "sem_seg": torch.randint(0, 171, (48, 64))}]
    losses = model(batch)
    losses["loss_sem_seg"].backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    assert all(p.grad is not None for p in model.sem_seg_head.parameters())


def test_config_checks_name_the_stride_and_features(tiny_model_files):
    check_clearclip_backbone_config(backbone_cfg(tiny_model_files))
    with pytest.raises(ClearCLIPError, match="COMMON_STRIDE 8 must equal the patch size 16"):
        check_clearclip_backbone_config(backbone_cfg(tiny_model_files, **{"MODEL.SEM_SEG_HEAD.COMMON_STRIDE": 8}))
    with pytest.raises(ClearCLIPError, match="IN_FEATURES.*'clip'"):
        check_clearclip_backbone_config(backbone_cfg(tiny_model_files, **{"MODEL.SEM_SEG_HEAD.IN_FEATURES": ["p2"]}))


@pytest.fixture(scope="module")
def coco_train_val(tmp_path_factory):
    """A 3-image COCO-Stuff in the real layout, for both the train and the val split."""
    root = tmp_path_factory.mktemp("backbone_datasets")
    rng = np.random.default_rng(0)
    for split in ("train2017", "val2017"):
        images, labels = root / "coco" / split, root / "coco" / "stuffthingmaps_detectron2" / split
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for index, (height, width) in enumerate([(72, 96), (80, 64), (64, 64)]):
            Image.fromarray(smooth_image(height, width, seed=index)).save(images / f"{index:012d}.jpg", quality=95)
            label = rng.integers(0, 5, (height // 16 + 1, width // 16 + 1)).repeat(16, 0).repeat(16, 1)[:height, :width]
            Image.fromarray(label.astype(np.uint8)).save(labels / f"{index:012d}.png")
    return root


def test_train_net_trains_a_head_for_two_iterations(coco_train_val, tmp_path, tiny_model_files):
    model_json, checkpoint = tiny_model_files
    out = tmp_path / "train"
    env = dict(os.environ, DETECTRON2_DATASETS=str(coco_train_val), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, TRAIN_NET, "--config-file", CONFIG,
           "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint, "MODEL.DEVICE", "cpu",
           "MODEL.SEM_SEG_HEAD.CONVS_DIM", "32", "SOLVER.MAX_ITER", "2", "SOLVER.IMS_PER_BATCH", "2",
           "SOLVER.WARMUP_ITERS", "0", "SOLVER.BASE_LR", "0.1", "SOLVER.CHECKPOINT_PERIOD", "1",
           "INPUT.MIN_SIZE_TRAIN", "(64,)", "INPUT.CROP.SIZE", "(48, 48)", "INPUT.MIN_SIZE_TEST", "64",
           "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", str(out)]  # fmt: skip
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    after_one = torch.load(out / "model_0000000.pth", map_location="cpu", weights_only=False)["model"]
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    assert final["backbone.encoder.visual.conv1.weight"].shape == (64, 3, 16, 16)
    backbone_keys = [key for key in final if key.startswith("backbone.")]
    head_keys = [key for key in final if key.startswith("sem_seg_head.")]
    assert backbone_keys and head_keys
    assert all(torch.equal(after_one[key], final[key]) for key in backbone_keys)  # frozen
    assert any(not torch.equal(after_one[key], final[key]) for key in head_keys)  # trained

    metrics = json.loads((out / "metrics.json").read_text())["coco_2017_val_stuff_sem_seg"]["sem_seg"]
    assert {"mIoU", "pACC"} <= set(metrics)
    log = (out / "log.txt").read_text()
    assert "Starting training from iteration 0" in log
    loss = re.search(r"iter: 1 +total_loss: ([0-9.]+)", log)
    assert loss and 0 < float(loss.group(1)) < 100, log[-2000:]
