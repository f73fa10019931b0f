"""ImageNet-1k's 1,000 classes, each in one group ("dog", "big_cat", "artifact", ...), with a readable name.

What the ImageNet head sees matters by kind, not by class: a pet is sometimes read as a ferret or a
dingo, never as a cougar or a cow. The table (imagenet_groups.tsv beside this file) is derived from
WordNet 3.0 by tools/derive_imagenet_groups.py and shipped as it is, so nothing here needs WordNet
or NumPy. Index i is ImageNet-1k class i (0..999, sorted wnids), the head's output i + HEAD_OFFSET
(its output 0 is "background").
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

# The one list of groups: the derivation script assigns every class to exactly one of these.
GROUPS = (
    "dog", "house_cat", "wild_cat", "big_cat", "wild_canine", "bear", "mustelid", "other_carnivore",
    "rodent_rabbit", "primate", "ungulate", "elephant", "marsupial", "xenarthran", "marine_mammal",
    "bird", "fish", "reptile_amphibian", "invertebrate", "person", "food", "plant_fungus",
    "artifact", "scene_nature",
)
CLASSES = 1000
HEAD_OFFSET = 1  # the ImageNet head's output 0 is "background"
TABLE = Path(__file__).with_name("imagenet_groups.tsv")
LICENCE_NOTICE = "WordNet 3.0 (Princeton licence): WordNet 3.0 Copyright 2006 by Princeton University. All rights reserved."
COLUMNS = ("index", "wnid", "imagenet_name", "readable_name", "group")


@dataclass(frozen=True)
class ImageNetClass:
    index: int  # 0..999
    wnid: str  # WordNet 3.0 id, e.g. "n02123045"
    imagenet_name: str  # as ImageNet lists it: "tabby, tabby cat"
    readable_name: str  # what a pet owner would call it: "tabby cat"
    group: str  # one of GROUPS


@cache
def classes() -> tuple[ImageNetClass, ...]:
    """The table, checked: a damaged table would silently move classes between groups."""
    lines = [line for line in TABLE.read_text(encoding="utf-8").splitlines() if line and not line.startswith("#")]
    if tuple(lines[0].split("\t")) != COLUMNS:
        raise ValueError(f"Unexpected ImageNet groups header. Received: header={lines[0]!r}")
    rows = []
    for line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(COLUMNS) or fields[4] not in GROUPS or fields[0] != str(len(rows)):
            raise ValueError(f"Malformed ImageNet groups row {len(rows)}. Received: row={line!r}")
        rows.append(ImageNetClass(int(fields[0]), *fields[1:]))
    if len(rows) != CLASSES:
        raise ValueError(f"The ImageNet groups table needs {CLASSES} rows. Received: rows={len(rows)}")
    return tuple(rows)


def groups() -> tuple[str, ...]:
    """Each class's group, by index 0..999."""
    return tuple(c.group for c in classes())


def readable_names() -> tuple[str, ...]:
    return tuple(c.readable_name for c in classes())


def wnids() -> tuple[str, ...]:
    return tuple(c.wnid for c in classes())


def indices(group: str) -> tuple[int, ...]:
    """The indices 0..999 of one group's classes (add HEAD_OFFSET for the head's outputs)."""
    if group not in GROUPS:
        raise ValueError(f"Unknown ImageNet group; choose one of {', '.join(GROUPS)}. Received: group={group!r}")
    return tuple(c.index for c in classes() if c.group == group)
