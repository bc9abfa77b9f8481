"""Bundled class tables of the large-vocabulary benchmarks, and how their vocabularies are made.

``resources/ade20k_full_categories.tsv`` lists ADE20K-full's 847 classes (train id, ADE20K
object id, WordNet name with comma-separated synonyms). Several synonyms name more than one
class there ("screen" is a blind, a screen door, a CRT screen and a projection screen), which a
:class:`~clearclip_d2.data.Vocabulary` refuses: :func:`unique_synonyms` gives each shared name
to one class only, and ``resources/class_names/ade20k_full.txt`` is its result.
"""

import collections
import csv
import functools
import os
from dataclasses import dataclass
from typing import Dict, List, Sequence, Tuple

from ..constants import RESOURCE_DIR

ADE20K_FULL_CATEGORIES_FILE = os.path.join(RESOURCE_DIR, "ade20k_full_categories.tsv")


@dataclass(frozen=True)
class AdeCategory:
    train_id: int  # 0..846, the label value after preparation
    ade_id: int  # ADE20K_2021_17_01 object class id, (R // 10) * 256 + G in a *_seg.png
    name: str  # "building, edifice": comma-separated synonyms


@functools.lru_cache(maxsize=None)
def ade20k_full_categories() -> Tuple[AdeCategory, ...]:
    """The 847 ADE20K-full classes in train-id order."""
    with open(ADE20K_FULL_CATEGORIES_FILE, encoding="utf-8", newline="") as f:
        rows = [line for line in f if not line.startswith("#")]
    table = csv.DictReader(rows, delimiter="\t")
    categories = tuple(AdeCategory(int(r["train_id"]), int(r["ade_id"]), r["name"]) for r in table)
    if [c.train_id for c in categories] != list(range(len(categories))):
        raise RuntimeError(f"{ADE20K_FULL_CATEGORIES_FILE}: train ids are not 0..{len(categories) - 1} in order")
    return categories


def unique_synonyms(entries: Sequence[str]) -> List[str]:
    """Drop synonyms that name several classes from all but one of them.

    A name shared by several classes stays with the class whose only name it is, else with the
    single class whose first (display) name it is, else with none; every class keeps its other
    synonyms. Example: ``"bag"``, ``"bag, handbag, purse"`` -> ``"bag"``, ``"handbag, purse"``.
    Raises ValueError if a class would be left without a name.
    """
    classes = [[name.strip() for name in entry.split(",")] for entry in entries]
    holders: Dict[str, List[int]] = collections.defaultdict(list)
    for index, synonyms in enumerate(classes):
        for name in dict.fromkeys(s.lower() for s in synonyms):
            holders[name].append(index)
    owner = {}
    for name, indices in holders.items():
        if len(indices) > 1:
            only_name = [i for i in indices if len(classes[i]) == 1]
            first_name = [i for i in indices if classes[i][0].lower() == name]
            owner[name] = only_name[0] if len(only_name) == 1 else (first_name[0] if len(first_name) == 1 else None)
    result = []
    for index, synonyms in enumerate(classes):
        kept = [s for s in synonyms if owner.get(s.lower(), index) == index]
        if not kept:
            raise ValueError(f"class {index} ({entries[index]!r}) has no name left that is its own")
        result.append(", ".join(kept))
    return result
