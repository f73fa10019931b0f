"""dogcat.data: `prepare` checks, samples, splits and copies a folder of photos; `read_split` reads it back."""

from __future__ import annotations

import csv
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from dogcat.data import (
    LABELS,
    MANIFEST_FIELDS,
    SPLITS,
    DataError,
    expand_paths,
    list_image_files,
    prepare,
    read_split,
)
from tests.imagegen import encode, make_pet, write_pet

N_GOOD = 12  # usable images per class in every generated source
BAD = {"cat.900.jpg", "dog.901.jpg", "cat.902.jpg", "cat.903.jpg", "dog.904.jpg"}


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def files_under(folder: Path) -> set[str]:
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def kaggle(tmp_path) -> Path:
    """Kaggle flat layout, 12 good images per class, plus the kinds of bad file real downloads have."""
    src = tmp_path / "kaggle"
    for label in LABELS:
        for i in range(N_GOOD):
            write_pet(src / f"{label}.{i}.jpg", label, i)
    (src / "cat.900.jpg").touch()
    photo = encode(make_pet("dog", 901, (160, 120)), "JPEG", quality=95)
    (src / "dog.901.jpg").write_bytes(photo[: len(photo) // 2])
    (src / "cat.902.jpg").write_text("this is not a picture of a cat\n")
    shutil.copyfile(src / "cat.3.jpg", src / "cat.903.jpg")
    shutil.copyfile(src / "cat.5.jpg", src / "dog.904.jpg")  # the same bytes filed under the other class
    (src / "notes.txt").write_text("not an image suffix: ignored")
    return src


def check_dataset(out: Path, per_class: int) -> list[dict[str, str]]:
    """The invariants of any prepared dataset; returns the manifest rows."""
    manifest = out / "manifest.csv"
    assert manifest.read_text(encoding="utf-8").split("\n", 1)[0] == "path,label,split,sha256,width,height"
    assert MANIFEST_FIELDS == ("path", "label", "split", "sha256", "width", "height")
    rows = read_rows(manifest)
    assert len(rows) == per_class * len(LABELS)
    for row in rows:
        path = Path(row["path"])
        assert path.parts[:2] == (row["split"], row["label"])
        assert (out / path).is_file()
        assert sha256(out / path) == row["sha256"]
    assert len({row["sha256"] for row in rows}) == len(rows), "an image is in the dataset twice"
    assert len({row["path"] for row in rows}) == len(rows)
    assert files_under(out) == {row["path"] for row in rows} | {"manifest.csv", "skipped.csv"}
    assert Counter(row["label"] for row in rows) == dict.fromkeys(LABELS, per_class)
    return rows


# --- the Kaggle layout, with bad files ----------------------------------------------------


def test_prepare_kaggle_layout_skips_bad_files(kaggle, tmp_path):
    out = tmp_path / "out"
    report = prepare(kaggle, out, per_class=N_GOOD, seed=1, progress=False)  # every good one: every file is checked

    assert report.found == {"cat": N_GOOD + 3, "dog": N_GOOD + 2}
    reasons = {s.source.name: s.reason for s in report.skipped}
    assert set(reasons) == BAD
    assert reasons["cat.900.jpg"] == "empty file"
    assert "truncated" in reasons["dog.901.jpg"]
    assert reasons["cat.902.jpg"].startswith("not an image")
    assert reasons["cat.903.jpg"].startswith("duplicate of ")
    assert reasons["cat.903.jpg"] == "duplicate of cat.3.jpg"
    assert reasons["dog.904.jpg"].startswith("duplicate of ")
    assert reasons["dog.904.jpg"] == "duplicate of cat.5.jpg"
    for reason in reasons.values():
        assert "\n" not in reason
        assert not reason.startswith("image:")

    skipped_csv = read_rows(out / "skipped.csv")
    assert [(r["path"], r["reason"]) for r in skipped_csv] == [(s.source.name, s.reason) for s in report.skipped]

    rows = check_dataset(out, per_class=N_GOOD)
    assert report.manifest == out / "manifest.csv"
    for row in rows:
        name = Path(row["path"]).name
        assert name not in BAD
        assert name.split(".")[0] == row["label"]
        assert (out / row["path"]).read_bytes() == (kaggle / name).read_bytes()  # copied byte for byte
        assert (row["width"], row["height"]) == ("64", "48")
    assert "skipped: 5" in report.summary()


def test_prepare_decodes_only_what_the_sample_needs(kaggle, tmp_path, monkeypatch):
    from dogcat import data

    decoded = []
    check = data.check_image
    monkeypatch.setattr(data, "check_image", lambda candidate: decoded.append(candidate.source) or check(candidate))
    report = prepare(kaggle, tmp_path / "out", per_class=3, seed=0, progress=False)
    check_dataset(tmp_path / "out", per_class=3)
    undecodable = {"cat.902.jpg", "dog.901.jpg"}  # the others are found by reading and hashing
    assert len(decoded) - len({p.name for p in decoded} & undecodable) == 3 * len(LABELS)
    assert report.decoded == len(decoded)
    assert f"decoded: {len(decoded)} (as many as the sample needed)" in report.summary()
    assert {s.source.name for s in report.skipped} >= {"cat.900.jpg", "cat.903.jpg", "dog.904.jpg"}


@pytest.mark.parametrize(
    ("per_class", "fractions", "expected"),
    [
        (10, (0.8, 0.1, 0.1), (8, 1, 1)),
        (10, (0.6, 0.2, 0.2), (6, 2, 2)),
        (12, (0.5, 0.25, 0.25), (6, 3, 3)),
        (11, (0.7, 0.2, 0.1), (8, 2, 1)),
    ],
)
def test_split_counts_follow_the_fractions_per_class(kaggle, tmp_path, per_class, fractions, expected):
    out = tmp_path / "out"
    report = prepare(kaggle, out, per_class=per_class, fractions=fractions, seed=0, progress=False)
    rows = check_dataset(out, per_class)
    counts = Counter((row["split"], row["label"]) for row in rows)
    for split, n in zip(SPLITS, expected, strict=True):
        for label in LABELS:
            assert counts[split, label] == n
            assert report.written[split][label] == n


@pytest.mark.parametrize("per_class", [3, 4, 5])
def test_every_split_gets_at_least_one_image_per_class(kaggle, tmp_path, per_class):
    # per_class >= 3 is enforced so that train, val and test can each hold an image
    out = tmp_path / "out"
    report = prepare(kaggle, out, per_class=per_class, seed=0, progress=False)
    check_dataset(out, per_class)
    for split in SPLITS:
        assert min(report.written[split].values()) >= 1, report.written
        assert len(read_split(out, split).paths) >= len(LABELS)


def test_same_seed_gives_a_byte_identical_manifest(kaggle, tmp_path):
    first = prepare(kaggle, tmp_path / "a", per_class=10, seed=3, progress=False)
    second = prepare(kaggle, tmp_path / "b", per_class=10, seed=3, progress=False)
    assert first.manifest.read_bytes() == second.manifest.read_bytes()
    assert (tmp_path / "a/skipped.csv").read_bytes() == (tmp_path / "b/skipped.csv").read_bytes()
    assert files_under(tmp_path / "a") == files_under(tmp_path / "b")


def test_a_different_seed_gives_a_different_selection(kaggle, tmp_path):
    def selection(seed):
        prepare(kaggle, tmp_path / f"seed{seed}", per_class=10, seed=seed, progress=False)
        return {(row["split"], row["path"]) for row in read_rows(tmp_path / f"seed{seed}/manifest.csv")}

    assert selection(3) != selection(4)


def test_rerun_into_the_same_folder_replaces_the_old_dataset(kaggle, tmp_path):
    out = tmp_path / "out"
    prepare(kaggle, out, per_class=10, seed=3, progress=False)
    prepare(kaggle, out, per_class=6, seed=4, progress=False)
    check_dataset(out, per_class=6)  # no stale files from the first run


# --- other layouts ------------------------------------------------------------------------


def test_petimages_layout(tmp_path):
    src = tmp_path / "kagglecatsanddogs" / "PetImages"
    origin = {}
    for label, folder in (("cat", "Cat"), ("dog", "Dog")):
        for i in range(N_GOOD):
            path = write_pet(src / folder / f"{i}.jpg", label, 100 + i)
            origin[sha256(path)] = label
        (src / folder / "Thumbs.db").write_bytes(b"\0\1 not an image")
    report = prepare(tmp_path / "kagglecatsanddogs", tmp_path / "out", per_class=10, seed=0, progress=False)
    assert report.found == {"cat": N_GOOD, "dog": N_GOOD}
    assert report.skipped == []
    rows = check_dataset(tmp_path / "out", per_class=10)
    for row in rows:
        assert origin[row["sha256"]] == row["label"]
    names = {label: {Path(r["path"]).name for r in rows if r["label"] == label} for label in LABELS}
    assert names["cat"] & names["dog"], "expected the same numeric names in both classes"


def test_class_subfolders_with_clashing_file_names(tmp_path):
    src = tmp_path / "photos"
    origin = {}
    for i in range(N_GOOD):
        # the same names in both classes, and twice within the cats (two sub-folders)
        cat = write_pet(src / "Cats" / ("indoor" if i % 2 else "outdoor") / f"img{i // 2}.jpg", "cat", 200 + i)
        dog = write_pet(src / "dogs" / f"img{i}.jpg", "dog", 200 + i)
        origin[sha256(cat)], origin[sha256(dog)] = "cat", "dog"
    out = tmp_path / "out"
    prepare(src, out, per_class=N_GOOD, seed=0, progress=False)  # every image is chosen
    rows = check_dataset(out, per_class=N_GOOD)
    assert {row["sha256"] for row in rows} == set(origin)
    for row in rows:
        assert origin[row["sha256"]] == row["label"]
        assert Path(row["path"]).suffix == ".jpg"


# --- errors -------------------------------------------------------------------------------


def test_more_per_class_than_available(kaggle, tmp_path):
    with pytest.raises(DataError, match=r"Only 12 usable cat images") as info:
        prepare(kaggle, tmp_path / "out", per_class=13, progress=False)
    assert "13" in str(info.value)
    assert "\n" not in str(info.value)


def test_a_failed_rerun_leaves_the_existing_dataset_intact(kaggle, tmp_path):
    out = tmp_path / "out"
    prepare(kaggle, out, per_class=10, seed=0, progress=False)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(DataError, match="usable"):
        prepare(kaggle, out, per_class=50, seed=0, progress=False)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    check_dataset(out, per_class=10)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_class": 2}, "per_class must be at least 3"),
        ({"fractions": (0.8, 0.2, 0.0)}, "fractions"),
        ({"fractions": (0.8, 0.1, 0.2)}, "fractions"),
        ({"fractions": (0.5, 0.5)}, "fractions"),
    ],
)
def test_bad_arguments(kaggle, tmp_path, kwargs, match):
    with pytest.raises(DataError, match=match):
        prepare(kaggle, tmp_path / "out", progress=False, **{"per_class": 10, **kwargs})
    assert not (tmp_path / "out").exists()


