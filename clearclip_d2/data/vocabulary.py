"""Class vocabularies: class names with synonyms, and the queries sent to the text encoder.

The reference format is one class a line; a line may hold comma-separated synonyms of that
class (``"sky, clouds"``). Every synonym is a separate text query; the segmentor takes the
maximum probability over the synonyms of a class.
"""

import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..utils.errors import ClearCLIPError


@dataclass(frozen=True)
class Vocabulary:
    """A list of classes, each a tuple of one or more synonyms (the first is its display name)."""

    classes: Tuple[Tuple[str, ...], ...]

    @property
    def class_names(self) -> List[str]:
        """Display names, one per class."""
        return [synonyms[0] for synonyms in self.classes]

    @property
    def queries(self) -> List[str]:
        """All synonyms of all classes, flattened in class order (one text query each)."""
        return [name for synonyms in self.classes for name in synonyms]

    @property
    def query_to_class(self) -> List[int]:
        """For each query, the index of its class."""
        return [idx for idx, synonyms in enumerate(self.classes) for _ in synonyms]

    def __len__(self) -> int:
        return len(self.classes)


def parse_class_entry(entry: str, where: str) -> Tuple[str, ...]:
    """Split one class entry ``"a, b"`` into its synonyms, refusing empty names."""
    synonyms = tuple(name.strip() for name in entry.split(","))
    if not entry.strip() or any(not name for name in synonyms):
        raise ClearCLIPError(f"{where}: empty class name in {entry!r}; give one class a line, synonyms separated by commas")
    return synonyms


def vocabulary_from_names(entries: Sequence[str], source: str = "vocabulary") -> Vocabulary:
    """Build a :class:`Vocabulary` from entries such as ``["cat", "grass, lawn"]``."""
    if len(entries) == 0:
        raise ClearCLIPError(f"{source} is empty: give at least one class name")
    classes = tuple(parse_class_entry(entry, f"{source}, class {i}") for i, entry in enumerate(entries))
    seen = {}
    for i, synonyms in enumerate(classes):
        for name in synonyms:
            key = name.lower()
            if key in seen:
                raise ClearCLIPError(
                    f"{source}: {name!r} appears twice (classes {seen[key]} and {i}); each name may name one class only"
                )
            seen[key] = i
    return Vocabulary(classes)


def load_vocabulary_file(path: str) -> Vocabulary:
    """Read a class-names file in the reference format (one class a line, comma-separated synonyms)."""
    if not os.path.isfile(path):
        raise ClearCLIPError(f"class-names file {path} does not exist; set MODEL.CLEARCLIP.CLASS_NAMES_FILE to an existing file")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ClearCLIPError(f"cannot read class-names file {path}: {e}") from e
    if not any(line.strip() for line in lines):
        raise ClearCLIPError(f"class-names file {path} is empty; write one class a line")
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            raise ClearCLIPError(f"class-names file {path} has a blank line at line {lineno}; remove it (one class a line)")
    return vocabulary_from_names(lines, source=f"class-names file {path}")
