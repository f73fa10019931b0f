"""Training refuses data it cannot learn from, survives failed writes, and resumes to the same weights."""

import csv
import shutil

import pytest

from dogcat.config import load_config
from dogcat.train import TrainError, train
from tests.conftest import TINY_SIZE

pytestmark = pytest.mark.slow


def _config(data_dir, *extra):
    return load_config(None, [
        f'data.dir="{data_dir}"', f"data.image_size={TINY_SIZE}", "model.weights=none", "model.dense_units=8",
        "train.epochs=2", "train.head_epochs=1", "train.batch_size=8", *extra,
    ])


def _without(tiny_dataset, tmp_path, split, label):
    """A copy of the tiny dataset whose `split` has no `label` images (manifest and folders)."""
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    with (data / "manifest.csv").open(newline="") as handle:
        reader = csv.DictReader(handle)
        fields, rows = reader.fieldnames, list(reader)
    kept = [row for row in rows if not (row["split"] == split and row["label"] == label)]
    assert len(kept) < len(rows)
    with (data / "manifest.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(kept)
    shutil.rmtree(data / split / label)
    return data


@pytest.mark.parametrize(("split", "label"), [("train", "dog"), ("val", "cat"), ("test", "dog")])
def test_a_split_missing_a_class_is_refused_before_anything_is_written(tmp_path, tiny_dataset, split, label):
    data = _without(tiny_dataset, tmp_path, split, label)
    with pytest.raises(TrainError) as error:
        train(_config(data), tmp_path / "run", log=lambda _: None, progress=False)
    message = str(error.value)
    assert f"The {split} split has no {label} images" in message
    assert message.endswith(f"Received: data.dir={str(data)!r}")
    assert "\n" not in message
    assert not (tmp_path / "run").exists()


def test_a_folder_of_cats_only_is_refused(tmp_path, tiny_dataset):
    data = tmp_path / "cats"
    for split in ("train", "val", "test"):
        shutil.copytree(tiny_dataset / split / "cat", data / split / "cat")
    with pytest.raises(TrainError, match=r"The train split has no dog images"):
        train(_config(data), tmp_path / "run", log=lambda _: None, progress=False)
