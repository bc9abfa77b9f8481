"""The paper's analysis: the decomposition API, the statistics and ``tools/analyze_features.py``.

The tool runs once (a subprocess, as in CI) on a tiny random CLIP, two 224 x 224 images for
the statistics and a small synthetic COCO-Stuff (two images, an 8-class vocabulary); its CSVs
are checked against a computation with open_clip's own modules and explicit formulas, and its
mIoUs against the independent reference pipeline.
"""

import csv
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import reference_clearclip as ref
from conftest import FEW_TEMPLATES, REPO_ROOT
from synthetic_coco import reference_metrics, write_coco_stuff_layout
from test_modeling_exactness import smooth_image
from clearclip_d2.analysis.features import (
    FeatureStatistics,
    LastBlockFeatureEncoder,
    decompose_blocks,
    feature_maximum,
    feature_norm,
    normalised_entropy,
)
from clearclip_d2.modeling.clip.decomposition import get_attention_variant
from clearclip_d2.modeling.clip.dense_encoder import DenseCLIPEncoder

TOOL = os.path.join(REPO_ROOT, "tools", "analyze_features.py")
CONFIG = os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml")
ALPHAS = [0.5, 1.0, 2.0]
PNGS = ["layer_norms", "layer_entropy", "layer_maximum", "channel_means", "attention_variants", "feature_miou",
        "alpha_sweep"]
CSVS = ["layer_statistics", "channel_means", "attention_variants", "feature_miou", "alpha_sweep"]
CLASSES = ["sky", "grass", "tree", "road", "person", "car", "water", "wall"]
# A fixed vocabulary needs one name per class of the evaluated dataset (COCO-Stuff: 171); the
# labels use the first 8, the other names only compete in the softmax.
VOCABULARY = CLASSES + [f"thing number {i}" for i in range(len(CLASSES), 171)]
SIZES = [(448, 560), (448, 448)]  # short side 448: the test-time resize keeps them as they are


def open_clip_block_parts(visual, images):
    """Per block (X_res, X_attn) from open_clip's own modules (224 input: no resampling)."""
    x = visual.conv1(images).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(len(x), 1, -1), x], dim=1)
    x = visual.ln_pre(x + visual.positional_embedding)
    parts = []
    for block in visual.transformer.resblocks:
        y = block.ln_1(x)
        x_attn = block.ls_1(block.attn(y, y, y, need_weights=False)[0])
        parts.append((x, x_attn))
        x = block(x)
    return parts, x


def explicit_entropy(patches):
    """Eq. 5 in float64 with an explicit softmax over all h*w*d entries of each image."""
    values = []
    for image in patches.double():
        flat = image.flatten()
        p = torch.exp(flat - flat.max())
        p = p / p.sum()
        values.append(float(-(p * torch.log(p)).sum() / math.log(flat.numel())))
    return values


# ----------------------------------------------------------------------------- the API
def test_decompose_blocks_matches_open_clip(tiny_clip):
    model, _ = tiny_clip
    visual = model.visual
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    encoder = DenseCLIPEncoder(visual)
    with torch.no_grad():
        expected, final = open_clip_block_parts(visual, images)
        blocks = list(decompose_blocks(encoder, images))
        last_qq = list(decompose_blocks(encoder, images, last_attention=get_attention_variant("qq")))[-1]
    assert [b.layer for b in blocks] == [1, 2]
    for block, (x_res, x_attn) in zip(blocks, expected):
        assert torch.allclose(block.x_res, x_res, atol=5e-5)  # fp32 sums in another order
        assert torch.allclose(block.x_attn, x_attn, atol=5e-5)
        assert torch.allclose(block.x_sum, x_res + x_attn, atol=5e-5)
        assert torch.equal(block.patches("x_attn"), block.x_attn[:, 1:])
    last = visual.transformer.resblocks[-1]
    assert torch.allclose(blocks[-1].x_sum + last.mlp(last.ln_2(blocks[-1].x_sum)), final, atol=5e-5)
    assert torch.allclose(last_qq.x_res, blocks[-1].x_res)
    assert (last_qq.x_attn - blocks[-1].x_attn).abs().max() > 1e-3


