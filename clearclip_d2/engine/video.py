"""The demo's video reading and writing with OpenCV: probe, frames, atomic overlay videos."""

import contextlib
import logging
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from typing import Iterator, Tuple

import numpy as np

from ..utils.errors import ClearCLIPError

logger = logging.getLogger(__name__)

OUTPUT_VIDEO_FOURCC = "mp4v"  # MPEG-4 part 2: the mp4 encoder every OpenCV wheel has
FALLBACK_FPS = 25.0


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


def read_video_frames(path: str, image_format: str, expected_frames: int = 0) -> Iterator[np.ndarray]:
    """H x W x 3 uint8 frames in ``image_format`` (OpenCV decodes to BGR). When decoding stops
    before ``expected_frames`` (the count the container reports), a warning says where."""
    import cv2

    capture = cv2.VideoCapture(path)
    decoded = 0
    try:
        while True:
            with quiet_opencv():
                ok, frame = capture.read()
            if not ok:
                break
            decoded += 1
            yield np.ascontiguousarray(frame[:, :, ::-1]) if image_format == "RGB" else frame
    finally:
        capture.release()
    if decoded < expected_frames:
        logger.warning(
            f"video {path}: frames stopped decoding after frame {decoded} of the {expected_frames} its container "
            f"reports (a truncated or damaged file?); the overlay video ends there"
        )


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
    :func:`even_size` with the RGB colour ``background``."""

    def __init__(self, path: str, fps: float, size: Tuple[int, int], background: Tuple[int, int, int] = (0, 0, 0)):
        import cv2

        self.path = path
        self.background = background
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
        canvas[:] = self.background
        canvas[: frame_rgb.shape[0], : frame_rgb.shape[1]] = frame_rgb
        self.writer.write(canvas[:, :, ::-1].copy())

    def close(self) -> None:
        self.writer.release()
        os.replace(self.tmp_path, self.path)
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def discard(self) -> None:
        self.writer.release()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)
