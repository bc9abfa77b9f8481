"""Image paths from the command line: files, globs and folders."""

import glob
import os
from typing import List, Sequence

from ..utils.errors import ClearCLIPError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def _is_image(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS)


def expand_inputs(patterns: Sequence[str]) -> List[str]:
    """Image paths from files, globs and folders (folders: their images, sorted; not recursive).

    Duplicates are dropped; a folder or glob without images, or a missing path, is refused.
    """
    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = sorted(os.path.join(pattern, name) for name in os.listdir(pattern))
            found = [path for path in found if _is_image(path)]
            if not found:
                raise ClearCLIPError(f"input folder {pattern} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        elif os.path.isfile(pattern):
            found = [pattern]
        elif glob.has_magic(pattern):
            found = [path for path in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if _is_image(path)]
            if not found:
                raise ClearCLIPError(f"input pattern {pattern!r} matches no images")
        else:
            raise ClearCLIPError(f"input {pattern} does not exist")
        paths.extend(found)
    unique = list(dict.fromkeys(os.path.normpath(path) for path in paths))
    if not unique:
        raise ClearCLIPError("no input images")
    return unique
