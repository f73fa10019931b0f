"""`dogcat data prepare`: a folder of labelled photos -> a checked, balanced, split dataset.

Every file is read and hashed, and the files drawn are decoded (with the same loader as training
and serving) until the sample is full; empty, truncated, non-image and exact-duplicate files are
skipped with the reason. A balanced subset is drawn with a seeded generator from the sorted list
of files, split per class (stratified), and
copied byte for byte to OUT/{train,val,test}/{cat,dog}/, with OUT/manifest.csv describing it.
The same input and seed give a byte-identical manifest.
"""

from __future__ import annotations

import csv
import fnmatch
import functools
import glob
import hashlib
import io
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from dogcat.artifacts import CLASS_NAMES, write_text_atomic
from dogcat.errors import DogcatError
from dogcat.preprocessing import (
    DEFAULT_IMAGE_SIZE,
    FORMAT_NAMES,
    IMAGE_SUFFIXES,
    ImageError,
    decode_image_with_size,
    read_image_bytes,
)

LABELS = tuple(CLASS_NAMES.values())  # ("cat", "dog"), index = class id
SPLITS = ("train", "val", "test")
MANIFEST_FIELDS = ("path", "label", "split", "sha256", "width", "height")


class DataError(DogcatError, ValueError):
    """A source folder that cannot give the requested dataset."""


@dataclass(frozen=True)
class Candidate:
    source: Path
    label: str


@dataclass(frozen=True)
class GoodImage:
    source: Path
    label: str
    sha256: str
    width: int
    height: int


@dataclass(frozen=True)
class Skipped:
    source: Path
    reason: str


@dataclass
class PrepareReport:
    found: dict[str, int]
    skipped: list[Skipped]
    written: dict[str, dict[str, int]]  # split -> label -> count
    manifest: Path
    decoded: int = 0  # files decoded to check them: what the sample needed, not every file found

    def summary(self) -> str:
        lines = [f"found: {', '.join(f'{n} {label}' for label, n in self.found.items())}"]
        lines.append(f"decoded: {self.decoded} (as many as the sample needed)")
        lines.append(f"skipped: {len(self.skipped)}")
        lines.extend(f"  {s.source}: {s.reason}" for s in self.skipped)
        for split, counts in self.written.items():
            lines.append(f"{split}: {', '.join(f'{n} {label}' for label, n in counts.items())}")
        lines.append(f"manifest: {self.manifest}")
        return "\n".join(lines)


def find_candidates(src: str | Path) -> list[Candidate]:
    """Labelled image files under `src`, sorted by path.

    Layouts: Kaggle flat (`cat.1.jpg`, `dog.1.jpg`), Microsoft PetImages (`Cat/`, `Dog/`), or any
    class sub-folders whose names are the labels (case and a plural `s` are ignored).
    """
    src = Path(src)
    if not src.is_dir():
        raise DataError(f"Source folder not found. Received: src={str(src)!r}")
    files, unreadable = list_image_files(src)
    if src in unreadable:
        raise DataError(f"Cannot list the source folder (permission denied?). Received: src={str(src)!r}")
    candidates = []
    # A sub-folder that cannot be listed is a candidate itself, so it is skipped with its reason.
    for path in sorted(files + unreadable):
        label = _label_from_name(path.name.split(".")[0]) if path.parent == src else None
        if label is None:
            # the nearest enclosing folder below src that names a class
            for parent in path.relative_to(src).parents:
                label = _label_from_name(parent.name)
                if label:
                    break
        if label:
            candidates.append(Candidate(path, label))
    if not candidates:
        raise DataError(
            f"No labelled images found: expected cat.N.jpg / dog.N.jpg files or cat/ and dog/ sub-folders. "
            f"Received: src={str(src)!r}"
        )
    return candidates


def list_image_files(folder: Path, others: list[Path] | None = None) -> tuple[list[Path], list[Path]]:
    """(files with an image suffix under `folder`, sorted; folders that could not be listed).

    Every non-folder entry with an image suffix is listed, readable or not (a fifo, a broken link,
    a file without read permission), so the decoder can say, per file, why it cannot be read.
    Symbolic links to folders are not followed. `others`, if given, receives the remaining
    entries (not hidden ones), so a caller can say what it left out rather than stay silent.
    """
    files: list[Path] = []
    unreadable: list[Path] = []
    for root, _, names in walk(folder, onerror=lambda error: unreadable.append(Path(error.filename))):
        for name in names:
            if Path(name).suffix.lower() in IMAGE_SUFFIXES:
                files.append(Path(root) / name)
            elif others is not None and not name.startswith("."):  # .DS_Store and friends are no news
                others.append(Path(root) / name)
    return sorted(files), sorted(unreadable)


