"""Test-time data path: the reference resize, the mapper, vocabularies."""

import cv2
import numpy as np
import pytest
from detectron2.data import transforms as T
from PIL import Image

from clearclip_d2.data import ClearCLIPDatasetMapper, load_vocabulary_file, vocabulary_from_names
from clearclip_d2.data.transforms import ResizeShortLongEdge, reference_resize_shape
from clearclip_d2.utils.errors import ClearCLIPError


@pytest.mark.parametrize(
    "size, expected",
    [
        ((375, 500), (448, 597)),  # 500 * 448 / 375 = 597.33
        ((480, 640), (448, 597)),
        ((1024, 2048), (448, 896)),
        ((100, 1000), (205, 2048)),  # the long side limits: 2048 / 1000
        ((448, 448), (448, 448)),
        ((200, 150), (597, 448)),  # small images are enlarged
    ],
)
def test_reference_resize_shape(size, expected):
    assert reference_resize_shape(*size, 448, 2048) == expected


def test_resize_uses_opencv_bilinear_not_pil():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
    ours = ResizeShortLongEdge(448, 2048).get_transform(image).apply_image(image)
    assert np.array_equal(ours, cv2.resize(image, (597, 448), interpolation=cv2.INTER_LINEAR))
    # Detectron2's own resize (PIL, antialiased) gives other pixels: the reason for this transform.
    d2 = T.ResizeShortestEdge(448, 2048).get_transform(image).apply_image(image)
    assert d2.shape == ours.shape and not np.array_equal(d2, ours)


def test_mapper_resizes_and_keeps_original_size(tmp_path, tiny_model_files):
    from conftest import tiny_cfg

    path = str(tmp_path / "x.jpg")
    Image.fromarray(np.full((375, 500, 3), 120, dtype=np.uint8)).save(path)
    mapper = ClearCLIPDatasetMapper(tiny_cfg(tiny_model_files), False)
    record = mapper({"file_name": path, "sem_seg_file_name": "labels.png"})
    assert tuple(record["image"].shape) == (3, 448, 597)
    assert (record["height"], record["width"]) == (375, 500)
    assert record["sem_seg_file_name"] == "labels.png" and "sem_seg" not in record


def test_mapper_converts_grayscale_to_three_channels(tmp_path, tiny_model_files):
    from conftest import tiny_cfg

    path = str(tmp_path / "gray.png")
    Image.fromarray(np.full((50, 60), 9, dtype=np.uint8)).save(path)
    record = ClearCLIPDatasetMapper(tiny_cfg(tiny_model_files), False)({"file_name": path})
    assert record["image"].shape[0] == 3


@pytest.mark.parametrize("content", [b"", b"not an image at all", None])
def test_unreadable_image_is_named(tmp_path, tiny_model_files, content):
    from conftest import tiny_cfg

    path = tmp_path / "broken.jpg"
    if content is not None:
        path.write_bytes(content)
    mapper = ClearCLIPDatasetMapper(tiny_cfg(tiny_model_files), False)
    with pytest.raises(ClearCLIPError, match="broken.jpg"):
        mapper({"file_name": str(path)})


def test_vocabulary_synonyms_and_queries():
    vocab = vocabulary_from_names(["cat, kitten", "grass", " sky ,clouds "])
    assert vocab.class_names == ["cat", "grass", "sky"]
    assert vocab.queries == ["cat", "kitten", "grass", "sky", "clouds"]
    assert vocab.query_to_class == [0, 0, 1, 2, 2]


def test_vocabulary_file_reference_format(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("background\nperson, man\ncar")  # no final newline, as the reference files
    vocab = load_vocabulary_file(str(path))
    assert vocab.queries == ["background", "person", "man", "car"]


@pytest.mark.parametrize(
    "text, message",
    [("", "is empty"), ("\n\n", "is empty"), ("cat\n\ndog\n", "blank line at line 2"), ("cat\n, dog\n", "empty class name"),
     ("cat\ndog, cat\n", "appears twice")],
)
def test_bad_vocabulary_files(tmp_path, text, message):
    path = tmp_path / "classes.txt"
    path.write_text(text)
    with pytest.raises(ClearCLIPError, match=message):
        load_vocabulary_file(str(path))


def test_missing_vocabulary_file(tmp_path):
    with pytest.raises(ClearCLIPError, match="does not exist"):
        load_vocabulary_file(str(tmp_path / "nope.txt"))


def test_bundled_reference_class_lists():
    from clearclip_d2.constants import class_names_file

    sizes = {"voc20": 20, "voc21": 21, "context59": 59, "context60": 60, "coco_object": 81, "coco_stuff": 171,
             "city_scapes": 19, "ade20k": 150}
    for name, size in sizes.items():
        assert len(load_vocabulary_file(class_names_file(name))) == size, name
