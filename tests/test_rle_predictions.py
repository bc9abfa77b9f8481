"""``sem_seg_predictions.json``'s RLE entries: the fast encoding (the runs of the whole map, one
pycocotools call) gives exactly the strings of pycocotools' ``encode`` of each class's mask."""

import numpy as np
import pycocotools.mask as mask_util
import pytest

from clearclip_d2.evaluation.sem_seg_evaluation import class_runs, encode_predictions
from clearclip_d2.utils.errors import ClearCLIPError


def plain_encoding(labels, file_name, dataset_ids):
    """The straightforward restatement: per class in ``np.unique`` order, pycocotools' ``encode``
    of its [H, W, 1] Fortran-ordered uint8 mask."""
    entries = []
    for label in np.unique(labels):
        mask = np.asfortranarray((labels == label).astype(np.uint8)[:, :, None])
        rle = mask_util.encode(mask)[0]
        rle["counts"] = rle["counts"].decode("utf-8")
        category = int(label) if dataset_ids is None else dataset_ids[int(label)]
        entries.append({"file_name": file_name, "category_id": category, "segmentation": rle})
    return entries


def label_maps():
    rng = np.random.default_rng(0)
    blocks = np.kron(rng.integers(0, 171, (9, 11)), np.ones((7, 9), dtype=np.int64))[:60, :90]
    yield "many classes, blocks", blocks
    yield "many classes, noise", rng.integers(0, 171, (37, 53))
    few = np.zeros((40, 30), dtype=np.int64)
    few[5:20, 3:9], few[:, -1], few[-1, :] = 4, 2, 7  # runs across column ends, class at the last pixel
    yield "few classes", few
    yield "one class", np.full((25, 31), 12, dtype=np.int64)
    sparse = np.full((50, 40), 3, dtype=np.int64)
    sparse[0, 0], sparse[17, 23], sparse[49, 39] = 150, 90, 1  # single pixels, non-contiguous ids
    yield "non-contiguous ids", sparse
    yield "one column", rng.integers(0, 3, (20, 1))
    yield "one pixel", np.array([[9]])


@pytest.mark.parametrize("name,labels", list(label_maps()), ids=[name for name, _ in label_maps()])
@pytest.mark.parametrize("dtype", [np.int64, np.uint8])
def test_fast_rle_gives_pycocotools_strings(name, labels, dtype):
    labels = labels.astype(dtype)
    assert encode_predictions(labels, "a.jpg", None) == plain_encoding(labels, "a.jpg", None)
    dataset_ids = {int(v): 1000 + 3 * int(v) for v in np.unique(labels)}
    assert encode_predictions(labels, "a.jpg", dataset_ids) == plain_encoding(labels, "a.jpg", dataset_ids)


def test_class_runs_are_the_masks_runs():
    labels = np.array([[1, 1, 5], [5, 1, 5]])  # column-major: 1 5 1 1 5 5
    classes, counts = class_runs(labels)
    assert classes.tolist() == [1, 5]
    assert [c.tolist() for c in counts] == [[0, 1, 1, 2, 2], [1, 1, 2, 2]]


def test_a_class_without_a_dataset_id_is_one_line():
    with pytest.raises(ClearCLIPError, match="predicted class 7 has no stuff_dataset_id_to_contiguous_id entry in a.jpg"):
        encode_predictions(np.array([[7, 1]]), "a.jpg", {1: 2})


def test_the_predictions_file_text_is_json_dumps_of_all_entries():
    """sem_seg_predictions.json is joined from each image's own JSON text (made on the evaluator's
    thread): the same bytes as json.dumps of every entry, images without entries included."""
    import json

    from clearclip_d2.evaluation.shards import ImageResult, join_json_lists

    per_image = [encode_predictions(labels, f"{name}.jpg", None) for name, labels in label_maps()]
    per_image.insert(2, [])  # an image without entries (as a result read from an edited shard could be)
    results = [ImageResult(f"{index}.jpg", (np.zeros(0), np.zeros(0)), None, entries) for index, entries in enumerate(per_image)]
    joined = join_json_lists(result.predictions_json for result in results)
    assert joined == json.dumps([entry for entries in per_image for entry in entries])
    assert json.loads(joined)[0]["file_name"] == "many classes, blocks.jpg"
    assert join_json_lists([]) == json.dumps([]) and join_json_lists(["[]", "[]"]) == "[]"