def glob_paths(pattern: str) -> list[str]:
    """`glob.glob(pattern, recursive=True)`, except that `**` never enters a link to a folder: the
    standard glob follows them, so one `self -> .` link multiplied every photo, and two made
    2^40 paths (minutes of silence, then memory). Hidden names match only a pattern that names
    them, as with glob."""
    parts = pattern.split("/")
    if "**" not in parts:
        return glob.glob(pattern)
    first = parts.index("**")
    head, rest = "/".join(parts[:first]) or ("/" if first else ""), tuple(parts[first:])
    bases = glob.glob(head) if glob.has_magic(head) else [head]
    hidden = any(part.startswith(".") for part in rest)
    matches = []
    for base in bases:
        if base and not os.path.isdir(base):
            continue
        for folder, folders, names in walk(base or "."):
            relative = os.path.relpath(folder, base or ".")
            inside = () if relative == "." else tuple(relative.split(os.sep))
            matches.extend(os.path.join(base, *inside, name) for name in folders + names
                           if _glob_match((*inside, name), rest))
            if not hidden:
                folders[:] = [name for name in folders if not name.startswith(".")]
    return matches


def _glob_match(names: tuple[str, ...], parts: tuple[str, ...]) -> bool:
    """Whether the path components `names` match the glob components `parts` (`**`: any number of folders)."""

    @functools.cache
    def match(i: int, j: int) -> bool:
        if j == len(parts):
            return i == len(names)
        if parts[j] == "**":
            return match(i, j + 1) or (i < len(names) and not names[i].startswith(".") and match(i + 1, j))
        return (i < len(names) and (parts[j].startswith(".") or not names[i].startswith("."))
                and fnmatch.fnmatchcase(names[i], parts[j]) and match(i + 1, j + 1))

    return match(0, 0)


def walk(top: str | os.PathLike, onerror=None) -> Iterator[tuple[str, list[str], list[str]]]:
    """`os.walk(top)`: top-down, links to folders listed but not followed, on a stack of its own: Python 3.11's
    `os.walk` recurses, so a tree 1,000 folders deep raised RecursionError and listed nothing."""
    stack = [os.fspath(top)]
    while stack:
        root = stack.pop()
        folders, names, descend = [], [], set()
        try:
            with os.scandir(root) as entries:
                for entry in entries:
                    try:
                        is_dir = entry.is_dir()
                    except OSError:
                        is_dir = False
                    (folders if is_dir else names).append(entry.name)
                    if is_dir and not entry.is_symlink():  # a link to a folder is listed, as os.walk does, never entered
                        descend.add(entry.name)
        except OSError as error:
            if onerror is not None:
                onerror(error)
            continue
        yield root, folders, names  # the caller may prune `folders`, as with os.walk
        stack.extend(os.path.join(root, name) for name in reversed(folders) if name in descend)


def skipped_line(skipped: list[Path] | list[str], shown: int = 5) -> str:
    """One line that counts the files left out of the folders given for their extension, by
    extension, and names the first `shown`: a photo a user expected in the results is never
    silently missing. Control characters in a name are written as escapes (one file, one line)."""
    from collections import Counter

    from dogcat.printable import printable

    names = sorted(str(path) for path in skipped)
    counts = Counter(Path(name).suffix.lower() or "(no extension)" for name in names)
    by_kind = ", ".join(f"{printable(suffix)} ({count})" for suffix, count in sorted(counts.items()))
    named = ", ".join(printable(name) for name in names[:shown])
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return (f"skipped {len(names)} file(s) in the folders given, not {FORMAT_NAMES} by their extension: {by_kind}: "
            f"{named}{more}")


def _label_from_name(name: str) -> str | None:
    name = name.lower()
    for label in LABELS:
        if name in (label, label + "s"):
            return label
    return None


def check_image(candidate: Candidate) -> GoodImage | Skipped:
    """Decode the file as training will; a file we could not serve is a file we do not train on."""
    try:
        data = read_image_bytes(candidate.source)
        if not data:
            return Skipped(candidate.source, "empty file")
        _, size = decode_image_with_size(io.BytesIO(data), DEFAULT_IMAGE_SIZE)
    except ImageError as error:
        return Skipped(candidate.source, str(error).removeprefix(f"{candidate.source}: ").removeprefix("image: "))
    return GoodImage(candidate.source, candidate.label, hashlib.sha256(data).hexdigest(), *size)


