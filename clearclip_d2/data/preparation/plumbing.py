"""What every ``datasets/prepare_*.py`` script shares.

* reading the official files, refusing what is not what the download contains (a colour
  label map, values outside the known ids, a 16-bit photo) with one line naming the file;
* writing each output atomically; an output that exists with the same content is left
  alone ("unchanged"), one with other content is refused unless ``--force``;
* a pool of worker processes with a progress bar; an error in a worker names its file;
* the command line: ``--root`` (default ``$DETECTRON2_DATASETS``), ``--workers``, ``--force``
  (the scripts print errors as one line with exit status 2 through
  :func:`clearclip_d2.utils.cli.exit_on_user_error`).
"""

import argparse
import collections
import functools
import io
import multiprocessing as mp
import os
from dataclasses import dataclass
from typing import Callable, Counter, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image
from tqdm import tqdm

from ...utils.errors import ClearCLIPError, some_values
from ...utils.io import atomic_write
from ..dataset_mapper import HIGH_BIT_DEPTH_MODES
from ..datasets.common import datasets_root, files_by_stem

WRITTEN, UNCHANGED = "written", "unchanged"


# ------------------------------------------------------------------------------ outputs
@dataclass(frozen=True)
class OutputFile:
    """An output file's path and encoded bytes; ``pixels`` (the decoded array), if given, lets an
    existing file with other bytes but the same pixels count as unchanged."""

    path: str
    data: bytes
    pixels: Optional[np.ndarray] = None


def _encode(image: Image.Image, fmt: str, **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **params)
    return buffer.getvalue()


def png_output(path: str, label: np.ndarray) -> OutputFile:
    """An HxW uint8 label map as a grayscale PNG."""
    if label.dtype != np.uint8 or label.ndim != 2:
        raise ValueError(f"expected an HxW uint8 label map, got {label.dtype} {label.shape}")
    return OutputFile(path, _encode(Image.fromarray(label, mode="L"), "PNG"), label)


def tiff16_output(path: str, label: np.ndarray) -> OutputFile:
    """An HxW uint16 label map as an uncompressed 16-bit TIFF (what Detectron2 projects read)."""
    if label.dtype != np.uint16 or label.ndim != 2:
        raise ValueError(f"expected an HxW uint16 label map, got {label.dtype} {label.shape}")
    return OutputFile(path, _encode(Image.fromarray(label), "TIFF"), label)


def jpeg_output(path: str, image_rgb: np.ndarray) -> OutputFile:
    """An HxWx3 uint8 RGB image as a JPEG with Pillow's default settings (quality 75), as the
    Detectron2 projects' preparation scripts write it."""
    return OutputFile(path, _encode(Image.fromarray(image_rgb, mode="RGB"), "JPEG"))


def _read_pixels(path: str) -> Optional[np.ndarray]:
    try:
        with Image.open(path) as image:
            return np.array(image)
    except Exception:  # an unreadable existing output differs from the new one
        return None


def _same_content(output: OutputFile) -> bool:
    with open(output.path, "rb") as f:
        if f.read() == output.data:
            return True
    if output.pixels is None:
        return False
    existing = _read_pixels(output.path)
    return existing is not None and existing.dtype == output.pixels.dtype and np.array_equal(existing, output.pixels)


def write_output(output: OutputFile, source: str, force: bool) -> str:
    """Write ``output`` atomically unless an identical file is there; return WRITTEN or UNCHANGED.

    An existing file with other content is refused (naming both files) unless ``force``.
    """
    try:
        if os.path.exists(output.path):
            if _same_content(output):
                return UNCHANGED
            if not force:
                raise ClearCLIPError(
                    f"output {output.path} exists and differs from the conversion of {source}; "
                    "rerun with --force to overwrite it"
                )
        with atomic_write(output.path, "wb") as f:
            f.write(output.data)
    except OSError as e:
        raise ClearCLIPError(f"cannot write {output.path}: {e}") from e
    return WRITTEN


# ------------------------------------------------------------------------------ running
@dataclass(frozen=True)
class ConversionTask:
    """One source file and the outputs made from it (script-specific ``inputs`` may follow)."""

    source: str
    outputs: Tuple[str, ...]
    inputs: Tuple[str, ...] = ()


Converter = Callable[[ConversionTask], Sequence[OutputFile]]


