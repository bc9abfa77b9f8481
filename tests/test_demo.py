"""tools/demo.py (subprocess runs), the demo's package code (clearclip_d2.engine.demo, visualizer,
video) and ClearCLIPPredictor, with a tiny random CLIP (no weights are downloaded)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clearclip_d2.data.image_files import expand_inputs
from clearclip_d2.engine import demo, visualizer
from clearclip_d2.utils.cli import exit_on_user_error

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


def write_video(path, frames, fourcc="MJPG", fps=5.0):
    """Write RGB frames with OpenCV; return them as OpenCV decodes them again (RGB)."""
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (width, height))
    assert writer.isOpened()
    for frame in frames:
        writer.write(np.ascontiguousarray(frame[:, :, ::-1]))
    writer.release()
    return read_video(path)


def read_video(path):
    import cv2

    capture, frames = cv2.VideoCapture(str(path)), []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame[:, :, ::-1].copy())
    capture.release()
    return frames


def tiny_predictor(model_json, *opts):
    from detectron2.config import get_cfg

    from clearclip_d2 import add_clearclip_config
    from clearclip_d2.engine import ClearCLIPPredictor

    cfg = get_cfg()
    add_clearclip_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(tiny_opts(model_json) + list(opts))
    return ClearCLIPPredictor(cfg)


def check_masks(stem, class_names, expected_labels):
    """The label PNG is the prediction; the JSON gives each class's pixel share in vocabulary order."""
    with Image.open(f"{stem}_labels.png") as image:
        assert image.mode == "L"
        labels = np.array(image)
    np.testing.assert_array_equal(labels, expected_labels)
    shares = json.loads(open(f"{stem}_classes.json").read())
    assert list(shares) == list(class_names)
    counts = np.bincount(labels.ravel(), minlength=len(class_names))
    assert [shares[name] for name in class_names] == pytest.approx(list(counts / labels.size), abs=1e-12)


def check_overlay(path, height, width):
    """Overlay of the image at the top left, a legend panel on the right."""
    with Image.open(path) as overlay:
        assert overlay.mode == "RGB"
        assert overlay.width > width and overlay.height >= height
        return overlay.size


def test_demo_writes_pngs_and_json_for_a_folder_and_a_video(tmp_path, tiny_json):
    inputs = tmp_path / "images"
    inputs.mkdir()
    sizes = {"field": (40, 56), "street": (48, 32)}  # (height, width)
    Image.fromarray(random_image(*sizes["field"], seed=1)).save(inputs / "field.png")
    Image.fromarray(random_image(*sizes["street"], seed=2)).save(inputs / "street.jpg", quality=95)
    (inputs / "notes.txt").write_text("not an image")
    frames = write_video(tmp_path / "clip.avi", [random_image(48, 64, seed=10 + i) for i in range(3)])
    out = tmp_path / "out"
    vocabulary = "cat, kitten; grass, lawn; sky"

    result = run_demo(
        ["--config-file", CONFIG, "--input", str(inputs), str(tmp_path / "clip.avi"), "--output", str(out),
         "--vocabulary", vocabulary, "--save-masks", "--opts", *tiny_opts(tiny_json)]
    )  # fmt: skip

    assert result.returncode == 0, result.stdout + result.stderr
    per_image = ["_classes.json", "_labels.png", "_overlay.png"]
    assert sorted(os.listdir(out)) == sorted(
        ["clip", "clip_overlay.mp4"] + [name + suffix for name in sizes for suffix in per_image]
    )
    assert sorted(os.listdir(out / "clip")) == sorted(f"clip_{i:06d}{suffix}" for i in range(3) for suffix in per_image)
    assert "ClearCLIP demo: 100%" in result.stderr  # the progress bar, over all pictures

    predictor = tiny_predictor(tiny_json)
    predictor.set_vocabulary(["cat, kitten", "grass, lawn", "sky"])
    names = ["cat", "grass", "sky"]
    for name, (height, width) in sizes.items():
        check_overlay(out / f"{name}_overlay.png", height, width)
        image = np.array(Image.open(next(inputs.glob(name + ".*"))).convert("RGB"))
        check_masks(str(out / name), names, predictor.predict_labels(image).numpy())
    for index, frame in enumerate(frames):
        stem = out / "clip" / f"clip_{index:06d}"
        overlay_size = check_overlay(f"{stem}_overlay.png", 48, 64)
        check_masks(str(stem), names, predictor.predict_labels(frame).numpy())
    video = read_video(out / "clip_overlay.mp4")
    even_size = tuple(side + side % 2 for side in overlay_size)  # MPEG-4 needs even sides
    assert len(video) == 3 and (video[0].shape[1], video[0].shape[0]) == even_size
    # Each decoded frame (RGB) is that frame's overlay PNG (mp4v is lossy; swapped channels differ far more).
    for index, decoded in enumerate(video):
        with Image.open(out / "clip" / f"clip_{index:06d}_overlay.png") as png:
            overlay = np.array(png.convert("RGB")).astype(np.float64)
        region = decoded[: overlay.shape[0], : overlay.shape[1]].astype(np.float64)
        difference = np.abs(region - overlay).mean()
        assert difference < 10, f"frame {index}: mean abs difference {difference:.1f} from its overlay"
        # The picture itself (top left; red > green > blue): ~6 here, ~40 with red and blue swapped.
        picture = np.abs(region[:48, :64] - overlay[:48, :64]).mean()
        assert picture < 15, f"frame {index}: mean abs difference {picture:.1f} from its overlay's picture"