def prepare(
    src: str | Path,
    out: str | Path,
    per_class: int = 2000,
    seed: int = 42,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    progress: bool = True,
) -> PrepareReport:
    """Check, sample, split and copy; see the module docstring."""
    if per_class < len(SPLITS):
        raise DataError(f"per_class must be at least {len(SPLITS)}. Received: per_class={per_class}")
    if len(fractions) != 3 or min(fractions) <= 0 or abs(sum(fractions) - 1) > 1e-9:
        raise DataError(f"Split fractions must be three positive numbers summing to 1. Received: fractions={fractions}")
    src, out = Path(src), Path(out)
    candidates = find_candidates(src)
    found = {label: sum(c.label == label for c in candidates) for label in LABELS}

    # Every file is read and hashed (cheap), so duplicates are found as before, the first in sorted
    # order kept; only as many are decoded (the costly check) as the sample needs, in the seeded
    # order: `--per-class 100` of 5,000 photos decodes about 200. Where none fails to decode, the
    # sample is the one a check of every file gave (the shipped model's manifest is unchanged).
    pools, skipped = _unique_candidates(candidates, src, progress)
    rng = np.random.default_rng(seed)
    chosen: dict[str, list[GoodImage]] = {}
    decoded = 0
    with tqdm(total=per_class * len(LABELS), desc="checking images", unit="img", disable=not progress) as bar:
        for label, pool in pools.items():
            chosen[label] = []
            for index in rng.permutation(len(pool)):
                if len(chosen[label]) == per_class:
                    break
                result = check_image(pool[index])
                decoded += 1
                if isinstance(result, Skipped):
                    skipped.append(result)
                else:
                    chosen[label].append(result)
                    bar.update()
    skipped.sort(key=lambda item: str(item.source))
    for label, images in chosen.items():  # before anything in OUT is touched
        if len(images) < per_class:
            raise DataError(
                f"Only {len(images)} usable {label} images in {src}, fewer than the {per_class} asked for "
                f"(lower --per-class). Received: per_class={per_class}"
            )
    counts = [round(per_class * fractions[0]), round(per_class * fractions[1])]
    counts.append(per_class - sum(counts))
    for i, count in enumerate(counts):  # rounding can empty a split: every split gets one at least
        if count == 0:
            counts[counts.index(max(counts))] -= 1
            counts[i] = 1
    n_train, n_val = counts[0], counts[1]

    rows: list[dict[str, object]] = []
    written: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    if out.exists() and any(out.iterdir()):
        if not (out / "manifest.csv").is_file():
            raise DataError(f"Output folder exists and is not a dogcat dataset; refusing to overwrite it. Received: out={str(out)!r}")
        for split in SPLITS:
            shutil.rmtree(out / split, ignore_errors=True)
    for label, images in chosen.items():
        bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, per_class)}
        for split, (start, stop) in bounds.items():
            names: set[str] = set()
            for image in images[start:stop]:
                name = image.source.name
                if name in names:  # same file name in two source folders
                    name = f"{image.source.stem}.{image.sha256[:8]}{image.source.suffix}"
                names.add(name)
                relative = Path(split) / label / name
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(image.source, out / relative)
                rows.append({
                    "path": relative.as_posix(), "label": label, "split": split,
                    "sha256": image.sha256, "width": image.width, "height": image.height,
                })
            written[split][label] = stop - start

    manifest = _write_records(out, rows, skipped, src)
    return PrepareReport(found, skipped, written, manifest, decoded)


def _unique_candidates(candidates: list[Candidate], src: Path, progress: bool
                       ) -> tuple[dict[str, list[Candidate]], list[Skipped]]:
    """Each label's readable, non-empty files, a duplicate (by sha256) kept only the first time; and the rest, why."""
    skipped: list[Skipped] = []
    seen: dict[str, Path] = {}
    pools: dict[str, list[Candidate]] = {label: [] for label in LABELS}
    for candidate in tqdm(candidates, desc="reading files", unit="file", disable=not progress):
        try:
            data = read_image_bytes(candidate.source)
        except ImageError as error:
            skipped.append(Skipped(candidate.source, str(error).removeprefix(f"{candidate.source}: ")))
            continue
        digest = hashlib.sha256(data).hexdigest()
        if not data:
            skipped.append(Skipped(candidate.source, "empty file"))
        elif digest in seen:
            skipped.append(Skipped(candidate.source, f"duplicate of {seen[digest].relative_to(src).as_posix()}"))
        else:
            seen[digest] = candidate.source
            pools[candidate.label].append(candidate)
    return pools, skipped


