#!/usr/bin/env python
"""ClearCLIP open-vocabulary segmentation demo: overlays of the predicted classes.

Segments images and videos with any list of class names (no training), in the style of
Detectron2's demo::

    python tools/demo.py --config-file configs/clearclip_coco.yaml \\
        --input photos/ "more/*.jpg" clip.mp4 --output output/demo \\
        --vocabulary "cat, kitten; grass, lawn; sky" --save-masks \\
        --opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin \\
               MODEL.CLEARCLIP.FORCE_QUICK_GELU True

Inputs: image files, globs (quoted), folders (their images and videos, not recursive) and
video files, read frame by frame with OpenCV. Without ``--input`` the demo segments
scikit-image's bundled sample photos (public domain / CC0: astronaut, chelsea, coffee,
rocket), saved first as PNGs under ``<output>/inputs/``.

Outputs, per image ``<name>`` (``--output`` a folder, the default):

* ``<name>_overlay.png``: Detectron2's ``Visualizer`` overlay with the class names on the
  regions, and a legend panel on the right: the classes present, largest first, with their
  share of the pixels;
* with ``--save-masks``: ``<name>_labels.png`` (the class index of every pixel, 8-bit, 16-bit
  for more than 256 classes) and ``<name>_classes.json`` (class -> pixel share in [0, 1], in
  vocabulary order, so the n-th key is label n).

A video ``<name>`` gives the same files per frame in ``<output>/<name>/`` (``<name>_000000_...``)
and the overlay video ``<output>/<name>_overlay.mp4``. ``--output x.png`` (one image input)
writes the overlay there and the masks beside it.

``--vocabulary``: classes separated by ``;``, synonyms of one class by ``,`` (the first synonym
names the class). ``--vocabulary-file``: one class a line, synonyms comma-separated.
Everything the user gives is checked before the model is built; problems are printed as one
line and the exit status is 2. Nothing is written half-way (files appear complete or not at all).
"""

import argparse
import contextlib
import logging
import os
import shutil
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass
from typing import Iterator, List, Optional, Sequence, Tuple

# fvcore scripts a function with torch.jit at import time; recent PyTorch warns about it on
# every run. Not actionable for demo users, so keep stderr for real problems.
warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.* is deprecated", category=FutureWarning)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from clearclip_d2.data import Vocabulary, load_vocabulary_file, read_image_or_fail, vocabulary_from_names  # noqa: E402
from clearclip_d2.data.image_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, expand_inputs  # noqa: E402
from clearclip_d2.utils import ClearCLIPError, atomic_write, atomic_write_json  # noqa: E402
from clearclip_d2.utils.cli import exit_on_user_error, load_segmentor_config  # noqa: E402

PROGRAM = "demo.py"
DEFAULT_CONFIG = "configs/clearclip_coco.yaml"
DEFAULT_OUTPUT = "output/demo"
# scikit-image's sample photos that ship inside its wheel (no download); all public domain or CC0.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
DEFAULT_VOCABULARY = (
    "person, astronaut; flag; cat, kitten; cup, mug; saucer, plate; spoon; table; "
    "rocket; smoke; sky; tree; grass; building, tower; wall; floor, carpet"
)
OVERLAY_ALPHA = 0.6
OUTPUT_VIDEO_SUFFIX = "_overlay.mp4"
OUTPUT_VIDEO_FOURCC = "mp4v"  # MPEG-4 part 2: the mp4 encoder every OpenCV wheel has
FALLBACK_FPS = 25.0
LEGEND_BACKGROUND = (40, 40, 40)
LEGEND_MIN_ROWS = 8  # an image too small for them gets a legend panel taller than itself

