"""Backbones: every shipped config builds, QuickGELU weights get QuickGELU, and towers with
``final_ln_after_pool`` work while attention-pooled towers are refused."""

import glob
import json
import os

import open_clip
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog
from open_clip.transformer import QuickGELU

from conftest import FEATURE_ATOL, REPO_ROOT, TINY_VIT, write_model_config
from clearclip_d2 import add_clearclip_config
from clearclip_d2.config import check_clearclip_config
from clearclip_d2.modeling.clip import loading as clip_loading
from clearclip_d2.modeling.clip.loading import build_clip_model, resolve_architecture, resolve_checkpoint
from clearclip_d2.modeling.clip.dense_encoder import DenseCLIPEncoder
from clearclip_d2.utils.errors import ClearCLIPError

CONFIGS = sorted(
    os.path.relpath(path, REPO_ROOT)
    for path in glob.glob(os.path.join(REPO_ROOT, "configs", "**", "*.yaml"), recursive=True)
    if not os.path.basename(path).startswith("Base-")
)


def load_config(relative_path):
    cfg = get_cfg()
    add_clearclip_config(cfg)
    cfg.merge_from_file(os.path.join(REPO_ROOT, relative_path))
    return cfg


def test_the_expected_configs_are_shipped():
    """ClearCLIP itself (q-q, no residual, no FFN, ViT-B/16 and ViT-L/14 OpenAI) is
    configs/clearclip_coco.yaml and configs/vit_l14/clearclip_coco.yaml: no method, ablation or
    backbone preset repeats it."""
    expected = {
        "configs/clearclip_coco.yaml",
        "configs/vit_l14/clearclip_coco.yaml",
        *(f"configs/methods/{m}.yaml" for m in ("clip", "maskclip", "sclip", "naclip")),
        *(f"configs/methods/{m}/{b}.yaml" for m in ("clip", "maskclip", "sclip", "naclip")
          for b in ("voc20", "voc21", "context59", "context60", "coco_object", "cityscapes", "ade20k")),
        *(f"configs/ablation/{a}_coco.yaml" for a in ("qq_res_ffn", "qq_res", "qq_ffn")),
        *(f"configs/backbones/vit_{m}_{w}.yaml" for m in ("b16", "l14") for w in ("laion2b", "metaclip", "dfn")),
        "configs/backbones/vit_h14_laion2b.yaml",
    }
    assert expected <= set(CONFIGS)


def test_no_two_configs_are_the_same_run():
    """A preset that equals another one (all keys but OUTPUT_DIR) is a duplicate to remove."""
    runs = {}
    for config in CONFIGS:
        cfg = load_config(config)
        cfg.OUTPUT_DIR = ""
        runs.setdefault(cfg.dump(), []).append(config)
    assert [configs for configs in runs.values() if len(configs) > 1] == []


def test_every_config_writes_to_output_slash_its_path_under_configs():
    """One output-folder scheme: configs/<group>/<stem>.yaml -> OUTPUT_DIR output/<group>/<stem>."""
    for config in CONFIGS:
        expected = "output/" + os.path.splitext(os.path.relpath(config, "configs"))[0].replace(os.sep, "/")
        assert load_config(config).OUTPUT_DIR == expected, config


