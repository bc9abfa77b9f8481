"""The demo's loop over inputs (``tools/demo.py``): images, folders, globs and videos.

:func:`run_demo` plans where every input's results go (refusing impossible outputs and
unreadable videos before any work), builds a :class:`~clearclip_d2.engine.ClearCLIPPredictor`
(or reuses one), and per image or video frame predicts, draws the overlay and writes the
files (:mod:`.visualizer`); a video also gets its overlay video (:mod:`.video`). See
``tools/demo.py`` for the outputs and the command line.
"""

import logging
import os
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..data import Vocabulary, load_vocabulary_file, read_image_or_fail, vocabulary_from_names
from ..data.image_files import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, expand_inputs
from ..utils.cli import load_segmentor_config
from ..utils.errors import ClearCLIPError
from ..utils.io import atomic_write, check_writable_folder
from .predictor import ClearCLIPPredictor
from .video import AtomicVideoWriter, VideoInfo, check_video_writer, probe_video, read_video_frames
from .visualizer import LEGEND_BACKGROUND, class_summary, draw_overlay, make_metadata, save_image, save_masks

DEFAULT_OUTPUT = "output/demo"
# scikit-image's sample photos that ship inside its wheel (no download); all public domain or CC0.
SAMPLE_IMAGES = ("astronaut", "chelsea", "coffee", "rocket")
DEFAULT_VOCABULARY = (
    "person, astronaut; flag; cat, kitten; cup, mug; saucer, plate; spoon; table; "
    "rocket; smoke; sky; tree; grass; building, tower; wall; floor, carpet"
)
OUTPUT_VIDEO_SUFFIX = "_overlay.mp4"

logger = logging.getLogger("clearclip_d2.demo")


# ----------------------------------------------------------------------------- config
def demo_config(config_file: str, opts: Sequence = (), prob_threshold: Optional[float] = None):
    """Config from the file, the overrides and ``--prob-threshold``; the device falls back to the CPU."""
    threshold = [] if prob_threshold is None else ["MODEL.CLEARCLIP.PROB_THRESHOLD", float(prob_threshold)]
    return load_segmentor_config(config_file, list(opts) + threshold, "the demo")


def parse_vocabulary_string(text: str) -> Vocabulary:
    """``"cat, kitten; grass, lawn"`` -> two classes (empty entries, e.g. a trailing ';', are ignored)."""
    entries = [entry.strip() for entry in text.split(";") if entry.strip()]
    return vocabulary_from_names(entries, source="--vocabulary")


def choose_vocabulary(cfg, vocabulary: Optional[str] = None, vocabulary_file: Optional[str] = None) -> Optional[Vocabulary]:
    """The vocabulary to set on the model: ``--vocabulary`` text, else ``--vocabulary-file``; None
    keeps the model's (MODEL.CLEARCLIP.CLASS_NAMES_FILE); else the sample photos' vocabulary."""
    if vocabulary is not None:
        return parse_vocabulary_string(vocabulary)
    if vocabulary_file:
        return load_vocabulary_file(vocabulary_file)
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


# ----------------------------------------------------------------------------- the loop
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
        for count, frame in enumerate(read_video_frames(job.source, input_format, job.video.frames), start=1):
            stem = f"{job.stem}_{count - 1:06d}"
            _, overlay = segment(frame, f"{stem}_overlay.png", stem)
            if writer is None:
                writer = AtomicVideoWriter(
                    job.overlay, job.video.fps, (overlay.shape[1], overlay.shape[0]), LEGEND_BACKGROUND
                )
            writer.write(overlay)
            progress.update(1)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        writer.close()
    return count


def run_demo(
    cfg=None,
    inputs: Optional[Sequence[str]] = None,
    output: str = DEFAULT_OUTPUT,
    vocabulary: Optional[str] = None,
    vocabulary_file: Optional[str] = None,
    save_masks: bool = False,
    predictor: Optional[ClearCLIPPredictor] = None,
) -> List[str]:
    """The demo (``tools/demo.py``'s flags as arguments); returns the overlay files written.

    ``cfg``: from :func:`demo_config`. ``predictor``: an existing :class:`ClearCLIPPredictor` to
    reuse instead (its config is used, ``cfg`` is ignored); only its vocabulary is changed, the
    model is not rebuilt. ``inputs`` None: scikit-image's sample photos, saved under
    ``<output>/inputs/``.
    """
    cfg = predictor.cfg if predictor is not None else cfg
    vocabulary = choose_vocabulary(cfg, vocabulary, vocabulary_file)
    if inputs:
        inputs = expand_inputs(inputs, videos=True)
    else:
        if output.lower().endswith(IMAGE_EXTENSIONS) or (os.path.exists(output) and not os.path.isdir(output)):
            raise ClearCLIPError(f"--output {output}: the sample photos need an output folder; give a folder or --input")
        check_writable_folder(output, "--output")
        inputs = write_sample_images(os.path.join(output, "inputs"))
        logger.info(f"No --input: using scikit-image's sample photos, saved in {os.path.join(output, 'inputs')}")
    jobs = plan_jobs(output, inputs)
    for folder in sorted({os.path.dirname(os.path.abspath(job.overlay)) for job in jobs}):
        check_writable_folder(folder, "--output")  # before the model is built
    if any(job.kind == "video" for job in jobs):
        check_video_writer(output)

    from tqdm import tqdm

    if predictor is None:
        cc = cfg.MODEL.CLEARCLIP
        logger.info(f"Building ClearCLIP: {cc.MODEL_NAME} (weights: {cc.PRETRAINED or 'random'}) on {cfg.MODEL.DEVICE}")
        predictor = ClearCLIPPredictor(cfg)
    if vocabulary is not None:
        predictor.set_vocabulary(vocabulary)
    logger.info(f"Vocabulary ({len(predictor.class_names)} classes): {'; '.join(', '.join(c) for c in predictor.vocabulary.classes)}")
    segment = Segmenter(predictor, cfg.INPUT.FORMAT, save_masks)

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
    logger.info(f"Wrote {len(written)} overlay(s) to {output}")
    return written
