"""Synthetic COCO-Stuff in the real on-disk layout (``coco/val2017``, ``coco/stuffthingmaps_detectron2``)."""

import numpy as np
from PIL import Image

from test_modeling_exactness import smooth_image


def write_coco_stuff_layout(root, sizes, num_labels, block, image_seed=0, label_seed=0, ignored_rows=7):
    """Write one smooth random image (JPEG) and one label map (PNG) per (height, width) in ``sizes``.

    Labels are ``block`` x ``block`` squares of random classes in ``[0, num_labels)``; the top
    ``ignored_rows`` rows are 255 (ignore). Image ``i`` uses ``smooth_image(seed=image_seed + i)``.
    Returns ``root``.
    """
    images, labels = root / "coco" / "val2017", root / "coco" / "stuffthingmaps_detectron2" / "val2017"
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    rng = np.random.default_rng(label_seed)
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(smooth_image(height, width, seed=image_seed + index)).save(images / f"{index:012d}.jpg", quality=95)
        squares = rng.integers(0, num_labels, (height // block + 1, width // block + 1))
        label = np.kron(squares, np.ones((block, block), dtype=np.int64))[:height, :width].astype(np.uint8)
        label[:ignored_rows] = 255
        Image.fromarray(label).save(labels / f"{index:012d}.png")
    return root


def reference_metrics(root, num_images, model, text, model_type="ClearCLIP"):
    """(mIoU over the classes present in the labels, pixel accuracy), in %, of the independent
    reference pipeline (``reference_clearclip.segment``; one query per class in ``text``) on the
    first ``num_images`` images of a layout written by :func:`write_coco_stuff_layout`.
    ``model_type`` "ClearCLIP" is q-q attention, "vanilla" q-k; both without residual and FFN."""
    import reference_clearclip as ref

    num_classes = len(text)
    conf = np.zeros((num_classes, num_classes), dtype=np.int64)
    for index in range(num_images):
        image = np.array(Image.open(root / "coco" / "val2017" / f"{index:012d}.jpg").convert("RGB"))
        label = np.array(Image.open(root / "coco" / "stuffthingmaps_detectron2" / "val2017" / f"{index:012d}.png"))
        _, pred = ref.segment(model, text, list(range(num_classes)), image, model_type=model_type)
        valid = label != 255
        np.add.at(conf, (label[valid].astype(int), pred.numpy()[valid]), 1)
    present = conf.sum(1) > 0
    iou = np.diag(conf) / (conf.sum(0) + conf.sum(1) - np.diag(conf)).clip(min=1)
    return 100 * iou[present].mean(), 100 * np.diag(conf).sum() / conf.sum()
