"""Class vocabularies: class names with synonyms, and the queries sent to the text encoder.

The reference format is one class a line; a line may hold comma-separated synonyms of that
class (``"sky, clouds"``). Every synonym is a separate text query; the segmentor takes the
maximum probability over the synonyms of a class.
"""

import os
from dataclasses import dataclass
from typing import List, Sequence, Tuple

from ..constants import CLASS_NAMES_DIR, CLASS_NAMES_RESOURCE_PREFIX
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


def vocabulary_from_names(entries: Sequence[str], source: str = "vocabulary", allow_repeats: bool = False) -> Vocabulary:
    """Build a :class:`Vocabulary` from entries such as ``["cat", "grass, lawn"]``.

    A name given to two classes is refused unless ``allow_repeats`` (the authors' shipped
    lists: SCLIP's COCO-Object list has "bed" among the background queries and as a class;
    both queries get the same probability, and the argmax picks the first, background)."""
    if len(entries) == 0:
        raise ClearCLIPError(f"{source} is empty: give at least one class name")
    classes = tuple(parse_class_entry(entry, f"{source}, class {i}") for i, entry in enumerate(entries))
    if allow_repeats:
        return Vocabulary(classes)
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


def resolve_class_names_file(path: str) -> str:
    """``resources:<name>`` -> ``clearclip_d2/resources/class_names/<name>.txt``; other paths unchanged."""
    if not path.startswith(CLASS_NAMES_RESOURCE_PREFIX):
        return path
    name = path[len(CLASS_NAMES_RESOURCE_PREFIX):]
    resolved = os.path.normpath(os.path.join(CLASS_NAMES_DIR, f"{name}.txt"))
    if not name or not resolved.startswith(CLASS_NAMES_DIR + os.sep) or not os.path.isfile(resolved):
        shipped = sorted(
            os.path.relpath(os.path.join(root, f), CLASS_NAMES_DIR)[:-4]
            for root, _, files in os.walk(CLASS_NAMES_DIR) for f in files if f.endswith(".txt")
        )
        raise ClearCLIPError(
            f"no shipped class list {path!r} (MODEL.CLEARCLIP.CLASS_NAMES_FILE); shipped: "
            f"{', '.join(CLASS_NAMES_RESOURCE_PREFIX + s for s in shipped)}"
        )
    return resolved


def load_vocabulary_file(path: str) -> Vocabulary:
    """Read a class-names file in the reference format (one class a line, comma-separated
    synonyms); ``resources:<name>`` names a shipped list (:func:`resolve_class_names_file`)."""
    shipped, path = path.startswith(CLASS_NAMES_RESOURCE_PREFIX), resolve_class_names_file(path)
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
    return vocabulary_from_names(lines, source=f"class-names file {path}", allow_repeats=shipped)
