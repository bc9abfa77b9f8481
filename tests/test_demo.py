"""tools/demo.py and ClearCLIPPredictor, with a tiny random CLIP (no weights are downloaded)."""

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO_ROOT, "tools", "demo.py")
CONFIG = os.path.join(REPO_ROOT, "configs", "clearclip_coco.yaml")
TINY_MODEL = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
ONE_TEMPLATE = "['a photo of a {}.']"


@pytest.fixture(scope="module")
def tiny_json(tmp_path_factory):
    path = tmp_path_factory.mktemp("demo_model") / "demo-tiny-vit.json"
    path.write_text(json.dumps(TINY_MODEL))
    return str(path)


def tiny_opts(model_json):
    return [
        "MODEL.CLEARCLIP.MODEL_NAME", model_json,
        "MODEL.CLEARCLIP.PRETRAINED", "",
        "MODEL.CLEARCLIP.PROMPT_TEMPLATES", ONE_TEMPLATE,
        "MODEL.DEVICE", "cpu",
    ]  # fmt: skip


def random_image(height, width, seed):
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    noise = rng.integers(0, 60, size=(height, width, 3)).astype(np.float32)
    return np.clip(ramp * np.array([1.0, 0.5, 0.2]) + noise, 0, 255).astype(np.uint8)


def run_demo(args, env=None, timeout=300):
    return subprocess.run(
        [sys.executable, DEMO, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env
    )


def load_demo_module():
    spec = importlib.util.spec_from_file_location("clearclip_demo_tool", DEMO)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_demo_writes_overlays_of_input_size(tmp_path, tiny_json):
    inputs = tmp_path / "images"
    inputs.mkdir()
    sizes = {"field": (40, 56), "street": (48, 32)}  # (height, width)
    Image.fromarray(random_image(*sizes["field"], seed=1)).save(inputs / "field.png")
    Image.fromarray(random_image(*sizes["street"], seed=2)).save(inputs / "street.jpg", quality=95)
    (inputs / "notes.txt").write_text("not an image")
    out = tmp_path / "out"

    result = run_demo(
        ["--config-file", CONFIG, "--input", str(inputs), "--output", str(out),
         "--vocabulary", "cat, kitten; grass, lawn; sky", "--opts", *tiny_opts(tiny_json)]
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(out)) == ["field_overlay.png", "street_overlay.png"]
    for name, (height, width) in sizes.items():
        with Image.open(out / f"{name}_overlay.png") as overlay:
            assert overlay.size == (width, height)
            assert overlay.mode == "RGB"


def test_predictor_channels_follow_the_vocabulary(tiny_json):
    from detectron2.config import get_cfg

    from clearclip_d2 import add_clearclip_config
    from clearclip_d2.engine import ClearCLIPPredictor

    cfg = get_cfg()
    add_clearclip_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(tiny_opts(tiny_json))
    predictor = ClearCLIPPredictor(cfg)
    assert not predictor.model.training
    encoder, clip_model = predictor.model.encoder, predictor.model.clip_model
    image = random_image(36, 52, seed=3)

    predictor.set_vocabulary(["cat, kitten", "grass", "sky"])
    probs = predictor(image)
    assert tuple(probs.shape) == (3, 36, 52)
    assert predictor.class_names == ["cat", "grass", "sky"]
    assert bool(((probs >= 0) & (probs <= 1)).all())

    predictor.set_vocabulary(["cat", "dog, puppy", "grass", "sky", "road"])
    probs = predictor(image)
    assert tuple(probs.shape) == (5, 36, 52)
    assert predictor.model.encoder is encoder and predictor.model.clip_model is clip_model
    assert tuple(predictor.predict_labels(image).shape) == (36, 52)


def test_default_openai_weights_offline_is_one_line_error(tmp_path):
    image = tmp_path / "image.png"
    Image.fromarray(random_image(32, 32, seed=4)).save(image)
    # No cached weights and no hub access, also on a machine that has internet.
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))

    result = run_demo(
        ["--input", str(image), "--output", str(tmp_path / "out"),
         "--opts", "MODEL.CLEARCLIP.WEIGHTS_CACHE_DIR", str(tmp_path / "cache")],
        env=env,
    )  # fmt: skip

    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("demo.py: error:") and "PRETRAINED" in lines[0]
    assert "Traceback" not in result.stdout


def test_vocabulary_and_input_parsing(tmp_path):
    demo = load_demo_module()
    from clearclip_d2 import ClearCLIPError

    vocabulary = demo.parse_vocabulary_string(" cat, kitten; grass, lawn ;sky; ")
    assert vocabulary.classes == (("cat", "kitten"), ("grass", "lawn"), ("sky",))
    with pytest.raises(ClearCLIPError, match="twice"):
        demo.parse_vocabulary_string("cat; Cat")
    with pytest.raises(ClearCLIPError, match="empty"):
        demo.parse_vocabulary_string(" ; ")

    for name in ("b.png", "a.JPG", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"x")
    found = demo.expand_inputs([str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "sub" / "a.png")])
    assert [os.path.relpath(p, tmp_path) for p in found] == ["a.JPG", "b.png", os.path.join("sub", "a.png")]
    assert demo.output_names(found) == ["a", "b", "a-2"]
    with pytest.raises(ClearCLIPError, match="does not exist"):
        demo.expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(ClearCLIPError, match="matches no images"):
        demo.expand_inputs([str(tmp_path / "*.gif")])


def test_sample_images_are_bundled_with_scikit_image(tmp_path):
    pytest.importorskip("skimage")
    demo = load_demo_module()
    paths = demo.write_sample_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [f"{name}.png" for name in demo.SAMPLE_IMAGES]
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 256
