"""The preparation scripts of the benchmarks other than COCO-Stuff (tests/test_prepare_coco_stuff.py
covers the shared plumbing in depth): mappings, the command lines, and bad input.

Expected labels come from tests/benchmark_fixtures.py, written independently of the package.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import scipy.io
from PIL import Image

import benchmark_fixtures as fixtures
from clearclip_d2.data.preparation.cli import PREPARE_COMMANDS
from conftest import REPO_ROOT

SCRIPTS = {  # script -> (maker, prepared datasets, one source file the maker writes)
    "prepare_voc": (fixtures.make_voc, ["voc_2012_val_20", "voc_2012_val_21"],
                    "VOCdevkit/VOC2012/SegmentationClass/2007_000033.png"),
    "prepare_pascal_context": (fixtures.make_context,
                               ["pascal_context_59_val", "pascal_context_60_val", "pascal_context_459_val"],
                               "VOCdevkit/VOC2010/trainval/2008_000002.mat"),
    "prepare_coco_object": (fixtures.make_coco, ["coco_2017_val_object_sem_seg"],
                            "coco/stuffthingmaps/val2017/000000000139.png"),
    "prepare_cityscapes": (fixtures.make_cityscapes, ["cityscapes_fine_sem_seg_val"],
                           "cityscapes/gtFine/val/frankfurt/frankfurt_000000_000294_gtFine_labelIds.png"),
    "prepare_ade20k": (fixtures.make_ade20k, ["ade20k_sem_seg_val"],
                       "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png"),
    "prepare_ade20k_full": (fixtures.make_ade20k_full, ["ade20k_full_sem_seg_val"],
                            "ADE20K_2021_17_01/images/ADE/validation/cultural/apse__indoor/ADE_val_00000001_seg.png"),
}  # fmt: skip
# Where each script says the download goes when its input is missing.
MISSING_INPUT = {
    "prepare_voc": ("VOCdevkit/VOC2012/SegmentationClass", "VOCtrainval_11-May-2012.tar"),
    "prepare_pascal_context": ("VOCdevkit/VOC2010/labels.txt", "trainval.tar.gz"),
    "prepare_coco_object": ("coco/stuffthingmaps/val2017", "stuffthingmaps_trainval2017.zip"),
    "prepare_cityscapes": ("cityscapes/gtFine/val", "gtFine_trainvaltest.zip"),
    "prepare_ade20k": ("ADEChallengeData2016/annotations/validation", "ADEChallengeData2016.zip"),
    "prepare_ade20k_full": ("ADE20K_2021_17_01/images/ADE/validation", "ADE20K_2021_17_01.zip"),
}


@pytest.fixture
def run(capsys, monkeypatch):
    """Run a script's command line (``PREPARE_COMMANDS[name](args)``) in this process; returns
    (exit status, stdout, stderr)."""

    def run_script(name, *args):
        monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
        capsys.readouterr()
        try:
            PREPARE_COMMANDS[name](list(args))
            code = 0
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 0
        out, err = capsys.readouterr()
        return code, out, err

    return run_script


def one_error_line(err, program):
    lines = [line for line in err.splitlines() if line.startswith(f"{program}.py: error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def label_of(path):
    with Image.open(path) as image:
        return np.array(image)


def prepared_label_path(root, dataset, sample):
    from test_benchmarks_end_to_end import _label_file

    return _label_file(sample, dataset)


# ---------------------------------------------------------------------------- command lines
@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_converts_and_is_idempotent(script, tmp_path, run):
    make, datasets, _ = SCRIPTS[script]
    samples = make(str(tmp_path), np.random.default_rng(1))
    code, out, err = run(script, "--root", str(tmp_path), "--workers", "2")
    assert code == 0, err
    assert " 0 unchanged" in out
    for dataset in datasets:
        for sample in samples[dataset]:
            label = label_of(prepared_label_path(tmp_path, dataset, sample))
            assert label.dtype == sample.label.dtype and np.array_equal(label, sample.label), (dataset, sample.image)
    code, out, err = run(script, "--root", str(tmp_path), "--workers", "1")
    assert code == 0 and " 0 written" in out, (out, err)
    code, out, _ = run(script, "--help")
    assert code == 0 and "--root" in out and "--force" in out and "--workers" in out


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_script_without_download_names_folder_and_file(script, tmp_path, run):
    code, _, err = run(script, "--root", str(tmp_path))
    assert code == 2
    line = one_error_line(err, script)
    where, download = MISSING_INPUT[script]
    assert os.path.join(str(tmp_path), where) in line and download in line, line


@pytest.mark.parametrize(
    "script, corrupt, expected",
    [
        ("prepare_voc", lambda p: Image.fromarray(np.array([[0, 21, 254]], np.uint8)).save(p), "2 pixels"),
        ("prepare_voc", lambda p: Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(p), "single-channel"),
        ("prepare_pascal_context", lambda p: scipy.io.savemat(p, {"LabelMap": np.array([[1, 460, 999]], np.uint16)}),
         "2 pixels"),
        ("prepare_pascal_context", lambda p: scipy.io.savemat(p, {"Other": np.zeros((2, 2))}), "no LabelMap"),
        ("prepare_coco_object", lambda p: Image.fromarray(np.array([[182, 3]], np.uint8)).save(p), "1 pixels"),
        ("prepare_cityscapes", lambda p: Image.fromarray(np.array([[34, 255, 7]], np.uint8)).save(p), "2 pixels"),
        ("prepare_ade20k", lambda p: Image.fromarray(np.array([[151, 0]], np.uint8)).save(p), "1 pixels"),
        ("prepare_ade20k_full", lambda p: Image.fromarray(np.zeros((4, 4), np.uint8)).save(p), "not an 8-bit RGB"),
        ("prepare_ade20k_full", lambda p: open(p, "wb").write(b"not a png"), "cannot read"),
    ],
)
def test_bad_source_file_is_named_and_nothing_is_written_for_it(script, corrupt, expected, tmp_path, run):
    make, _, source = SCRIPTS[script]
    make(str(tmp_path), np.random.default_rng(2))
    bad = os.path.join(str(tmp_path), source)
    corrupt(bad)
    code, _, err = run(script, "--root", str(tmp_path), "--workers", "2")
    assert code == 2
    line = one_error_line(err, script)
    assert bad in line and expected in line, line


def test_ade20k_full_refuses_16_bit_photo_and_missing_segmentation(tmp_path, run):
    fixtures.make_ade20k_full(str(tmp_path), np.random.default_rng(3))
    folder = os.path.join(str(tmp_path), "ADE20K_2021_17_01", "images", "ADE", "validation", "cultural", "apse__indoor")
    photo = os.path.join(folder, "ADE_val_00000001.jpg")
    Image.fromarray(np.full((40, 56), 40000, np.uint16)).save(photo, format="PNG")  # a 16-bit photo named .jpg
    code, _, err = run("prepare_ade20k_full", "--root", str(tmp_path))
    assert code == 2 and photo in one_error_line(err, "prepare_ade20k_full") and "8 bits" in err
    os.remove(os.path.join(folder, "ADE_val_00000001_seg.png"))
    code, _, err = run("prepare_ade20k_full", "--root", str(tmp_path))
    assert code == 2 and "has no segmentation" in one_error_line(err, "prepare_ade20k_full")


def test_pascal_context_skips_val_images_without_label_and_writes_the_list_last(tmp_path, run):
    fixtures.make_context(str(tmp_path), np.random.default_rng(4))
    code, out, err = run("prepare_pascal_context", "--root", str(tmp_path), "--variants", "459")
    assert code == 0, err
    assert f"skipping 1 val images without a trainval/<id>.mat: {fixtures.CONTEXT_VAL_WITHOUT_MAT}" in out
    listing = os.path.join(str(tmp_path), "VOCdevkit", "VOC2010", "annotations_detectron2", "pascal_context_val.txt")
    assert open(listing).read().split() == fixtures.CONTEXT_VAL_IDS
    assert not os.path.exists(os.path.join(os.path.dirname(listing), "pc59_val"))


def test_pascal_context_needs_the_59_names_in_labels_txt(tmp_path, run):
    fixtures.make_context(str(tmp_path), np.random.default_rng(5))
    labels = os.path.join(str(tmp_path), "VOCdevkit", "VOC2010", "labels.txt")
    text = open(labels).read().replace(": tvmonitor\n", ": tv\n")
    open(labels, "w").write(text)
    code, _, err = run("prepare_pascal_context", "--root", str(tmp_path))
    assert code == 2 and "'tvmonitor'" in one_error_line(err, "prepare_pascal_context") and labels in err


def test_voc_refuses_different_existing_output_unless_forced(tmp_path, run):
    samples = fixtures.make_voc(str(tmp_path), np.random.default_rng(6))
    assert run("prepare_voc", "--root", str(tmp_path))[0] == 0
    sample = samples["voc_2012_val_21"][0]
    target = prepared_label_path(tmp_path, "voc_2012_val_21", sample)
    Image.fromarray(np.zeros_like(sample.label)).save(target)
    code, _, err = run("prepare_voc", "--root", str(tmp_path))
    assert code == 2 and target in one_error_line(err, "prepare_voc") and "--force" in err
    code, out, _ = run("prepare_voc", "--root", str(tmp_path), "--force")
    assert code == 0 and "1 written" in out and np.array_equal(label_of(target), sample.label)


def test_scripts_run_as_commands(tmp_path):
    """A fresh interpreter, as a user runs it (imports, sys.path, exit status)."""
    fixtures.make_ade20k(str(tmp_path), np.random.default_rng(7))
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, "datasets", "prepare_ade20k.py"), "--root",
                             str(tmp_path)], capture_output=True, text=True, timeout=300, cwd=str(tmp_path))
    assert result.returncode == 0 and "validation: 2 written" in result.stdout, result.stderr[-2000:]


# ---------------------------------------------------------------------------- mappings
def test_lookup_tables_match_the_benchmark_definitions():
    from clearclip_d2.data.preparation import label_maps as maps

    raw = np.arange(256, dtype=np.uint8)
    voc20 = np.where((raw >= 1) & (raw <= 20), raw.astype(int) - 1, 255)
    assert np.array_equal(maps.voc20_lut(), voc20)
    assert np.array_equal(maps.voc21_lut()[:21], np.arange(21)) and (maps.voc21_lut()[21:] == 255).all()
    assert np.array_equal(maps.ade20k_lut(), np.where((raw >= 1) & (raw <= 150), raw.astype(int) - 1, 255))
    assert np.array_equal(maps.cityscapes_lut(), fixtures.lookup(raw, fixtures.CITYSCAPES_TRAIN_IDS, 255, np.uint8))
    assert np.array_equal(maps.coco_object_lut(), fixtures.coco_object_expected(raw))
    assert np.array_equal(maps.coco_stuff_lut(), fixtures.coco_stuff_expected(raw))
    ids = np.arange(460, dtype=np.uint16)
    assert np.array_equal(maps.context59_lut(fixtures.CONTEXT59_IDS),
                          fixtures.lookup(ids, {v: i for i, v in enumerate(fixtures.CONTEXT59_IDS)}, 255, np.uint8))
    assert np.array_equal(maps.context60_lut(fixtures.CONTEXT59_IDS)[fixtures.CONTEXT59_IDS], np.arange(1, 60))
    assert maps.context459_labels(np.array([[0, 1, 459]], np.uint16)).tolist() == [[65535, 0, 458]]
    for ade_id, train_id in fixtures.ADE_FULL_ROWS.items():
        assert maps.ade20k_full_lut()[ade_id] == train_id
    assert (maps.ade20k_full_lut() != 65535).sum() == 847


def test_context59_names_are_the_mmseg_ids_of_labels_txt():
    from clearclip_d2.data.preparation import label_maps as maps

    labels = {i: name for i, name in enumerate(fixtures.context_label_names(), 1)}
    with open(os.path.join(REPO_ROOT, "clearclip_d2", "resources", "class_names", "context59.txt")) as f:
        names = [line.strip() for line in f if line.strip()]
    assert maps.context_subset_ids(labels, names, "labels.txt") == fixtures.CONTEXT59_IDS


@pytest.mark.parametrize("size, expected", [((600, 800), (512, 683)), ((800, 600), (683, 512)), ((512, 900), (512, 900)),
                                            ((513, 1026), (512, 1024)), ((1024, 1025), (512, 512)), ((1024, 1027), (512, 514)),
                                            ((300, 200), (300, 200))])
def test_ade20k_full_shrinks_short_side_to_512(size, expected):
    """Long side round(long / short * 512) with Python's round (halves to even), as the Detectron2 projects."""
    from clearclip_d2.data.preparation import label_maps as maps

    assert maps.ade20k_full_size(*size) == expected
    labels = np.zeros(size, np.uint16)
    labels[: size[0] // 2] = 7
    image, out = maps.ade20k_full_resize(np.zeros(size + (3,), np.uint8), labels)
    assert out.shape == expected and image.shape == expected + (3,) and set(np.unique(out)) == {0, 7}


def test_ade20k_full_class_ids_from_seg_colours():
    from clearclip_d2.data.preparation import label_maps as maps

    ids = np.array([[2978, 1831, 0, 6655]])
    seg = fixtures.ade_full_seg_png(ids, np.random.default_rng(0))
    assert maps.ade20k_full_class_ids(seg).tolist() == ids.tolist()
    assert maps.ade20k_full_labels(seg).tolist() == [[0, 11, 65535, 65535]]


def test_repeated_splits_and_variants_are_converted_once():
    from clearclip_d2.data.preparation import plumbing

    parser = plumbing.preparation_parser("p", "d", "x/", splits=("train", "val"), default_splits=("val",))
    plumbing.add_list_option(parser, "--variants", ("a", "b"), ("a", "b"), "sets")
    args = parser.parse_args(["--splits", "val", "train", "val", "--variants", "b", "b", "a"])
    assert args.splits == ["val", "train"] and args.variants == ["b", "a"]
    assert parser.parse_args([]).splits == ["val"] and parser.parse_args([]).variants == ["a", "b"]


def test_unreadable_official_files_are_named_in_one_line(tmp_path):
    from clearclip_d2.data.preparation import converters, plumbing
    from clearclip_d2.utils.errors import ClearCLIPError

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ClearCLIPError, match=rf"cannot read label map {broken}: "):
        plumbing.read_label_map(str(broken))
    with pytest.raises(ClearCLIPError, match=rf"cannot read segmentation {broken}: "):
        converters.read_ade_segmentation(str(broken))