def run_task(task: ConversionTask, convert: Converter, force: bool) -> List[str]:
    """Convert one task and write its outputs; any failure becomes one line naming the source."""
    try:
        outputs = convert(task)
    except ClearCLIPError:
        raise
    except Exception as e:  # a bug or an unforeseen file: still name the file
        raise ClearCLIPError(f"cannot convert {task.source}: {type(e).__name__}: {e}") from e
    return [write_output(output, task.source, force) for output in outputs]


@dataclass(frozen=True)
class LookupConversion:
    """Converter of an 8-bit label map: check its values, write it through one lookup table per
    output (``task.outputs[i]`` gets ``luts[i][raw]`` as a PNG)."""

    luts: Tuple[np.ndarray, ...]
    valid: np.ndarray  # bool table over the raw values
    allowed: str  # the valid raw values in words, for errors
    hint: str  # what the file should be, for errors

    def __call__(self, task: ConversionTask) -> List[OutputFile]:
        raw = read_label_map(task.source)
        check_values(raw, self.valid, task.source, self.allowed, self.hint)
        return [png_output(path, lut[raw]) for path, lut in zip(task.outputs, self.luts)]


def folder_tasks(
    source_dir: str, output_dir: str, source_suffix: str, output_suffix: str, fix: str, subfolders: bool = False
) -> List[ConversionTask]:
    """One task per file of ``source_dir`` (or of its subfolders) ending with ``source_suffix``,
    written to the same relative place in ``output_dir`` with ``output_suffix``; none is an error."""
    files = files_by_stem(source_dir, source_suffix, subfolders)
    tasks = [
        ConversionTask(path, (os.path.join(output_dir, stem + output_suffix),)) for stem, path in sorted(files.items())
    ]
    if not tasks:
        where = os.path.join(source_dir, "*", "") if subfolders else os.path.join(source_dir, "")
        raise ClearCLIPError(f"{where} holds no *{source_suffix} files; {fix}")
    return tasks


def _outcomes(work, tasks: Sequence[ConversionTask], workers: int) -> Iterator[List[str]]:
    """``work`` applied to each task, in this process or in a pool of ``workers``."""
    workers = min(workers, len(tasks))
    if workers <= 1:
        yield from map(work, tasks)
        return
    with worker_context().Pool(workers) as pool:
        yield from pool.imap_unordered(work, tasks, chunksize=8)


def worker_context():
    """The multiprocessing context of the conversion pool: forkserver (spawn where there is none).

    Not fork: this process has threads (PyTorch's, imported with the package), and forking a
    threaded process can deadlock (Python 3.12+ warns about it). The forkserver preloads this
    module once, so each worker starts with the package already imported.
    """
    if "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    context = mp.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context


def convert_all(tasks: Sequence[ConversionTask], convert: Converter, desc: str, workers: int, force: bool) -> Counter:
    """Run every task (with a progress bar); return how many output files were written / unchanged.

    ``convert`` must be a module-level function (worker processes receive it by reference).
    """
    counts: Counter = collections.Counter({WRITTEN: 0, UNCHANGED: 0})
    work = functools.partial(run_task, convert=convert, force=force)
    with tqdm(total=len(tasks), desc=desc, unit="file", disable=None) as bar:
        for outcomes in _outcomes(work, tasks, workers):
            counts.update(outcomes)
            bar.update()
    return counts


def report(desc: str, counts: Counter, destination: str) -> None:
    print(f"{desc}: {counts[WRITTEN]} written, {counts[UNCHANGED]} unchanged -> {destination}", flush=True)


def convert_and_report(desc: str, tasks: Sequence[ConversionTask], convert: Converter, destination: str, args) -> Counter:
    """:func:`convert_all` with the ``--workers`` / ``--force`` of ``args``, then the summary line."""
    counts = convert_all(tasks, convert, desc, args.workers, args.force)
    report(desc, counts, destination)
    return counts


def convert_splits(
    args, tasks: Callable[[str, str], Sequence[ConversionTask]], convert: Converter, destination: Callable[[str, str], str]
) -> None:
    """:func:`convert_and_report` for each of ``args.splits``: ``tasks(root, split)``, reported
    as written to ``destination(root, split)``."""
    for split in args.splits:
        convert_and_report(split, tasks(args.root, split), convert, destination(args.root, split), args)


# ------------------------------------------------------------------------------ reading inputs
def read_array(path: str, what: str) -> Tuple[np.ndarray, str]:
    """(``np.array`` of an image file, its PIL mode); an unreadable file raises one line naming
    it as ``what`` ("label map", "segmentation", ...)."""
    try:
        with Image.open(path) as image:
            return np.array(image), image.mode
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError...
        raise ClearCLIPError(f"cannot read {what} {path}: {type(e).__name__}: {e}") from e