def test_statistics_match_explicit_formulas():
    patches = torch.randn(3, 20, 8, generator=torch.Generator().manual_seed(1)) * 3
    assert torch.allclose(feature_norm(patches), torch.tensor([
        sum(float(token.norm()) for token in image) / 20 for image in patches]), atol=1e-5)
    assert torch.allclose(normalised_entropy(patches), torch.tensor(explicit_entropy(patches)), atol=1e-6)
    assert torch.allclose(feature_maximum(patches), torch.tensor([float(image.max()) for image in patches]))
    # Equal entries: entropy 1; one dominant entry: entropy near 0.
    assert torch.allclose(normalised_entropy(torch.ones(1, 5, 4)), torch.ones(1))
    spike = torch.zeros(1, 5, 4)
    spike[0, 2, 1] = 100.0
    assert normalised_entropy(spike).item() < 1e-3


def test_feature_statistics_do_not_depend_on_the_batching(tiny_clip):
    encoder = DenseCLIPEncoder(tiny_clip[0].visual)
    images = torch.randn(3, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    variants = {name: get_attention_variant(name) for name in ("qk", "naclip")}
    together, split = FeatureStatistics(variants), FeatureStatistics(variants)
    together.update(encoder, images)
    split.update(encoder, images[:1])
    split.update(encoder, images[1:])
    assert (together.num_images, together.num_patches) == (split.num_images, split.num_patches) == (3, 3 * 6 * 8)
    assert np.allclose(np.array([r[2:] for r in together.layer_rows()]), np.array([r[2:] for r in split.layer_rows()]))
    assert torch.allclose(together.channel_means(2, "x_sum"), split.channel_means(2, "x_sum"), atol=1e-6)
    assert [r[0] for r in split.variant_rows()] == ["qk", "naclip"]
    assert np.allclose([r[1:] for r in together.variant_rows()], [r[1:] for r in split.variant_rows()])


@pytest.mark.parametrize("attention", ["qk", "qq", "naclip"])
def test_last_block_feature_encoder_matches_the_switches(tiny_clip, attention):
    visual = tiny_clip[0].visual
    images = torch.randn(1, 3, 160, 224, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        x_attn = LastBlockFeatureEncoder(visual, attention, 0.0, 1.0)(images)
        x_sum = LastBlockFeatureEncoder(visual, attention, 1.0, 1.0)(images)
        x_res = LastBlockFeatureEncoder(visual, attention, 1.0, 0.0)(images)
        half = LastBlockFeatureEncoder(visual, attention, 1.0, 0.5)(images)
        assert torch.allclose(x_attn, DenseCLIPEncoder(visual, attention, residual=False, ffn=False)(images), atol=1e-6)
        assert torch.allclose(x_sum, DenseCLIPEncoder(visual, attention, residual=True, ffn=False)(images), atol=1e-6)
        tokens = DenseCLIPEncoder(visual).forward_until_last_block(images)
    assert torch.allclose(x_res, visual.ln_post(tokens[:, 1:]) @ visual.proj, atol=1e-6)
    assert (half - x_sum).abs().max() > 1e-3


# ----------------------------------------------------------------------------- the tool
@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    """COCO-Stuff's layout with two images whose labels use the 8 classes of CLASSES."""
    root = tmp_path_factory.mktemp("analysis_datasets")
    write_coco_stuff_layout(root, SIZES, len(CLASSES), block=56, image_seed=40, label_seed=1, ignored_rows=5)
    (root / "classes.txt").write_text("\n".join(VOCABULARY) + "\n")
    return root


def independent_miou(root, tiny_clip, model_type):
    model, tokenizer = tiny_clip
    text = ref.text_features(model, tokenizer, VOCABULARY, FEW_TEMPLATES)
    return reference_metrics(root, len(SIZES), model, text, model_type)[0]


def weighted_encode_image(res_weight, attn_weight):
    """``ref.encode_image`` with the last block's ``res_weight * X_res + attn_weight * X_attn`` (no FFN)."""

    def encode_image(visual, img, model_type="vanilla", ignore_residual=True):
        batch, _, w, h = img.shape
        x = visual.conv1(img)
        x = x.reshape(batch, x.shape[1], -1).permute(0, 2, 1)
        x = torch.cat([visual.class_embedding.view(1, 1, -1).expand(batch, -1, -1).to(x.dtype), x], dim=1)
        if x.shape[1] != visual.positional_embedding.shape[0]:
            x = x + ref.interpolate_pos_encoding(visual, x, w, h).to(x.dtype)
        else:
            x = x + visual.positional_embedding.to(x.dtype)
        x = visual.ln_pre(x)
        for block in visual.transformer.resblocks[:-1]:
            x = block(x)
        last = visual.transformer.resblocks[-1]
        x_attn = ref.custom_attn(last.attn, last.ln_1(x).permute(1, 0, 2), model_type).permute(1, 0, 2)
        return visual.ln_post(res_weight * x + attn_weight * x_attn)[:, 1:] @ visual.proj

    return encode_image


def independent_weighted_miou(root, tiny_clip, monkeypatch, res_weight, attn_weight):
    """mIoU of the reference pipeline (plain CLIP q-k attention) on res_weight * X_res + attn_weight * X_attn."""
    with monkeypatch.context() as patch:
        patch.setattr(ref, "encode_image", weighted_encode_image(res_weight, attn_weight))
        return independent_miou(root, tiny_clip, "vanilla")


@pytest.fixture(scope="module")
def analysis_run(coco_root, tmp_path_factory, tiny_model_files):
    """Run the tool once: statistics on two 224 x 224 images, mIoU on the synthetic COCO-Stuff."""
    folder = tmp_path_factory.mktemp("analysis")
    inputs = folder / "inputs"
    inputs.mkdir()
    images = [smooth_image(224, 224, seed=20 + i) for i in range(2)]
    for i, image in enumerate(images):
        Image.fromarray(image).save(inputs / f"{i}.png")
    out = folder / "out"
    model_json, checkpoint = tiny_model_files
    env = dict(os.environ, DETECTRON2_DATASETS=str(coco_root), PYTHONWARNINGS="ignore")
    cmd = [sys.executable, TOOL, "--config-file", CONFIG, "--input", str(inputs), "--size", "224",
           "--dataset", "coco_2017_val_stuff_sem_seg", "--alphas", ",".join(map(str, ALPHAS)), "--output", str(out),
           "--opts", "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
           "MODEL.CLEARCLIP.PROMPT_TEMPLATES", repr(FEW_TEMPLATES), "MODEL.CLEARCLIP.CLASS_NAMES_FILE",
           str(coco_root / "classes.txt"), "MODEL.DEVICE", "cpu", "DATALOADER.NUM_WORKERS", "0"]
    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return out, np.stack(images)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_tool_writes_every_png_and_csv(analysis_run):
    out, _ = analysis_run
    assert sorted(os.listdir(out)) == sorted([f"{n}.png" for n in PNGS] + [f"{n}.csv" for n in CSVS])
    for name in PNGS:
        with Image.open(out / f"{name}.png") as png:
            assert png.format == "PNG" and png.width > 100 and png.height > 100


def test_tool_layer_statistics_match_open_clip_and_explicit_formulas(analysis_run, tiny_clip):
    out, images_rgb = analysis_run
    model, _ = tiny_clip
    with torch.no_grad():
        parts, _ = open_clip_block_parts(model.visual, torch.cat([ref.preprocess(image) for image in images_rgb]))
    rows = {(int(r["layer"]), r["feature"]): r for r in read_csv(out / "layer_statistics.csv")}
    channel_rows = read_csv(out / "channel_means.csv")
    assert len(rows) == 2 * 3
    for layer, (x_res, x_attn) in enumerate(parts, start=1):
        for feature, value in (("x_res", x_res), ("x_attn", x_attn), ("x_sum", x_res + x_attn)):
            patches = value[:, 1:].double()
            row = rows[(layer, feature)]
            norm = np.mean([[float(token.norm()) for token in image] for image in patches])
            assert float(row["norm"]) == pytest.approx(norm, rel=1e-5)
            assert float(row["entropy"]) == pytest.approx(np.mean(explicit_entropy(patches)), abs=1e-6)
            assert float(row["maximum"]) == pytest.approx(float(patches.flatten(1).max(1).values.mean()), rel=1e-5)
            means = [float(r["mean"]) for r in channel_rows if int(r["layer"]) == layer and r["feature"] == feature]
            assert np.allclose(means, patches.mean(dim=(0, 1)).numpy(), atol=1e-5)
    # Fig. 2: the q-k row is the last layer's statistics; every variant shares X_res.
    variants = {r["attention"]: r for r in read_csv(out / "attention_variants.csv")}
    assert list(variants) == ["qk", "qq", "kk", "vv", "qq+kk", "identity", "naclip"]
    assert float(variants["qk"]["norm_x_attn"]) == pytest.approx(float(rows[(2, "x_attn")]["norm"]), rel=1e-5)
    assert {r["norm_x_res"] for r in variants.values()} == {variants["qk"]["norm_x_res"]}
    last_res = parts[-1][0][:, 1:].double()  # the last block's X_res, from open_clip's modules
    last_res_norm = np.mean([[float(token.norm()) for token in image] for image in last_res])
    for name, row in variants.items():
        assert float(row["norm_x_res"]) == pytest.approx(last_res_norm, rel=1e-5), name


def test_tool_miou_matches_the_reference_pipeline(analysis_run, coco_root, tiny_clip, monkeypatch):
    out, _ = analysis_run
    variants = {r["attention"]: float(r["miou_x_attn"]) for r in read_csv(out / "attention_variants.csv")}
    assert variants["qq"] == pytest.approx(independent_miou(coco_root, tiny_clip, "ClearCLIP"), abs=0.05)
    assert variants["qk"] == pytest.approx(independent_miou(coco_root, tiny_clip, "vanilla"), abs=0.05)
    assert len(set(variants.values())) > 1
    features = {r["feature"]: float(r["miou"]) for r in read_csv(out / "feature_miou.csv")}
    assert list(features) == ["x_res", "x_attn", "x_sum"]
    assert features["x_attn"] == variants["qk"]  # Fig. 3 uses plain CLIP's q-k attention
    sweep = read_csv(out / "alpha_sweep.csv")
    assert [float(r["alpha"]) for r in sweep] == ALPHAS
    assert float(sweep[1]["miou"]) == features["x_sum"]  # alpha 1 is X_sum
    assert all(0.0 <= float(r["miou"]) <= 100.0 for r in sweep)
    # Each feature and sweep point against the reference pipeline with the same mixture of X_res and X_attn.
    vanilla = independent_miou(coco_root, tiny_clip, "vanilla")
    assert independent_weighted_miou(coco_root, tiny_clip, monkeypatch, 0.0, 1.0) == pytest.approx(vanilla, abs=1e-9)
    expected = {name: independent_weighted_miou(coco_root, tiny_clip, monkeypatch, *weights)
                for name, weights in (("x_res", (1.0, 0.0)), ("x_sum", (1.0, 1.0)))}
    assert features["x_res"] == pytest.approx(expected["x_res"], abs=0.05)
    assert features["x_sum"] == pytest.approx(expected["x_sum"], abs=0.05)
    assert features["x_res"] != features["x_attn"]
    for row in sweep:
        alpha = float(row["alpha"])
        expected_sweep = independent_weighted_miou(coco_root, tiny_clip, monkeypatch, 1.0, alpha)
        assert float(row["miou"]) == pytest.approx(expected_sweep, abs=0.05), alpha


# ----------------------------------------------------------------------------- errors
def run_tool(args):
    """The real command line; (exit status, its last stderr line)."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    result = subprocess.run([sys.executable, TOOL, *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    lines = result.stderr.strip().splitlines()
    return result.returncode, lines[-1] if lines else ""


@pytest.mark.parametrize(
    "args, fragments",
    [
        ([], ["--input", "--dataset"]),
        (["--input", "x.png", "--variants", "qk,xy"], ["--variants", "'xy'", "naclip"]),
        (["--input", "x.png", "--alphas", "1,two"], ["--alphas"]),
        (["--input", "x.png", "--attention", "qk,qq"], ["--attention", "one"]),
        (["--input", "/no/such/folder"], ["/no/such/folder", "does not exist"]),
    ],
)
def test_bad_arguments_give_one_line(tmp_path, tiny_model_files, args, fragments):
    model_json, _ = tiny_model_files
    status, message = run_tool([*args, "--output", str(tmp_path / "out"), "--opts", "MODEL.CLEARCLIP.MODEL_NAME",
                                model_json, "MODEL.CLEARCLIP.PRETRAINED", "", "MODEL.DEVICE", "cpu"])  # fmt: skip
    assert status == 2
    assert message.startswith("analyze_features.py: error:")
    for fragment in fragments:
        assert fragment in message
    assert not (tmp_path / "out").exists()


def test_another_meta_architecture_gives_one_line(tmp_path, tiny_model_files):
    model_json, _ = tiny_model_files
    status, message = run_tool(["--input", "x.png", "--output", str(tmp_path / "out"), "--opts", "MODEL.CLEARCLIP.MODEL_NAME",
                                model_json, "MODEL.DEVICE", "cpu", "MODEL.META_ARCHITECTURE", "SemanticSegmentor"])  # fmt: skip
    assert status == 2
    assert message == (
        "analyze_features.py: error: MODEL.META_ARCHITECTURE is 'SemanticSegmentor'; analyze_features.py runs ClearCLIPSegmentor"
    )