def _write_records(out: Path, rows: list[dict[str, object]], skipped: list[Skipped], src: Path) -> Path:
    """manifest.csv (every copied photo, in split, label, path order) and skipped.csv (every file left out, why)."""
    rows = sorted(rows, key=lambda row: (SPLITS.index(str(row["split"])), str(row["label"]), str(row["path"])))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=MANIFEST_FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = out / "manifest.csv"
    write_text_atomic(manifest, buffer.getvalue())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["path", "reason"])
    writer.writerows([s.source.relative_to(src).as_posix(), s.reason] for s in skipped)
    write_text_atomic(out / "skipped.csv", buffer.getvalue())
    return manifest


@dataclass(frozen=True)
class Split:
    paths: list[Path]
    labels: np.ndarray  # int class ids


def read_split(data_dir: str | Path, split: str) -> Split:
    """The files and labels of one split, from `manifest.csv` (or the folder tree if there is none)."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():  # the README's train lines before its `data prepare` line, or another checkout's path
        raise DataError(f"No dataset folder at {str(data_dir)!r}: make one with `dogcat data prepare PHOTOS {data_dir}`, "
                        f"or point at a prepared one (dogcat train: data.dir=PATH). Received: data_dir={str(data_dir)!r}")
    manifest = data_dir / "manifest.csv"
    if manifest.is_file():
        with manifest.open(newline="", encoding="utf-8") as handle:
            rows = [row for row in csv.DictReader(handle) if row["split"] == split]
        pairs = [(data_dir / row["path"], LABELS.index(row["label"])) for row in rows]
    else:
        root = data_dir / split if (data_dir / split).is_dir() else data_dir
        pairs = [(c.source, LABELS.index(c.label)) for c in find_candidates(root)]
    if not pairs:
        raise DataError(f"No images for split {split!r}. Received: data_dir={str(data_dir)!r}")
    return Split([p for p, _ in pairs], np.array([label for _, label in pairs], dtype=np.int32))


def expand_paths(patterns: list[str], skipped: list[Path] | None = None) -> tuple[list[str], list[str]]:
    """Files as given, folders searched recursively for images, globs expanded; returns (found,
    missing): `expand_in_order`'s paths, split by whether they need an answer from the decoder."""
    listed = expand_in_order(patterns, skipped)
    return [p for p, reason in listed if reason is None], [p for p, reason in listed if reason is not None]


NO_SUCH_FILE = "no such file"
NO_MATCH = "no file matches this pattern"


def expand_in_order(patterns: list[str], skipped: list[Path] | None = None) -> list[tuple[str, str | None]]:
    """(path, None) for each file to read, in the order given, and (pattern, why) where a pattern
    names nothing: NO_SUCH_FILE, or NO_MATCH for a glob that matches nothing.

    A path to read is every path the decoder must answer for, readable or not: a fifo, a broken
    link, a file without read permission, a folder named like an image, and a folder that cannot be
    listed each get their own one-line reason from it, instead of a traceback or silence.
    `skipped`, if given, receives the files inside folders left out for their extension (.heic, .pdf).
    A file named twice (`a.jpg` and `/abs/a.jpg`, a folder and a glob inside it, a link to it) is
    listed once, as first typed: it is one photo, classified once.
    """
    listed: list[tuple[str, str | None]] = []
    for pattern in patterns:
        path = Path(pattern)
        try:
            is_dir, exists = path.is_dir(), path.exists() or path.is_symlink()
        except OSError:  # e.g. a parent folder without search permission: the decoder says so
            listed.append((pattern, None))
            continue
        if is_dir:
            files, unreadable = list_image_files(path, skipped)
            listed.extend((str(p), None) for p in sorted(files + unreadable))
            if not files and not unreadable and path.suffix.lower() in IMAGE_SUFFIXES:
                listed.append((pattern, None))  # `x.jpg/` was surely meant as a photo: the decoder says it is a folder
        elif exists:
            listed.append((pattern, None))
        elif glob.has_magic(pattern):
            matches = sorted(glob_paths(pattern))
            listed.extend((m, None) for m in matches if not os.path.isdir(m) or Path(m).suffix.lower() in IMAGE_SUFFIXES)
            if not matches:
                listed.append((pattern, NO_MATCH))
        else:
            listed.append((pattern, NO_SUCH_FILE))
    seen: set[str] = set()
    return [(path, why) for path, why in listed
            if why is not None or ((key := os.path.realpath(path)) not in seen and not seen.add(key))]