def test_missing_or_unlabelled_source(tmp_path):
    with pytest.raises(DataError, match="not found"):
        prepare(tmp_path / "nowhere", tmp_path / "out", per_class=10, progress=False)
    write_pet(tmp_path / "mixed" / "pet1.jpg", "cat", 0)
    with pytest.raises(DataError, match="No labelled images"):
        prepare(tmp_path / "mixed", tmp_path / "out", per_class=10, progress=False)


def test_refuses_to_overwrite_a_folder_that_is_not_a_dataset(kaggle, tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    (out / "train" / "precious.txt").write_text("keep me")
    with pytest.raises(DataError, match="refusing to overwrite"):
        prepare(kaggle, out, per_class=10, progress=False)
    assert (out / "train" / "precious.txt").read_text() == "keep me"


# --- read_split ---------------------------------------------------------------------------


def test_read_split_returns_the_manifest_paths_and_labels(kaggle, tmp_path):
    out = tmp_path / "out"
    prepare(kaggle, out, per_class=10, seed=0, progress=False)
    rows = read_rows(out / "manifest.csv")
    for split in SPLITS:
        data = read_split(out, split)
        expected = [row for row in rows if row["split"] == split]
        assert data.paths == [out / row["path"] for row in expected]
        assert data.labels.dtype == np.int32
        assert data.labels.tolist() == [LABELS.index(row["label"]) for row in expected]
        assert all(path.is_file() for path in data.paths)
    assert read_split(out, "train").labels.tolist().count(0) == 8
    with pytest.raises(DataError, match="No images for split 'nope'"):
        read_split(out, "nope")


def test_read_split_without_a_manifest_uses_the_folder_tree(kaggle, tmp_path):
    out = tmp_path / "out"
    prepare(kaggle, out, per_class=10, seed=0, progress=False)
    from_manifest = read_split(out, "train")
    (out / "manifest.csv").unlink()
    from_tree = read_split(out, "train")
    assert sorted(zip(from_tree.paths, from_tree.labels.tolist(), strict=True)) == sorted(
        zip(from_manifest.paths, from_manifest.labels.tolist(), strict=True)
    )


# --- hostile folders: link loops and very deep trees never cost a photo -----------------------------


def test_a_glob_does_not_follow_links_to_folders(tmp_path):
    """`**` entered `self -> .` 40 times over (one photo, 41 paths; two such links: 2^40)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "self").symlink_to(".")
    found, missing = expand_paths([f"{tmp_path}/**/*.jpg"])
    assert found == [f"{tmp_path}/a/cat.jpg"]
    assert missing == []


def test_a_glob_over_two_links_to_the_same_folder_finishes(tmp_path):
    (tmp_path / "cat.jpg").write_bytes(b"x")
    (tmp_path / "one").symlink_to(".")
    (tmp_path / "two").symlink_to(".")
    # In a child with a deadline: before the fix this listed 2^40 paths (minutes, then memory).
    code = "from dogcat.data import expand_paths; print(expand_paths(['**/*.jpg']))"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=60,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert result.stdout.strip() == "(['cat.jpg'], [])", result.stderr[-500:]
    assert time.monotonic() - started < 30


def test_a_very_deep_folder_is_listed(tmp_path):
    """Python 3.11's os.walk recurses: 1,500 nested folders raised RecursionError and listed nothing."""
    deep = tmp_path
    for _ in range(1500):  # os.makedirs recurses too
        deep = deep / "d"
        deep.mkdir()
    (deep / "cat.jpg").write_bytes(b"x")
    try:
        files, unreadable = list_image_files(tmp_path)
        assert files == [deep / "cat.jpg"]
        assert unreadable == []
    finally:  # by hand, bottom up: shutil.rmtree (pytest's clean-up) recurses as well
        (deep / "cat.jpg").unlink()
        while deep != tmp_path:
            deep.rmdir()
            deep = deep.parent


def test_the_same_photo_by_relative_and_absolute_path_is_listed_once(tmp_path, monkeypatch):
    """`photos` then `/abs/photos`: each photo was classified twice, and a rerun with the other spelling redid all."""
    from dogcat.batch import list_files

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "photos" / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    assert expand_paths(["photos", f"{tmp_path}/photos/cat.jpg", "./photos/*.jpg", "link.jpg"]) == (["photos/cat.jpg"], [])
    assert list_files(["photos/cat.jpg"]) == list_files([f"{tmp_path}/photos"]) == [f"{tmp_path}/photos/cat.jpg"]
