"""Bad files met in the middle of an evaluation.

An image that cannot be read (missing, corrupt, truncated) is found by the dataset mapper, in
a DataLoader worker process; a label map that cannot be read, has another size than its image
or holds a value outside the classes is found by the evaluator, after the model ran. Both end
in :meth:`~.sem_seg_evaluation.ClearCLIPSemSegEvaluator.report_bad_input`, in the process that
runs the model: by default it stops the evaluation with one line naming the file and how many
images are done (and kept for ``--resume-eval``); with ``--skip-bad-images`` the image is left
out of the metrics and listed in ``skipped.txt``.

The mapper (built with ``mark_bad_images=True``) returns a marker dict for a bad image rather
than raising, because an exception in a worker reaches the main process without the count of
images done and would end the run in skip mode too; :class:`BadInputFilter` takes the markers
out of the batches before the model sees them.
"""

import logging
import os
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from ..data.dataset_mapper import BAD_INPUT_KEY, TRANSPOSING_EXIF_ORIENTATIONS, exif_orientation
from ..utils.errors import ClearCLIPError, some_values
from ..utils.io import atomic_write

logger = logging.getLogger(__name__)

SKIPPED_FILE = "skipped.txt"


class BadInputFilter:
    """Iterate a test data loader, handing bad-image markers to ``on_bad_input(file_name, reason)``
    instead of yielding them; batches left empty are not yielded. ``len()`` is the loader's."""

    def __init__(self, loader: Iterable, on_bad_input: Callable[[str, str], None]):
        self.loader = loader
        self.on_bad_input = on_bad_input

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator[List[dict]]:
        for batch in self.loader:
            good = []
            for item in batch:
                if BAD_INPUT_KEY in item:
                    self.on_bad_input(item["file_name"], item[BAD_INPUT_KEY])
                else:
                    good.append(item)
            if good:
                yield good


def check_label_map(
    label: np.ndarray, image_size: Tuple[int, int], num_classes: int, ignore_label: int, label_file: str, image_file: str
) -> None:
    """Refuse a label map whose size is not its image's or whose values are not classes.

    Args:
        label: [H, W] integer label map as read.
        image_size: (height, width) of the prediction, i.e. of the original image.
        num_classes: valid labels are ``0 .. num_classes - 1`` and ``ignore_label``.
    """
    if label.ndim != 2:
        raise ClearCLIPError(f"label map {label_file} has shape {label.shape}; expected a single-channel label map")
    if tuple(label.shape) != tuple(image_size):
        raise ClearCLIPError(
            f"label map {label_file} is {_size(label.shape)} but its image {image_file} is "
            f"{_size(image_size)}{_exif_hint(label.shape, image_size, image_file)}; labels must match their image"
        )
    bad = (label < 0) | ((label >= num_classes) & (label != ignore_label))
    if bad.any():
        raise ClearCLIPError(
            f"label map {label_file} has {int(bad.sum())} pixels with values outside 0..{num_classes - 1} that are "
            f"not the ignore label {ignore_label} (values {some_values(np.unique(label[bad]), 10)}); prepare the "
            "dataset again with its datasets/prepare_*.py script, or check its stuff_classes and ignore_label"
        )


def _exif_hint(label_shape: Sequence[int], image_size: Sequence[int], image_file: str) -> str:
    """Why the sizes may differ when the label map is the image turned by 90 degrees."""
    orientation = exif_orientation(image_file)
    if tuple(label_shape) == tuple(image_size)[::-1] and orientation in TRANSPOSING_EXIF_ORIENTATIONS:
        return (
            f" as read: its EXIF orientation {orientation} turns it by 90 degrees, as Detectron2 reads images; "
            "remove the EXIF orientation tag (keeping the stored pixels) or turn the label map the same way"
        )
    return ""


def _size(shape: Sequence[int]) -> str:
    return f"{shape[1]}x{shape[0]}" if len(shape) == 2 else "x".join(str(s) for s in shape)


def stop_message(reason: str, done: Optional[int], total: int, shard_folder: str) -> str:
    """The one line that ends an evaluation at a bad file (without ``--skip-bad-images``).
    ``done`` None: several processes evaluate, and the count of all of them together is known
    only once they have all ended (the launcher reports it: :func:`progress_message`)."""
    if shard_folder:
        kept = (
            f"their results are kept in {shard_folder}: fix or remove the file, then rerun with "
            f"--resume-eval to continue"
        )
    else:
        kept = "nothing is kept without an OUTPUT_DIR"
    stopped = "stopped" if done is None else f"stopped after {done} of {total} images"
    return (
        f"{reason}; {stopped} ({kept}), or rerun with --skip-bad-images "
        f"to leave bad files out and list them in {SKIPPED_FILE}"
    )


def progress_message(dataset_name: str, done: int, total: int, shard_folder: str) -> str:
    """What an evaluation stopped by a bad file had done, all its processes together."""
    return (
        f"{done} of {total} images of {dataset_name} were evaluated (all processes together); their results "
        f"are kept in {shard_folder} for --resume-eval"
    )


def write_skipped_list(output_dir: str, skipped: Sequence[Tuple[str, str]]) -> str:
    """Write ``output_dir/skipped.txt`` atomically: one ``file<TAB>reason`` line per skipped image."""
    path = os.path.join(output_dir, SKIPPED_FILE)
    with atomic_write(path, "w") as f:
        for file_name, reason in skipped:
            f.write(f"{file_name}\t{reason}\n")
    return path