@pytest.mark.parametrize("config", CONFIGS)
def test_shipped_config_builds_and_runs_on_the_meta_device(config, monkeypatch):
    """Every config is valid and its architecture runs the whole dense path (shapes only: the
    meta device allocates nothing, so ViT-L/H cost no memory). No weights are read."""
    cfg = load_config(config)
    check_clearclip_config(cfg)
    cc = cfg.MODEL.CLEARCLIP
    for dataset in cfg.DATASETS.TEST:
        assert dataset in DatasetCatalog.list()
    arch = resolve_architecture(cc.MODEL_NAME)
    monkeypatch.setattr(clip_loading, "_download_tag", lambda *args: "/not/downloaded")
    _, quick_gelu = resolve_checkpoint(arch, cc.PRETRAINED, None)
    with torch.device("meta"):
        model = open_clip.create_model(arch, pretrained=None, device="meta", force_quick_gelu=quick_gelu)
    encoder = DenseCLIPEncoder(model.visual, cc.ATTENTION, cc.RESIDUAL, cc.FFN, cc.NACLIP_GAUSSIAN_STD)
    crop = cc.SLIDE_CROP or cfg.INPUT.MIN_SIZE_TEST  # whole-image presets (crop 0): a square of the short side
    with torch.no_grad():
        features = encoder(torch.empty(2, 3, crop, crop, device="meta"))
    assert tuple(features.shape) == (2, (crop // encoder.patch_size) ** 2, encoder.embed_dim)
    uses_quick_gelu = all(isinstance(block.mlp.gelu, QuickGELU) for block in model.visual.transformer.resblocks)
    assert uses_quick_gelu == (quick_gelu or "quickgelu" in arch)


def test_vit_b16_config_builds_with_random_weights_and_segments():
    """The one full-size build of the suite: ViT-B/16 (QuickGELU architecture) with random weights."""
    from detectron2.modeling import build_model

    cfg = load_config("configs/backbones/vit_b16_metaclip.yaml")
    cfg.merge_from_list(["MODEL.CLEARCLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu",
                         "MODEL.CLEARCLIP.PROMPT_TEMPLATES", "['a photo of a {}.']"])
    model = build_model(cfg).eval()
    assert all(isinstance(block.mlp.gelu, QuickGELU) for block in model.clip_model.visual.transformer.resblocks)
    model.set_vocabulary(["cat", "grass"])
    image = torch.randint(0, 256, (3, 224, 300), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    probs = model([{"image": image}])[0]["sem_seg"]
    assert probs.shape == (2, 224, 300)
    assert torch.allclose(probs.sum(0), torch.ones(224, 300), atol=1e-4)


@pytest.mark.parametrize(
    "arch, tag, needs_quick_gelu",
    [
        ("ViT-B-16", "openai", True),
        ("ViT-B-16", "laion2b_s34b_b88k", False),
        ("ViT-B-16-quickgelu", "metaclip_fullcc", True),
        ("ViT-B-16-quickgelu", "dfn2b", True),
        ("ViT-L-14", "openai", True),
        ("ViT-L-14", "laion2b_s32b_b82k", False),
        ("ViT-L-14", "dfn2b", True),
        ("ViT-H-14", "laion2b_s32b_b79k", False),
    ],
)
def test_tags_say_which_weights_need_quick_gelu(monkeypatch, arch, tag, needs_quick_gelu):
    monkeypatch.setattr(clip_loading, "_download_tag", lambda *args: "/cache/weights.bin")
    assert resolve_checkpoint(arch, tag, None) == ("/cache/weights.bin", needs_quick_gelu)


def test_quick_gelu_tag_gives_quick_gelu_blocks_and_the_dense_path_uses_them(tiny_model_files, monkeypatch):
    model_json, checkpoint = tiny_model_files
    real_table = clip_loading.get_pretrained_cfg

    def table(arch, tag):
        if tag == "fake_openai_tag":
            return {"quick_gelu": True, "hf_hub": "timm/fake-openai/"}
        return real_table(arch, tag)

    monkeypatch.setattr(clip_loading, "get_pretrained_cfg", table)
    monkeypatch.setattr(clip_loading, "_download_tag", lambda *args: checkpoint)
    quick, _, _ = build_clip_model(model_json, "fake_openai_tag")
    plain, _, _ = build_clip_model(model_json, checkpoint)  # same weights, the JSON's GELU
    assert all(isinstance(block.mlp.gelu, QuickGELU) for block in quick.visual.transformer.resblocks)
    assert not any(isinstance(block.mlp.gelu, QuickGELU) for block in plain.visual.transformer.resblocks)

    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    quick.visual.output_tokens = True
    with torch.no_grad():
        _, tokens = quick.visual(images)
        dense_quick = DenseCLIPEncoder(quick.visual, "qk", residual=True, ffn=True)(images)
        dense_plain = DenseCLIPEncoder(plain.visual, "qk", residual=True, ffn=True)(images)
    assert torch.allclose(dense_quick, tokens @ quick.visual.proj, atol=1e-5)
    assert (dense_quick - dense_plain).abs().max() > 1e-4, "the activation must matter in this test"


def tiny_tower(tmp_path, name, **vision_overrides):
    config = json.loads(json.dumps(TINY_VIT))
    config["vision_cfg"].update(vision_overrides)
    open_clip.add_model_config(write_model_config(tmp_path, name, config))
    torch.manual_seed(5)
    model = open_clip.create_model(name, pretrained=None).eval()
    with torch.no_grad():
        for block in model.visual.transformer.resblocks:
            block.attn.in_proj_weight.normal_(0, 0.3)
        model.visual.ln_post.weight.normal_(1.0, 0.5)
        model.visual.ln_post.bias.normal_(0.0, 0.5)
    return model.visual


def test_final_ln_after_pool_dense_feature_is_the_pooled_embedding_of_one_patch(tmp_path):
    """With a 1 x 1 patch grid, average pooling pools one patch: the tower's own pooled embedding
    (ln_post after pooling) must equal the dense feature of that patch."""
    visual = tiny_tower(tmp_path, "tiny-one-patch", image_size=16, pool_type="avg", final_ln_after_pool=True)
    images = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        pooled = visual(images)
        dense = DenseCLIPEncoder(visual, "qk", residual=True, ffn=True)(images)
    assert dense.shape == (3, 1, pooled.shape[-1])
    assert torch.allclose(dense[:, 0], pooled, atol=1e-5)


def test_final_ln_after_pool_applies_ln_post_to_every_patch(tmp_path):
    visual = tiny_tower(tmp_path, "tiny-final-ln", pool_type="avg", final_ln_after_pool=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    visual.output_tokens = True
    with torch.no_grad():
        _, tokens = visual(images)  # open_clip leaves these tokens without ln_post
        dense = DenseCLIPEncoder(visual, "qk", residual=True, ffn=True)(images)
    assert torch.allclose(dense, visual.ln_post(tokens) @ visual.proj, atol=FEATURE_ATOL)
    assert (dense - tokens @ visual.proj).abs().max() > 1e-2, "ln_post must matter in this test"


def test_attention_pooled_towers_are_refused(tmp_path):
    config = json.loads(json.dumps(TINY_VIT))
    config["vision_cfg"]["attentional_pool"] = True
    model_json = write_model_config(tmp_path, "tiny-attn-pool", config)
    with pytest.raises(ClearCLIPError, match="not describe a plain ViT"):
        resolve_architecture(model_json)
    open_clip.add_model_config(model_json)
    visual = open_clip.create_model("tiny-attn-pool", pretrained=None).visual
    with pytest.raises(ClearCLIPError, match="attention pooling"):
        DenseCLIPEncoder(visual)
