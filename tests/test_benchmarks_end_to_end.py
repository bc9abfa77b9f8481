"""Every benchmark end to end: official-format files -> preparation script -> registered dataset ->
``tools/train_net.py --eval-only`` (one run evaluating all ten datasets with a tiny random model).

Checked per dataset, each against a computation written here:
* the prepared label maps equal the labels derived from the raw files (benchmark_fixtures);
* the evaluated images are exactly the benchmark's images (lists and pairing respected);
* the predictions (train_net's sem_seg_predictions.json) agree with the independent reference
  pipeline (tests/reference_clearclip.py) with the dataset's class list and background threshold;
* mIoU, mIoU-mmseg, pACC and the set of classes present in the ground truth, recomputed from
  those predictions and the expected labels with a numpy confusion matrix.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import benchmark_fixtures as fixtures
import reference_clearclip as ref
from clearclip_d2.data.preparation.cli import PREPARE_COMMANDS
from conftest import REPO_ROOT

TRAIN_NET = os.path.join(REPO_ROOT, "tools", "train_net.py")
CLASS_NAMES_DIR = os.path.join(REPO_ROOT, "clearclip_d2", "resources", "class_names")
TEMPLATES = ["a photo of a {}."]
# Small test-time geometry (the reference's own geometry is tested in test_modeling_exactness).
SHORT_SIDE, CROP, STRIDE = 64, 48, 32
PREPARE_SCRIPTS = ("prepare_voc", "prepare_pascal_context", "prepare_coco_stuff", "prepare_coco_object",
                   "prepare_cityscapes", "prepare_ade20k", "prepare_ade20k_full")
# dataset -> (class-names file, the reference's background threshold)
DATASETS = {
    "voc_2012_val_20": ("voc20", 0.0),
    "voc_2012_val_21": ("voc21", 0.5),
    "pascal_context_59_val": ("context59", 0.0),
    "pascal_context_60_val": ("context60", 0.15),
    "pascal_context_459_val": ("context459", 0.0),
    "coco_2017_val_stuff_sem_seg": ("coco_stuff", 0.0),
    "coco_2017_val_object_sem_seg": ("coco_object", 0.4),
    "cityscapes_fine_sem_seg_val": ("city_scapes", 0.0),
    "ade20k_sem_seg_val": ("ade20k", 0.0),
    "ade20k_full_sem_seg_val": ("ade20k_full", 0.0),
}


def run_script(name, *args):
    """Run ``datasets/<name>.py``'s command line in this process."""
    try:
        PREPARE_COMMANDS[name](list(args))
    except SystemExit as e:
        assert e.code in (0, None), f"{name} exited with {e.code}"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """(datasets root, {dataset: [Sample]}) after running every preparation script once."""
    root = str(tmp_path_factory.mktemp("benchmarks"))
    rng = np.random.default_rng(0)
    samples = {}
    for make in fixtures.MAKERS:
        samples.update(make(root, rng))
    assert set(samples) == set(DATASETS)
    for script in PREPARE_SCRIPTS:
        run_script(script, "--root", root, "--workers", "1")
    return root, samples


@pytest.fixture(scope="module")
def evaluation(prepared, tiny_model_files, tmp_path_factory):
    """metrics.json and the output folder of ONE train_net run over all datasets."""
    root, _ = prepared
    model_json, checkpoint = tiny_model_files
    output = tmp_path_factory.mktemp("train_net_all")
    env = dict(os.environ, DETECTRON2_DATASETS=root, PYTHONWARNINGS="ignore")
    command = [
        sys.executable, TRAIN_NET, "--eval-only", "--config-file", os.path.join(REPO_ROOT, "configs", "clearclip_voc20.yaml"),
        "MODEL.CLEARCLIP.MODEL_NAME", model_json, "MODEL.CLEARCLIP.PRETRAINED", checkpoint,
        "MODEL.CLEARCLIP.PROMPT_TEMPLATES", repr(TEMPLATES), "INPUT.MIN_SIZE_TEST", str(SHORT_SIDE),
        "MODEL.CLEARCLIP.SLIDE_CROP", str(CROP), "MODEL.CLEARCLIP.SLIDE_STRIDE", str(STRIDE),
        "DATALOADER.NUM_WORKERS", "0", "DATASETS.TEST", repr(tuple(DATASETS)), "OUTPUT_DIR", str(output),
    ]  # fmt: skip
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "mIoU-mmseg" in result.stdout
    return json.loads((output / "metrics.json").read_text()), output