def test_overlay_legend_lists_the_classes_present_largest_first():
    metadata = visualizer.make_metadata(["cat", "grass", "sky", "road"])
    labels = np.zeros((90, 120), dtype=np.int64)
    labels[:, 40:] = 2  # sky 2/3, cat 1/3, grass and road absent
    image = np.full((90, 120, 3), 128, dtype=np.uint8)
    overlay = visualizer.draw_overlay(image, labels, metadata)
    assert overlay.shape[1] > 120 and overlay.shape[0] >= 90

    font_px = 10 * 100 / 72  # the Visualizer's smallest font at matplotlib's 100 dpi
    swatch_centre = lambda row: overlay[int(4 + row * 1.7 * font_px + font_px / 2), int(120 + 6 + font_px / 2)]  # noqa: E731
    np.testing.assert_array_equal(swatch_centre(0), metadata.stuff_colors[2])
    np.testing.assert_array_equal(swatch_centre(1), metadata.stuff_colors[0])
    np.testing.assert_array_equal(swatch_centre(2), visualizer.LEGEND_BACKGROUND)
    # regions are tinted with their class colour
    sky = np.array(metadata.stuff_colors[2], dtype=float)
    assert np.abs(overlay[45, 100].astype(float) - sky).sum() < np.abs(128.0 - sky).sum()

    assert visualizer.legend_entries(np.array([0.5, 0.0, 0.3, 0.2]), ["a", "b", "c", "d"], rows=2) == [
        (0, "a 50.0%"),
        (None, "+2 more 50.0%"),
    ]


def test_an_output_too_large_for_the_dense_map_still_gets_its_overlay_and_masks(tmp_path, tiny_json):
    """With MAX_DENSE_ELEMENTS 0 every image takes the class-chunked path (labels, no ``sem_seg``)."""
    dense, chunked = tiny_predictor(tiny_json), tiny_predictor(tiny_json, "MODEL.CLEARCLIP.MAX_DENSE_ELEMENTS", 0)
    image_path = tmp_path / "photo.png"
    Image.fromarray(random_image(36, 44, seed=5)).save(image_path)
    written = demo.run_demo(inputs=[str(image_path)], output=str(tmp_path / "out.png"),
                            vocabulary="cat; dog, puppy; sky", save_masks=True, predictor=chunked)  # fmt: skip
    assert written == [str(tmp_path / "out.png")]
    dense.set_vocabulary(["cat", "dog, puppy", "sky"])
    expected = dense(random_image(36, 44, seed=5)).argmax(dim=0).numpy()
    assert np.array_equal(np.array(Image.open(tmp_path / "out_labels.png")), expected)


def test_one_image_to_an_output_file_and_runs_that_reuse_the_predictor(tmp_path, tiny_json, monkeypatch):
    predictor = tiny_predictor(tiny_json)
    model = predictor.model
    import clearclip_d2.modeling.meta_arch as meta_arch

    monkeypatch.setattr(meta_arch, "build_clip_model_from_config", lambda *a, **k: pytest.fail("the model was rebuilt"))
    image_path = tmp_path / "photo.png"
    Image.fromarray(random_image(36, 44, seed=5)).save(image_path)
    first = demo.run_demo(inputs=[str(image_path)], output=str(tmp_path / "one.png"), vocabulary="cat; grass",
                          save_masks=True, predictor=predictor)  # fmt: skip
    second = demo.run_demo(inputs=[str(image_path)], output=str(tmp_path / "two"),
                           vocabulary="cat; dog, puppy; sky; road", save_masks=True, predictor=predictor)  # fmt: skip

    assert first == [str(tmp_path / "one.png")] and second == [str(tmp_path / "two" / "photo_overlay.png")]
    assert sorted(os.listdir(tmp_path)) == ["one.png", "one_classes.json", "one_labels.png", "photo.png", "two"]
    assert list(json.loads((tmp_path / "one_classes.json").read_text())) == ["cat", "grass"]
    assert list(json.loads((tmp_path / "two" / "photo_classes.json").read_text())) == ["cat", "dog", "sky", "road"]
    assert predictor.model is model