def read_label_map(path: str) -> np.ndarray:
    """An official label file as an HxW uint8 array; anything else is refused."""
    label, mode = read_array(path, "label map")
    if label.ndim != 2 or label.dtype != np.uint8:
        raise ClearCLIPError(
            f"label map {path} is not a single-channel 8-bit image (PIL mode {mode}, shape {label.shape})"
        )
    return label


def read_rgb_image(path: str) -> np.ndarray:
    """A photo as HxWx3 uint8 RGB: grayscale, palette, RGBA and CMYK images are converted; images
    with more than 8 bits a channel are refused."""
    try:
        with Image.open(path) as image:
            mode = image.mode
            if mode not in HIGH_BIT_DEPTH_MODES:
                rgb = np.array(image.convert("RGB"))
    except Exception as e:
        raise ClearCLIPError(f"cannot read image {path}: {type(e).__name__}: {e}") from e
    if mode in HIGH_BIT_DEPTH_MODES:
        raise ClearCLIPError(f"image {path} has more than 8 bits a channel (PIL mode {mode}); expected an 8-bit photo")
    return rgb


def check_values(label: np.ndarray, valid: np.ndarray, path: str, allowed: str, hint: str) -> None:
    """Refuse pixel values ``v`` with ``valid[v]`` False, counting them and naming the file.

    Args:
        valid: bool lookup table over every value of ``label``'s dtype (256 or 65536 entries).
        allowed: the valid values in words ("0..20 and 255"); hint: what the file should be.
    """
    bad = ~valid[label]
    if bad.any():
        raise ClearCLIPError(
            f"label map {path} has {int(bad.sum())} pixels with values outside {allowed} "
            f"(values {some_values(np.unique(label[bad]))}); {hint}"
        )


def valid_values(dtype, *ranges: Tuple[int, int]) -> np.ndarray:
    """A bool lookup table over ``dtype``'s values, True on the inclusive ``(low, high)`` ranges."""
    table = np.zeros(np.iinfo(dtype).max + 1, dtype=bool)
    for low, high in ranges:
        table[low : high + 1] = True
    table.setflags(write=False)
    return table


def require_dir(path: str, fix: str) -> None:
    if not os.path.isdir(path):
        raise ClearCLIPError(f"{path} does not exist; {fix}")


# ------------------------------------------------------------------------------ command line
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


class UniqueValues(argparse.Action):
    """``nargs="+"`` values with repeats dropped (first occurrence kept, order kept)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, list(dict.fromkeys(values)))


def add_list_option(parser: argparse.ArgumentParser, option: str, choices: Sequence[str], default: Sequence[str], what: str) -> None:
    """``option`` taking one or more of ``choices`` (repeats dropped), default ``default``."""
    parser.add_argument(option, nargs="+", choices=choices, default=list(default), action=UniqueValues,
                        help=f"{what} (default: {' '.join(default)})")


def preparation_parser(
    program: str, description: str, source: str, splits: Sequence[str] = (), default_splits: Sequence[str] = ()
) -> argparse.ArgumentParser:
    """An ArgumentParser with ``--root``, ``--workers``, ``--force`` and, given ``splits``,
    ``--splits`` (default ``default_splits``); ``source`` names what ``--root`` must hold."""
    parser = argparse.ArgumentParser(prog=program, description=description)
    if splits:
        add_list_option(parser, "--splits", splits, default_splits, "splits to convert")
    parser.add_argument(
        "--root",
        default=datasets_root(),
        help=f"datasets root holding {source} (default: $DETECTRON2_DATASETS or ./datasets; now %(default)s)",
    )
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes (default: min(8, CPU count) = %(default)s)",
    )
    parser.add_argument("--force", action="store_true", help="overwrite existing outputs that differ")
    return parser


def available_splits(split_dirs: Sequence[Tuple[str, str]], error: str) -> List[str]:
    """The splits whose source folder exists, from ``(split, folder)`` pairs; the others are
    skipped with a line saying so; ``error`` if none is there."""
    found = []
    for split, folder in split_dirs:
        if os.path.isdir(folder):
            found.append(split)
        else:
            print(f"skipping {split}: {folder} does not exist", flush=True)
    if not found:
        raise ClearCLIPError(error)
    return found