def class_list(stem):
    with open(os.path.join(CLASS_NAMES_DIR, stem + ".txt")) as f:
        return [[name.strip() for name in line.split(",")] for line in f if line.strip()]


def single_template_text_features(model, tokenizer, queries):
    """[Q, D] unit text embeddings with the one template (what ref.text_features computes, batched)."""
    (template,) = TEMPLATES
    with torch.no_grad():
        features = model.encode_text(tokenizer([template.format(q) for q in queries]))
    return features / features.norm(dim=-1, keepdim=True)


def reference_prediction(model, text, query_to_class, num_classes, image_rgb, threshold):
    """The reference pipeline at the test geometry: (prediction [H, W], highest class probability [H, W])."""
    resized = ref.mmcv_rescale(image_rgb, SHORT_SIDE, 2048)
    with torch.no_grad():
        logits = ref.forward_slide(model.visual, text, ref.preprocess(resized), image_rgb.shape[:2], STRIDE, CROP)
    probs = (logits[0] * 50.0).softmax(0)
    classes = torch.full((num_classes,) + probs.shape[1:], -1.0)
    for query, k in enumerate(query_to_class.tolist()):  # the max over each class's synonyms
        classes[k] = torch.maximum(classes[k], probs[query])
    best, prediction = classes.max(0)
    prediction[best < threshold] = 0
    return prediction.numpy(), best.numpy()


def decode_predictions(path):
    """{image file: HxW class map} from Detectron2's sem_seg_predictions.json (RLE per class)."""
    from pycocotools import mask as mask_util

    maps = {}
    for entry in json.loads(open(path).read()):
        mask = mask_util.decode(entry["segmentation"]).astype(bool)
        label = maps.setdefault(entry["file_name"], np.full(mask.shape, -1, dtype=np.int64))
        assert not (label[mask] >= 0).any(), "overlapping prediction masks"
        label[mask] = entry["category_id"]
    return maps


def confusion(pairs, num_classes, ignore):
    """[K, K] counts, rows = ground truth, columns = prediction, ignored pixels left out."""
    counts = np.zeros((num_classes, num_classes), dtype=np.int64)
    for gt, pred in pairs:
        valid = gt != ignore
        np.add.at(counts, (gt[valid].astype(np.int64), pred[valid]), 1)
    return counts


def independent_metrics(counts):
    tp = np.diag(counts).astype(float)
    gt, pred = counts.sum(1).astype(float), counts.sum(0).astype(float)
    union = gt + pred - tp
    in_gt, in_either = gt > 0, union > 0
    return {
        "mIoU": 100 * np.mean(tp[in_gt] / union[in_gt]),
        "mIoU-mmseg": 100 * np.mean(tp[in_either] / union[in_either]),
        "pACC": 100 * tp.sum() / gt.sum(),
    }


@pytest.mark.parametrize("dataset", list(DATASETS))
def test_benchmark_prepared_registered_and_evaluated(dataset, prepared, evaluation, tiny_clip):
    _, samples = prepared
    metrics, output = evaluation
    stem, threshold = DATASETS[dataset]
    classes = class_list(stem)
    expected = samples[dataset]

    # The prepared label maps are the labels derived from the raw files.
    records = json.loads((output / dataset / "sem_seg_predictions.json").read_text())
    predictions = decode_predictions(output / dataset / "sem_seg_predictions.json")
    assert sorted(predictions) == sorted(s.image for s in expected), "evaluated images"
    for sample in expected:
        label_path = _label_file(sample, dataset)
        with Image.open(label_path) as image:
            prepared_label = np.array(image)
        assert prepared_label.dtype == sample.label.dtype and np.array_equal(prepared_label, sample.label), label_path
    assert records

    # The predictions are the reference pipeline's, with this dataset's classes and threshold.
    model, tokenizer = tiny_clip
    queries = [name for synonyms in classes for name in synonyms]
    query_to_class = torch.tensor([k for k, synonyms in enumerate(classes) for _ in synonyms])
    text = single_template_text_features(model, tokenizer, queries)
    agree = total = 0
    for sample in expected:
        image = np.array(Image.open(sample.image).convert("RGB"))
        reference, best = reference_prediction(model, text, query_to_class, len(classes), image, threshold)
        prediction = predictions[sample.image]
        assert prediction.shape == sample.label.shape and (prediction >= 0).all()
        agree += int((prediction == reference).sum())
        total += prediction.size
    assert agree / total >= 0.995, f"{dataset}: {agree}/{total} pixels agree with the reference"

    # The metrics, recomputed from these predictions and the expected labels.
    results = metrics[dataset]["sem_seg"]
    counts = confusion([(s.label, predictions[s.image]) for s in expected], len(classes), expected[0].ignore)
    for name, value in independent_metrics(counts).items():
        assert results[name] == pytest.approx(value, abs=1e-6), name
    present = {i for i in range(len(classes)) if counts[i].sum() > 0}
    class_names = [key[len("ACC-"):] for key in results if key.startswith("ACC-")]
    assert len(class_names) == len(classes)
    assert {i for i, name in enumerate(class_names) if results[f"ACC-{name}"] is not None} == present


