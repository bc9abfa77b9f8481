"""datasets/prepare_coco_stuff.py (its command line: clearclip_d2.data.preparation.cli.prepare_coco_stuff):
the id mapping, the CLI on a synthetic official layout,
and the registered ``coco_2017_val_stuff_sem_seg`` reading its output.

The expected mapping is written out here independently of the script: the 11 unused
COCO-Stuff thing ids (1-based 12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91) as 0-based
pixel values.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from clearclip_d2.data.preparation import label_maps as maps
from clearclip_d2.data.preparation.cli import check_coco_stuff_class_list, prepare_coco_stuff
from clearclip_d2.utils.errors import ClearCLIPError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO_ROOT, "datasets", "prepare_coco_stuff.py")
CLASS_NAMES = os.path.join(REPO_ROOT, "clearclip_d2", "resources", "class_names", "coco_stuff.txt")

UNUSED_1_BASED = [12, 26, 29, 30, 45, 66, 68, 69, 71, 83, 91]
UNUSED_0_BASED = [11, 25, 28, 29, 44, 65, 67, 68, 70, 82, 90]


def expected_lut():
    """Raw 0-based value -> class index, built from the explicit list of unused ids."""
    lut = {}
    next_class = 0
    for raw in range(182):
        if raw in UNUSED_0_BASED:
            continue
        lut[raw] = next_class
        next_class += 1
    return lut


def expected_convert(raw: np.ndarray) -> np.ndarray:
    lut = expected_lut()
    out = np.full_like(raw, 255)
    for value in np.unique(raw):
        if int(value) in lut:
            out[raw == value] = lut[int(value)]
    return out


def run_cli(*args):
    """Run the script in a fresh interpreter, as a user would (``$DETECTRON2_DATASETS`` unset)."""
    env = {k: v for k, v in os.environ.items() if k != "DETECTRON2_DATASETS"}
    return subprocess.run(
        [sys.executable, SCRIPT, *args], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )


@pytest.fixture
def run_main(capsys, monkeypatch):
    """Run the script's command line in this process (fast: no interpreter start-up)."""

    def run(*args, env_root=None):
        monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
        if env_root is not None:
            monkeypatch.setenv("DETECTRON2_DATASETS", str(env_root))
        capsys.readouterr()
        try:
            prepare_coco_stuff(list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        out, err = capsys.readouterr()
        return subprocess.CompletedProcess(args, code, out, err)

    return run


def error_lines(result):
    return [line for line in result.stderr.splitlines() if line.startswith("prepare_coco_stuff.py: error:")]


def raw_dir(root, split="val2017"):
    return os.path.join(str(root), "coco", "stuffthingmaps", split)


def out_dir(root, split="val2017"):
    return os.path.join(str(root), "coco", "stuffthingmaps_detectron2", split)


def synthetic_labels():
    """A few raw label maps covering every used id, every unused id and 255."""
    all_values = np.array(list(range(182)) + [255], dtype=np.uint8)
    rng = np.random.RandomState(0)
    return {
        "000000000139": all_values.reshape(1, -1).repeat(3, axis=0),  # every value, 3 x 183
        "000000000285": rng.choice(all_values, size=(17, 23)).astype(np.uint8),
        "000000000632": np.array(UNUSED_0_BASED + [255, 0, 181], dtype=np.uint8).reshape(2, 7),
    }


def write_raw(root, labels, split="val2017"):
    os.makedirs(raw_dir(root, split), exist_ok=True)
    for stem, label in labels.items():
        Image.fromarray(label, mode="L").save(os.path.join(raw_dir(root, split), stem + ".png"))


def read_png(path):
    with Image.open(path) as image:
        assert image.mode == "L", (path, image.mode)
        return np.array(image)


# --- the mapping as a function ------------------------------------------------------------


def test_unused_ids_are_the_1_based_ids_minus_one():
    assert UNUSED_0_BASED == [i - 1 for i in UNUSED_1_BASED]


def test_id_map_matches_independent_expectation():
    lut = maps.coco_stuff_lut()
    assert lut.shape == (256,) and lut.dtype == np.uint8
    expected = expected_lut()
    assert len(expected) == 171
    for raw in range(256):
        assert lut[raw] == expected.get(raw, 255), raw
    assert sorted(set(lut.tolist()) - {255}) == list(range(171))


def test_id_map_agrees_with_class_list():
    with open(CLASS_NAMES) as f:
        names = [line.strip() for line in f if line.strip()]
    assert len(names) == 171
    lut = maps.coco_stuff_lut()
    assert names[lut[0]] == "person"
    assert names[lut[91]] == "banner"
    assert names[lut[181]] == "wood"
    check_coco_stuff_class_list(names)
    with pytest.raises(ClearCLIPError):
        check_coco_stuff_class_list(names[1:] + names[:1])


def test_convert_label():
    lut = maps.coco_stuff_lut()
    for label in synthetic_labels().values():
        np.testing.assert_array_equal(lut[label], expected_convert(label))
    assert lut[np.array([[90, 91]], dtype=np.uint8)].tolist() == [[255, 80]]


def test_coco_stuff_id_map_is_read_only():
    lut = maps.coco_stuff_lut()
    with pytest.raises(ValueError):
        lut[0] = 7
    assert maps.coco_stuff_lut()[0] == 0


# --- the command line -----------------------------------------------------------------------


def test_help(run_main):
    result = run_main("--help")
    assert result.returncode == 0, result.stderr
    for option in ("--root", "--splits", "--workers", "--force"):
        assert option in result.stdout


def test_cli_converts_is_idempotent_refuses_and_forces(tmp_path, run_main):
    labels = synthetic_labels()
    write_raw(tmp_path, labels)
    (tmp_path / "coco" / "stuffthingmaps" / "val2017" / "README.txt").write_text("not a label map")

    result = run_cli("--root", str(tmp_path), "--workers", "2")
    assert result.returncode == 0, result.stderr
    assert "skipping train2017" in result.stdout and raw_dir(tmp_path, "train2017") in result.stdout
    assert "val2017: 3 written, 0 unchanged" in result.stdout
    outputs = sorted(os.listdir(out_dir(tmp_path)))
    assert outputs == sorted(stem + ".png" for stem in labels)  # no temp files, no README
    for stem, label in labels.items():
        np.testing.assert_array_equal(read_png(os.path.join(out_dir(tmp_path), stem + ".png")), expected_convert(label))
    assert not os.path.exists(out_dir(tmp_path, "train2017"))

    # A second run skips every file and leaves the bytes as they were.
    before = {name: open(os.path.join(out_dir(tmp_path), name), "rb").read() for name in outputs}
    mtimes = {name: os.stat(os.path.join(out_dir(tmp_path), name)).st_mtime_ns for name in outputs}
    result = run_main("--root", str(tmp_path), "--workers", "1")
    assert result.returncode == 0, result.stderr
    assert "val2017: 0 written, 3 unchanged" in result.stdout
    for name in outputs:
        path = os.path.join(out_dir(tmp_path), name)
        assert open(path, "rb").read() == before[name]
        assert os.stat(path).st_mtime_ns == mtimes[name]

    # An output that differs is refused, and left as it was.
    tampered = os.path.join(out_dir(tmp_path), "000000000285.png")
    wrong = np.zeros_like(labels["000000000285"])
    Image.fromarray(wrong, mode="L").save(tampered)
    tampered_bytes = open(tampered, "rb").read()
    result = run_main("--root", str(tmp_path), "--workers", "2")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert tampered in lines[0] and "--force" in lines[0]
    assert "Traceback" not in result.stderr
    assert open(tampered, "rb").read() == tampered_bytes

    # --force overwrites it with the right labels.
    result = run_main("--root", str(tmp_path), "--force")
    assert result.returncode == 0, result.stderr
    assert "val2017: 1 written, 2 unchanged" in result.stdout
    np.testing.assert_array_equal(read_png(tampered), expected_convert(labels["000000000285"]))


def test_cli_default_root_is_detectron2_datasets(tmp_path, run_main):
    write_raw(tmp_path, {"000000000001": np.array([[0, 11, 255, 181]], dtype=np.uint8)}, split="train2017")
    result = run_main("--splits", "train2017", env_root=tmp_path)
    assert result.returncode == 0, result.stderr
    out = read_png(os.path.join(out_dir(tmp_path, "train2017"), "000000000001.png"))
    assert out.tolist() == [[0, 255, 255, 170]]


def test_cli_missing_source_exits_2_naming_the_folder(tmp_path, run_main):
    result = run_main("--root", str(tmp_path))
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert os.path.join(str(tmp_path), "coco", "stuffthingmaps") in lines[0]
    assert "stuffthingmaps_trainval2017.zip" in lines[0]
    assert "Traceback" not in result.stderr

    result = run_main("--root", str(tmp_path), "--splits", "val2017")
    assert result.returncode == 2
    assert raw_dir(tmp_path, "val2017") in error_lines(result)[0]


@pytest.mark.parametrize(
    "stem, make, expect",
    [
        ("bad_values", lambda p: Image.fromarray(np.array([[0, 182, 200, 254, 255, 182]], dtype=np.uint8)).save(p),
         "4 pixels"),
        ("rgb", lambda p: Image.fromarray(np.zeros((4, 4, 3), dtype=np.uint8)).save(p), "single-channel"),
        ("corrupt", lambda p: open(p, "wb").write(b"not a png"), "cannot read"),
    ],
)
def test_cli_bad_label_map_exits_2_naming_the_file(tmp_path, run_main, stem, make, expect):
    write_raw(tmp_path, {"000000000001": np.array([[0, 1]], dtype=np.uint8)})
    bad = os.path.join(raw_dir(tmp_path), stem + ".png")
    make(bad)
    result = run_main("--root", str(tmp_path), "--workers", "2")
    assert result.returncode == 2
    lines = error_lines(result)
    assert len(lines) == 1, result.stderr
    assert bad in lines[0] and expect in lines[0], lines[0]
    assert "Traceback" not in result.stderr
    assert not os.path.exists(os.path.join(out_dir(tmp_path), stem + ".png"))


# --- the registered dataset reads the converted files ---------------------------------------

LOAD_DATASET = """
import json
import clearclip_d2
from detectron2.data import DatasetCatalog, MetadataCatalog
records = DatasetCatalog.get("coco_2017_val_stuff_sem_seg")
meta = MetadataCatalog.get("coco_2017_val_stuff_sem_seg")
print(json.dumps({"records": records, "num_classes": len(meta.stuff_classes), "ignore": meta.ignore_label}))
"""


def test_registered_dataset_reads_converted_labels(tmp_path, run_main):
    labels = synthetic_labels()
    write_raw(tmp_path, labels)
    image_dir = tmp_path / "coco" / "val2017"
    image_dir.mkdir(parents=True)
    for stem, label in labels.items():
        Image.fromarray(np.zeros(label.shape + (3,), dtype=np.uint8)).save(image_dir / (stem + ".jpg"))
    assert run_main("--root", str(tmp_path), "--workers", "1").returncode == 0

    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", LOAD_DATASET], capture_output=True, text=True, env=env, cwd=REPO_ROOT, timeout=300
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout.strip().splitlines()[-1])
    assert loaded["num_classes"] == 171 and loaded["ignore"] == 255
    records = sorted(loaded["records"], key=lambda r: r["file_name"])
    stems = sorted(labels)
    assert [r["file_name"] for r in records] == [str(image_dir / (stem + ".jpg")) for stem in stems]
    assert [r["sem_seg_file_name"] for r in records] == [os.path.join(out_dir(tmp_path), stem + ".png") for stem in stems]
    for record, stem in zip(records, stems):
        np.testing.assert_array_equal(read_png(record["sem_seg_file_name"]), expected_convert(labels[stem]))
