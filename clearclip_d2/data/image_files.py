"""Image (and video) paths from the command line: files, globs and folders."""

import glob
import os
from typing import List, Sequence

from ..utils.errors import ClearCLIPError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VIDEO_EXTENSIONS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv")


def expand_inputs(patterns: Sequence[str], videos: bool = False) -> List[str]:
    """Image paths (and, with ``videos``, video paths) from files, globs and folders (folders:
    their images/videos, sorted; not recursive).

    Duplicates are dropped; a folder or glob without any, or a missing path, is refused.
    """
    extensions = IMAGE_EXTENSIONS + (VIDEO_EXTENSIONS if videos else ())
    noun = "images or videos" if videos else "images"
    kinds = f"images ({', '.join(IMAGE_EXTENSIONS)})" + (f" or videos ({', '.join(VIDEO_EXTENSIONS)})" if videos else "")

    def wanted(path: str) -> bool:
        return os.path.isfile(path) and path.lower().endswith(extensions)

    paths: List[str] = []
    for pattern in patterns:
        if os.path.isdir(pattern):
            found = [path for path in sorted(os.path.join(pattern, name) for name in os.listdir(pattern)) if wanted(path)]
            if not found:
                raise ClearCLIPError(f"input folder {pattern} holds no {kinds}")
        elif os.path.isfile(pattern):
            found = [pattern]
        elif glob.has_magic(pattern):
            found = [path for path in sorted(glob.glob(os.path.expanduser(pattern), recursive=True)) if wanted(path)]
            if not found:
                raise ClearCLIPError(f"input pattern {pattern!r} matches no {noun}")
        else:
            raise ClearCLIPError(f"input {pattern} does not exist")
        paths.extend(found)
    unique = list(dict.fromkeys(os.path.normpath(path) for path in paths))
    if not unique:
        raise ClearCLIPError("no input images")
    return unique