def test_background_threshold_mattered(prepared, evaluation, tiny_clip):
    """At least one background benchmark had pixels on both sides of its threshold, and where the
    threshold changes the reference's answer (to background) the evaluated predictions follow it."""
    _, samples = prepared
    _, output = evaluation
    model, tokenizer = tiny_clip
    fractions, changed, followed = {}, 0, 0
    for dataset, (stem, threshold) in DATASETS.items():
        if threshold <= 0:
            continue
        classes = class_list(stem)
        queries = [name for synonyms in classes for name in synonyms]
        query_to_class = torch.tensor([k for k, synonyms in enumerate(classes) for _ in synonyms])
        text = single_template_text_features(model, tokenizer, queries)
        predictions = decode_predictions(output / dataset / "sem_seg_predictions.json")
        below = pixels = 0
        for sample in samples[dataset]:
            image = np.array(Image.open(sample.image).convert("RGB"))
            reference, best = reference_prediction(model, text, query_to_class, len(classes), image, threshold)
            unthresholded, _ = reference_prediction(model, text, query_to_class, len(classes), image, 0.0)
            below += int((best < threshold).sum())
            pixels += best.size
            moved = reference != unthresholded  # below the threshold and not already background
            changed += int(moved.sum())
            followed += int((predictions[sample.image][moved] == 0).sum())
        fractions[dataset] = below / pixels
    assert len(fractions) == 3, fractions
    assert any(0 < f < 1 for f in fractions.values()), fractions
    assert changed > 0, "the thresholds never change the reference's prediction"
    assert followed >= 0.99 * changed, f"{followed}/{changed} thresholded pixels predicted as background"


def _label_file(sample, dataset):
    """Where the preparation wrote the label map of ``sample`` (the registered layout)."""
    stem = os.path.splitext(os.path.basename(sample.image))[0]
    root = sample.image.split(os.sep + "VOCdevkit")[0] if "VOCdevkit" in sample.image else None
    folders = {
        "voc_2012_val_20": ("VOCdevkit", "VOC2012", "annotations_detectron2", "val"),
        "voc_2012_val_21": ("VOCdevkit", "VOC2012", "annotations_detectron2_bg", "val"),
        "pascal_context_59_val": ("VOCdevkit", "VOC2010", "annotations_detectron2", "pc59_val"),
        "pascal_context_60_val": ("VOCdevkit", "VOC2010", "annotations_detectron2", "pc60_val"),
        "pascal_context_459_val": ("VOCdevkit", "VOC2010", "annotations_detectron2", "pc459_val"),
    }
    if dataset in folders:
        extension = ".tif" if dataset.endswith("459_val") else ".png"
        return os.path.join(root, *folders[dataset], stem + extension)
    if dataset.startswith("coco"):
        folder = "stuffthingmaps_detectron2" if "stuff" in dataset else "objectmaps_detectron2"
        return sample.image.replace(os.path.join("coco", "val2017"), os.path.join("coco", folder, "val2017"))[:-4] + ".png"
    if dataset.startswith("cityscapes"):
        return sample.image.replace("leftImg8bit" + os.sep, "gtFine" + os.sep).replace("_leftImg8bit.png",
                                                                                       "_gtFine_labelTrainIds.png")
    if dataset == "ade20k_sem_seg_val":
        return sample.image.replace(os.sep + "images" + os.sep, os.sep + "annotations_detectron2" + os.sep)[:-4] + ".png"
    return sample.image.replace("images_detectron2", "annotations_detectron2")[:-4] + ".tif"