logger = logging.getLogger("clearclip_d2.demo")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROGRAM,
        description="ClearCLIP open-vocabulary semantic segmentation demo (Detectron2 overlays).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Example: python tools/demo.py --input img.jpg --vocabulary 'cat, kitten; grass, lawn' "
        "--opts MODEL.CLEARCLIP.PRETRAINED /path/to/open_clip_pytorch_model.bin MODEL.CLEARCLIP.FORCE_QUICK_GELU True",
    )
    parser.add_argument("--config-file", default=DEFAULT_CONFIG, metavar="FILE", help="config file (default: %(default)s)")
    parser.add_argument(
        "--input",
        nargs="+",
        metavar="PATH",
        help="image or video files, globs (quote them) or folders; default: scikit-image's sample photos "
        f"({', '.join(SAMPLE_IMAGES)}), saved under OUTPUT/inputs/",
    )
    parser.add_argument(
        "--output",
        default=DEFAULT_OUTPUT,
        metavar="PATH",
        help="output folder (default: %(default)s), or an image file name when there is one input image",
    )
    vocabulary = parser.add_mutually_exclusive_group()
    vocabulary.add_argument(
        "--vocabulary",
        metavar="CLASSES",
        help="classes separated by ';', synonyms of a class by ',' (e.g. \"cat, kitten; grass, lawn\"); "
        "default: MODEL.CLEARCLIP.CLASS_NAMES_FILE if set, else a vocabulary for the sample photos",
    )
    vocabulary.add_argument("--vocabulary-file", metavar="FILE", help="one class a line, synonyms comma-separated")
    parser.add_argument(
        "--prob-threshold",
        type=float,
        default=None,
        metavar="P",
        help="pixels whose highest class probability is below P get the FIRST class (list 'background' "
        "first to use it); sets MODEL.CLEARCLIP.PROB_THRESHOLD",
    )
    parser.add_argument(
        "--save-masks",
        action="store_true",
        help="also write <name>_labels.png (class index per pixel) and <name>_classes.json (class -> pixel share)",
    )
    parser.add_argument(
        "--opts",
        default=[],
        nargs=argparse.REMAINDER,
        metavar="KEY VALUE",
        help="config overrides as KEY VALUE pairs, e.g. MODEL.CLEARCLIP.PRETRAINED /path/to/weights.bin",
    )
    return parser


# ----------------------------------------------------------------------------- config
def setup_cfg(args):
    """Config from the file, the overrides and the flags; the device falls back to the CPU."""
    threshold = [] if args.prob_threshold is None else ["MODEL.CLEARCLIP.PROB_THRESHOLD", float(args.prob_threshold)]
    return load_segmentor_config(args.config_file, list(args.opts) + threshold, "the demo")


def parse_vocabulary_string(text: str) -> Vocabulary:
    """``"cat, kitten; grass, lawn"`` -> two classes (empty entries, e.g. a trailing ';', are ignored)."""
    entries = [entry.strip() for entry in text.split(";") if entry.strip()]
    return vocabulary_from_names(entries, source="--vocabulary")


def choose_vocabulary(args, cfg) -> Optional[Vocabulary]:
    """The vocabulary to set on the model; None keeps the model's (MODEL.CLEARCLIP.CLASS_NAMES_FILE)."""
    if args.vocabulary is not None:
        return parse_vocabulary_string(args.vocabulary)
    if args.vocabulary_file:
        return load_vocabulary_file(args.vocabulary_file)
    if cfg.MODEL.CLEARCLIP.CLASS_NAMES_FILE:
        return None
    return parse_vocabulary_string(DEFAULT_VOCABULARY)


# ----------------------------------------------------------------------------- inputs
def write_sample_images(folder: str) -> List[str]:
    """Save scikit-image's bundled sample photos as PNGs in ``folder``; return their paths."""
    try:
        import skimage.data
    except ImportError as e:
        raise ClearCLIPError(
            "scikit-image is not installed, so there are no sample images: pip install scikit-image, or pass --input"
        ) from e
    from PIL import Image

    os.makedirs(folder, exist_ok=True)
    paths = []
    for name in SAMPLE_IMAGES:
        path = os.path.join(folder, f"{name}.png")
        if not os.path.isfile(path):
            image = np.asarray(getattr(skimage.data, name)())
            with atomic_write(path, "wb") as f:
                Image.fromarray(image).convert("RGB").save(f, format="PNG")
        paths.append(path)
    return paths