def unreadable_codec_video(tmp_path):
    """A real AVI whose codec tag no decoder knows."""
    write_video(tmp_path / "good.avi", [random_image(16, 16, seed=0)] * 2)
    path = tmp_path / "strange_codec.avi"
    path.write_bytes((tmp_path / "good.avi").read_bytes().replace(b"MJPG", b"QQQQ"))
    os.remove(tmp_path / "good.avi")
    return path


@pytest.mark.parametrize(
    "case, fragment",
    [
        ("unreadable_codec", "cannot read video"),
        ("damaged_video", "cannot read video"),
        ("empty_vocabulary", "--vocabulary is empty"),
        ("empty_vocabulary_file", "is empty"),
        ("duplicate_classes", "'Cat' appears twice"),
        ("output_is_a_file", "is a file, but the results need a folder"),
        ("file_output_for_two_images", "there are 2 inputs; give a folder"),
        ("file_output_for_a_video", "but the input is a video; give a folder"),
        ("missing_mask_model_config", "/nonexistent/mask_rcnn.yaml does not exist"),
    ],
)
def test_bad_input_is_one_line_before_any_work(tmp_path, tiny_json, monkeypatch, capfd, case, fragment):
    monkeypatch.setattr(demo, "ClearCLIPPredictor", lambda *a, **k: pytest.fail("the model was built"))
    work = tmp_path / "work"
    work.mkdir()
    image = work / "a.png"
    Image.fromarray(random_image(20, 20, seed=0)).save(image)
    run = {"inputs": [str(image)], "output": str(tmp_path / "out")}  # run_demo's arguments (the demo's flags)
    if case == "unreadable_codec":
        run["inputs"] = [str(image), str(unreadable_codec_video(work))]
    elif case == "damaged_video":
        (work / "damaged.mp4").write_bytes(os.urandom(2000))
        run["inputs"] = [str(work / "damaged.mp4")]
    elif case == "empty_vocabulary":
        run["vocabulary"] = " ; "
    elif case == "empty_vocabulary_file":
        (work / "classes.txt").write_text("\n")
        run["vocabulary_file"] = str(work / "classes.txt")
    elif case == "duplicate_classes":
        run["vocabulary"] = "cat; dog, Cat"
    elif case == "output_is_a_file":
        (tmp_path / "out").write_text("a file")
    elif case == "file_output_for_two_images":
        Image.fromarray(random_image(20, 20, seed=1)).save(work / "b.png")
        run = {"inputs": [str(work)], "output": str(tmp_path / "out.png")}
    elif case == "file_output_for_a_video":
        write_video(work / "clip.avi", [random_image(16, 16, seed=0)] * 2)
        run = {"inputs": [str(work / "clip.avi")], "output": str(tmp_path / "out.png")}
    options = tiny_opts(tiny_json)
    if case == "missing_mask_model_config":
        options += ["MODEL.CLEARCLIP.REFINE", "masks", "MODEL.CLEARCLIP.MASK_MODEL_CONFIG", "/nonexistent/mask_rcnn.yaml"]

    inputs_before = sorted(os.listdir(work))

    with pytest.raises(SystemExit) as exit_info, exit_on_user_error("demo.py"):  # as tools/demo.py runs it
        demo.run_demo(demo.demo_config(CONFIG, options), **run)

    assert exit_info.value.code == 2
    lines = [line for line in capfd.readouterr().err.splitlines() if line.strip()]  # OpenCV writes to fd 2 too
    assert len(lines) == 1 and lines[0].startswith("demo.py: error:") and fragment in lines[0], lines
    assert sorted(os.listdir(tmp_path)) == (["out", "work"] if case == "output_is_a_file" else ["work"])
    assert sorted(os.listdir(work)) == inputs_before  # nothing written beside the inputs either


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
    found = expand_inputs([str(tmp_path), str(tmp_path / "*.png"), str(tmp_path / "sub" / "a.png")])
    assert [os.path.relpath(p, tmp_path) for p in found] == ["a.JPG", "b.png", os.path.join("sub", "a.png")]
    assert demo.output_names(found) == ["a", "b", "a-2"]
    with pytest.raises(ClearCLIPError, match="does not exist"):
        expand_inputs([str(tmp_path / "missing.png")])
    with pytest.raises(ClearCLIPError, match="matches no images"):
        expand_inputs([str(tmp_path / "*.gif")])


def test_sample_images_are_bundled_with_scikit_image(tmp_path):
    pytest.importorskip("skimage")
    paths = demo.write_sample_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == [f"{name}.png" for name in demo.SAMPLE_IMAGES]
    for path in paths:
        with Image.open(path) as image:
            assert image.mode == "RGB" and min(image.size) >= 256
