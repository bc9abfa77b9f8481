"""The demo's pictures and files: overlays with a legend, colour masks, label PNGs and JSON shares.

``draw_overlay`` draws Detectron2's ``Visualizer.draw_sem_seg`` overlay of the predicted classes
with a legend panel on the right (the classes present, largest first, with their pixel share);
``save_masks`` writes ``<stem>_labels.png`` (class index per pixel) and ``<stem>_classes.json``
(class -> pixel share, in vocabulary order). Every file is written atomically.
"""

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..utils.io import atomic_write, atomic_write_json

OVERLAY_ALPHA = 0.6
LEGEND_BACKGROUND = (40, 40, 40)
LEGEND_MIN_ROWS = 8  # an image too small for them gets a legend panel taller than itself


def mask_paths(stem: str) -> Tuple[str, str]:
    """(label PNG, class-share JSON) of an output stem."""
    return f"{stem}_labels.png", f"{stem}_classes.json"


def make_metadata(class_names: Sequence[str]):
    """Detectron2 metadata with the vocabulary's names and a fixed colour per class."""
    from detectron2.data.catalog import Metadata
    from detectron2.utils.colormap import colormap

    palette = colormap(rgb=True, maximum=255).astype(int).tolist()
    colors = [palette[i % len(palette)] for i in range(len(class_names))]
    return Metadata(name="clearclip_demo", stuff_classes=list(class_names), stuff_colors=colors)


def pixel_shares(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """[K] fraction of the pixels predicted as each class (sums to 1)."""
    return np.bincount(labels.ravel(), minlength=num_classes)[:num_classes] / labels.size


def legend_entries(shares: np.ndarray, class_names: Sequence[str], rows: int) -> List[Tuple[Optional[int], str]]:
    """(class index or None, text) per legend row: the classes present, largest share first;
    when they do not fit in ``rows``, the last row sums up the rest."""
    present = [int(i) for i in np.argsort(-shares, kind="stable") if shares[i] > 0]
    entries = [(i, f"{class_names[i]} {100 * shares[i]:.1f}%") for i in present]
    if len(entries) > rows:
        rest = present[rows - 1 :]
        entries = entries[: rows - 1] + [(None, f"+{len(rest)} more {100 * shares[rest].sum():.1f}%")]
    return entries


def legend_width(class_names: Sequence[str], font_px: float) -> int:
    """Pixels for the legend panel: a swatch and the longest ``"<name> 100.0%"``."""
    longest = max([len(name) for name in class_names] + [len("+999 more")]) + len(" 100.0%")
    return int(font_px * (2.5 + 0.62 * longest)) + 8


def draw_overlay(image_rgb: np.ndarray, labels: np.ndarray, metadata) -> np.ndarray:
    """RGB uint8 overlay: the image with each class region coloured and named (Detectron2's
    ``Visualizer.draw_sem_seg``), and a legend panel on the right listing the classes present
    with their pixel share. The image keeps its size at the top left; the canvas is wider by
    the panel (and taller only for images too small for ``LEGEND_MIN_ROWS`` rows). The canvas
    size depends on the image size and the vocabulary only, so all frames of a video agree."""
    import matplotlib
    from detectron2.utils.visualizer import Visualizer

    class_names, height, width = metadata.stuff_classes, image_rgb.shape[0], image_rgb.shape[1]
    font_size = max(np.sqrt(height * width) // 90, 10)  # the Visualizer's default for this image
    font_px = font_size * matplotlib.rcParams["figure.dpi"] / 72  # VisImage draws at the figure dpi
    row_height = 1.7 * font_px
    rows = max(int((height - 4) // row_height), min(len(class_names), LEGEND_MIN_ROWS))
    canvas_height = max(height, int(np.ceil(rows * row_height)) + 8)  # small images: panel taller than them
    canvas = np.empty((canvas_height, width + legend_width(class_names, font_px), 3), np.uint8)
    canvas[:] = LEGEND_BACKGROUND
    canvas[:height, :width] = image_rgb
    not_drawn = np.full(canvas.shape[:2], len(class_names), dtype=labels.dtype)  # labels >= K are skipped
    not_drawn[:height, :width] = labels
    visualizer = Visualizer(canvas, metadata=metadata)
    visualizer.draw_sem_seg(not_drawn, alpha=OVERLAY_ALPHA)

    swatch = font_px
    for row, (index, text) in enumerate(legend_entries(pixel_shares(labels, len(class_names)), class_names, rows)):
        top, left = 4 + row * row_height, width + 6
        if index is not None:
            color = [c / 255 for c in metadata.stuff_colors[index]]
            corners = np.array([[left, top], [left + swatch, top], [left + swatch, top + swatch], [left, top + swatch]])
            visualizer.draw_polygon(corners, color, alpha=1.0)
        visualizer.draw_text(text, (left + 1.5 * swatch, top), font_size=font_size, color="white", horizontal_alignment="left")
    return visualizer.output.get_image()


def save_image(image: np.ndarray, path: str) -> None:
    """Write an image atomically, in the format of the file's extension (PNG: lossless)."""
    from PIL import Image

    extension = os.path.splitext(path)[1].lower().lstrip(".")
    image_format = {"jpg": "JPEG", "jpeg": "JPEG", "tif": "TIFF"}.get(extension, extension.upper() or "PNG")
    with atomic_write(path, "wb") as f:
        Image.fromarray(image).save(f, format=image_format)


def save_masks(labels: np.ndarray, class_names: Sequence[str], stem: str) -> None:
    """``<stem>_labels.png`` (8-bit up to 256 classes, else 16-bit) and ``<stem>_classes.json``."""
    labels_path, json_path = mask_paths(stem)
    save_image(labels.astype(np.uint8 if len(class_names) <= 256 else np.uint16), labels_path)
    shares = pixel_shares(labels, len(class_names))
    atomic_write_json(json_path, {name: float(share) for name, share in zip(class_names, shares)})


def class_summary(labels: np.ndarray, class_names: Sequence[str], top: int = 5) -> str:
    """``"cat 62%, grass 20%, ..."``: the largest predicted classes by area."""
    shares = pixel_shares(labels, len(class_names))
    order = np.argsort(-shares, kind="stable")[:top]
    return ", ".join(f"{class_names[i]} {100.0 * shares[i]:.0f}%" for i in order if shares[i] > 0)