def output_names(paths: Sequence[str]) -> List[str]:
    """File stems for the outputs; a stem seen before gets a ``-2``, ``-3``... suffix."""
    names, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0]
        count = seen.get(stem, 0) + 1
        seen[stem] = count
        names.append(stem if count == 1 else f"{stem}-{count}")
    return names


@dataclass(frozen=True)
class VideoInfo:
    frames: int  # as the container reports it (may be approximate)
    fps: float
    width: int
    height: int


def _fourcc_text(capture) -> str:
    import cv2

    code = int(capture.get(cv2.CAP_PROP_FOURCC))
    text = "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4))
    return text if text.isprintable() and text.strip() else "unknown"


@contextlib.contextmanager
def quiet_opencv() -> Iterator[None]:
    """Keep OpenCV's and FFmpeg's own error lines off stderr while probing (our message says it
    in one line): they write to file descriptor 2 from C, so it is pointed at /dev/null."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def probe_video(path: str) -> VideoInfo:
    """Open a video and decode its first frame; a codec OpenCV cannot read is reported now."""
    import cv2

    with quiet_opencv():
        capture = cv2.VideoCapture(path)
        ok, frame = capture.read() if capture.isOpened() else (False, None)
    try:
        if not capture.isOpened():
            raise ClearCLIPError(
                f"cannot read video {path}: OpenCV {cv2.__version__} cannot open it (a codec it has no decoder for, "
                f"an unknown container or a damaged file); convert it, e.g. ffmpeg -i {path} -c:v libx264 out.mp4"
            )
        if not ok or frame is None:
            raise ClearCLIPError(
                f"cannot read video {path}: OpenCV {cv2.__version__} has no decoder for its codec "
                f"({_fourcc_text(capture)}) or the file holds no frames; convert it, e.g. ffmpeg -i {path} -c:v libx264 out.mp4"
            )
        fps = capture.get(cv2.CAP_PROP_FPS)
        return VideoInfo(
            frames=max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 1),
            fps=fps if fps and fps > 0 else FALLBACK_FPS,
            width=frame.shape[1],
            height=frame.shape[0],
        )
    finally:
        capture.release()


def read_video_frames(path: str, image_format: str) -> Iterator[np.ndarray]:
    """H x W x 3 uint8 frames in ``image_format`` (OpenCV decodes to BGR)."""
    import cv2

    capture = cv2.VideoCapture(path)
    try:
        while True:
            ok, frame = capture.read()
            if not ok:
                return
            yield np.ascontiguousarray(frame[:, :, ::-1]) if image_format == "RGB" else frame
    finally:
        capture.release()


# ----------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class Job:
    """One input and where its results go.

    Images: ``overlay`` is the overlay file and ``stem`` prefixes the mask files. Videos:
    ``stem`` prefixes every frame's files (``<stem>_000123_overlay.png``) and ``overlay`` is
    the overlay video.
    """

    source: str
    kind: str  # "image" or "video"
    overlay: str
    stem: str
    video: Optional[VideoInfo] = None

    @property
    def frames(self) -> int:
        return self.video.frames if self.video else 1


def mask_paths(stem: str) -> Tuple[str, str]:
    """(label PNG, class-share JSON) of an output stem."""
    return f"{stem}_labels.png", f"{stem}_classes.json"


def plan_jobs(output: str, inputs: Sequence[str]) -> List[Job]:
    """Where every input's results go; refuses impossible outputs before any work.

    ``output`` is a folder unless it ends with an image extension, which is allowed for one
    input image only. Videos are probed here, so an unreadable codec stops the run now.
    """
    videos = {path: probe_video(path) for path in inputs if path.lower().endswith(VIDEO_EXTENSIONS)}
    if output.lower().endswith(IMAGE_EXTENSIONS) and not os.path.isdir(output):
        if len(inputs) != 1 or videos:
            what = "the input is a video" if videos else f"there are {len(inputs)} inputs"
            raise ClearCLIPError(f"--output {output} names one image file but {what}; give a folder")
        check_parent_is_folder(output)
        return [Job(inputs[0], "image", output, os.path.splitext(output)[0])]
    if os.path.exists(output) and not os.path.isdir(output):
        raise ClearCLIPError(f"--output {output} is a file, but the results need a folder; give a folder path")
    check_parent_is_folder(os.path.join(output, "x"))
    jobs = []
    for path, name in zip(inputs, output_names(inputs)):
        if path in videos:
            frame_dir = os.path.join(output, name)
            if os.path.exists(frame_dir) and not os.path.isdir(frame_dir):
                raise ClearCLIPError(f"{frame_dir} is a file, but the frames of video {path} need a folder there")
            jobs.append(Job(path, "video", os.path.join(output, name + OUTPUT_VIDEO_SUFFIX), os.path.join(frame_dir, name), videos[path]))
        else:
            jobs.append(Job(path, "image", os.path.join(output, f"{name}_overlay.png"), os.path.join(output, name)))
    return jobs


def check_parent_is_folder(path: str) -> None:
    """The nearest existing ancestor of ``path`` must be a folder (else nothing can be written)."""
    parent = os.path.dirname(os.path.abspath(path))
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise ClearCLIPError(f"cannot write {path}: {parent} is a file, not a folder")


def check_video_writer(folder: str) -> None:
    """Make sure OpenCV can encode the overlay videos before any work."""
    import cv2

    os.makedirs(folder, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".video-check-") as tmp:
        writer = cv2.VideoWriter(os.path.join(tmp, "check.mp4"), cv2.VideoWriter_fourcc(*OUTPUT_VIDEO_FOURCC), 1.0, (16, 16))
        ok = writer.isOpened()
        writer.release()
    if not ok:
        raise ClearCLIPError(f"OpenCV {cv2.__version__} cannot write {OUTPUT_VIDEO_FOURCC} mp4 videos here")


def even_size(width: int, height: int) -> Tuple[int, int]:
    """MPEG-4 frames have even sides; odd ones are padded by one pixel."""
    return width + width % 2, height + height % 2


class AtomicVideoWriter:
    """``cv2.VideoWriter`` into a hidden temporary folder beside ``path``; the video is moved onto
    ``path`` by :meth:`close` (and removed by :meth:`discard`). Frames are padded to
    :func:`even_size` with the legend background."""

    def __init__(self, path: str, fps: float, size: Tuple[int, int]):
        import cv2

        self.path = path
        self.size = even_size(*size)  # (width, height)
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        self.tmp_dir = tempfile.mkdtemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
        self.tmp_path = os.path.join(self.tmp_dir, os.path.basename(path))
        self.writer = cv2.VideoWriter(self.tmp_path, cv2.VideoWriter_fourcc(*OUTPUT_VIDEO_FOURCC), fps, self.size)
        if not self.writer.isOpened():
            self.discard()
            raise ClearCLIPError(f"OpenCV cannot write the video {path}")

    def write(self, frame_rgb: np.ndarray) -> None:
        """Frames must not be larger than the first one (the overlays of one video have one size)."""
        canvas = np.empty((self.size[1], self.size[0], 3), np.uint8)
        canvas[:] = LEGEND_BACKGROUND
        canvas[: frame_rgb.shape[0], : frame_rgb.shape[1]] = frame_rgb
        self.writer.write(canvas[:, :, ::-1].copy())

    def close(self) -> None:
        self.writer.release()
        os.replace(self.tmp_path, self.path)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def discard(self) -> None:
        self.writer.release()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)


# ----------------------------------------------------------------------------- drawing
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


# ----------------------------------------------------------------------------- main
class Segmenter:
    """Predict, draw and save one picture (an image or a video frame)."""

    def __init__(self, predictor, input_format: str, save_masks: bool):
        self.predictor = predictor
        self.input_format = input_format
        self.save_masks = save_masks
        self.class_names = predictor.class_names
        self.metadata = make_metadata(self.class_names)

    def __call__(self, image: np.ndarray, overlay_path: str, stem: str) -> Tuple[np.ndarray, np.ndarray]:
        """image H x W x 3 in ``input_format`` -> (labels [H, W] int64, overlay RGB), files written."""
        labels = self.predictor.predict_labels(image).numpy()
        image_rgb = np.ascontiguousarray(image[:, :, ::-1] if self.input_format == "BGR" else image)
        overlay = draw_overlay(image_rgb, labels, self.metadata)
        save_image(overlay, overlay_path)
        if self.save_masks:
            save_masks(labels, self.class_names, stem)
        return labels, overlay


def segment_video(job: Job, segment: Segmenter, input_format: str, progress) -> int:
    """Every frame of a video -> its files, and the overlay video. Returns the frame count."""
    writer = None
    count = 0
    try:
        for count, frame in enumerate(read_video_frames(job.source, input_format), start=1):
            stem = f"{job.stem}_{count - 1:06d}"
            _, overlay = segment(frame, f"{stem}_overlay.png", stem)
            if writer is None:
                writer = AtomicVideoWriter(job.overlay, job.video.fps, (overlay.shape[1], overlay.shape[0]))
            writer.write(overlay)
            progress.update(1)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
    return count


def run(args, predictor=None) -> List[str]:
    """The demo; returns the overlay files written. ``predictor``: an existing
    :class:`~clearclip_d2.engine.ClearCLIPPredictor` to reuse (its config is used instead of
    ``--config-file``/``--opts``/``--prob-threshold``); only its vocabulary is changed, the
    model is not rebuilt."""
    cfg = predictor.cfg if predictor is not None else setup_cfg(args)
    vocabulary = choose_vocabulary(args, cfg)
    if args.input:
        inputs = expand_inputs(args.input, videos=True)
    else:
        if args.output.lower().endswith(IMAGE_EXTENSIONS) or (os.path.exists(args.output) and not os.path.isdir(args.output)):
            raise ClearCLIPError(f"--output {args.output}: the sample photos need an output folder; give a folder or --input")
        inputs = write_sample_images(os.path.join(args.output, "inputs"))
        logger.info(f"No --input: using scikit-image's sample photos, saved in {os.path.join(args.output, 'inputs')}")
    jobs = plan_jobs(args.output, inputs)
    if any(job.kind == "video" for job in jobs):
        check_video_writer(args.output)

    from tqdm import tqdm

    from clearclip_d2.engine import ClearCLIPPredictor

    if predictor is None:
        cc = cfg.MODEL.CLEARCLIP
        logger.info(f"Building ClearCLIP: {cc.MODEL_NAME} (weights: {cc.PRETRAINED or 'random'}) on {cfg.MODEL.DEVICE}")
        predictor = ClearCLIPPredictor(cfg)
    if vocabulary is not None:
        predictor.set_vocabulary(vocabulary)
    logger.info(f"Vocabulary ({len(predictor.class_names)} classes): {'; '.join(', '.join(c) for c in predictor.vocabulary.classes)}")
    segment = Segmenter(predictor, cfg.INPUT.FORMAT, args.save_masks)

    written = []
    with tqdm(total=sum(job.frames for job in jobs), desc="ClearCLIP demo", unit="frame") as progress:
        for job in jobs:
            start = time.perf_counter()
            if job.kind == "video":
                frames = segment_video(job, segment, cfg.INPUT.FORMAT, progress)
                logger.info(f"{job.source}: {frames} frames ({time.perf_counter() - start:.1f} s) -> {job.overlay}")
            else:
                image = read_image_or_fail(job.source, cfg.INPUT.FORMAT)
                labels, _ = segment(image, job.overlay, job.stem)
                progress.update(1)
                logger.info(
                    f"{job.source} ({image.shape[1]}x{image.shape[0]}, {time.perf_counter() - start:.1f} s): "
                    f"{class_summary(labels, segment.class_names)} -> {job.overlay}"
                )
            written.append(job.overlay)
    logger.info(f"Wrote {len(written)} overlay(s) to {args.output}")
    return written


def main(argv: Optional[Sequence[str]] = None) -> Tuple[str, ...]:
    args = get_parser().parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="clearclip_d2", abbrev_name="clearclip")
    with exit_on_user_error(PROGRAM):
        return tuple(run(args))


if __name__ == "__main__":
    main()
