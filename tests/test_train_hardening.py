"""Training refuses data it cannot learn from, survives failed writes, and resumes to the same weights."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from dogcat.config import load_config
from dogcat.train import TrainError, train
from tests.helpers import TINY_SIZE

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


def test_a_full_disk_is_one_line_naming_the_file_and_the_run_resumes(tmp_path, tiny_dataset, monkeypatch, capsys):
    import errno

    import keras

    from dogcat.cli import main

    real_save_weights = keras.Model.save_weights
    checkpoints, best_after_epoch_1, names = [], [], []

    def disk_fills_in_epoch_2(self, filepath, *args, **kwargs):
        names.append(Path(filepath).name.split(".", 2)[-1])
        if len(names) == 3:  # epoch 2's first write: best.weights.h5 still holds epoch 1
            best_after_epoch_1.append((run / "best.weights.h5").read_bytes())
        if str(filepath).endswith("checkpoint.weights.h5"):
            checkpoints.append(filepath)
            if len(checkpoints) == 2:  # epoch 2's checkpoint, after its best.weights.h5 was written
                real_save_weights(self, filepath, *args, **kwargs)  # a partial file, as a full disk leaves
                raise OSError(errno.ENOSPC, "No space left on device")
        return real_save_weights(self, filepath, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "save_weights", disk_fills_in_epoch_2)
    run = tmp_path / "run"
    overrides = [f'data.dir="{tiny_dataset}"', f"data.image_size={TINY_SIZE}", "model.weights=none",
                 "model.dense_units=8", "train.epochs=3", "train.head_epochs=1", "train.batch_size=8"]
    assert main(["train", "--run-dir", str(run), *overrides]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert names == ["best.weights.h5", "checkpoint.weights.h5"] * 2  # epoch 2 improved: its best was written
    checkpoint = run / "checkpoint.weights.h5"
    assert err.strip().splitlines()[-1] == (
        f"dogcat: error: Could not write {checkpoint}: No space left on device (errno 28). Received: path={str(checkpoint)!r}"
    )
    # Epoch 2's files were not half-committed: best, state and history all still say epoch 1.
    assert (run / "best.weights.h5").read_bytes() == best_after_epoch_1[0]
    assert json.loads((run / "state.json").read_text())["epoch"] == 1
    assert [row["epoch"] for row in csv.DictReader((run / "history.csv").open())] == ["1"]
    assert not [p.name for p in run.iterdir() if p.name.startswith(".tmp-")]

    monkeypatch.setattr(keras.Model, "save_weights", real_save_weights)  # space freed
    assert main(["train", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert f"resuming {run} after epoch 1" in out
    assert [line.split()[1] for line in out.splitlines() if line.startswith("epoch ")] == ["2/3", "3/3"]
    assert (run / "dog_cat_classifier.keras").is_file()


def test_an_unwritable_run_folder_is_one_line(tmp_path, tiny_dataset):
    from dogcat.artifacts import ArtifactWriteError

    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(ArtifactWriteError, match=r"^Could not write .*config\.toml: .*\(errno \d+\)\. Received: path="):
        train(_config(tiny_dataset), blocker / "run", log=lambda _: None, progress=False)


class _Crash(Exception):
    pass


@pytest.mark.parametrize("views", [2, 0])  # cached trunk activations (the default), and the whole network
def test_a_run_killed_mid_epoch_resumes_to_the_same_weights(tmp_path, tiny_dataset, monkeypatch, views):
    """Batch order (fit's own shuffle), dropout masks and augmentation all follow (seed, epoch), so
    redoing epoch 2 after a crash in its middle ends where the uninterrupted run does."""
    from dogcat.dataset import ImageBatches
    from dogcat.features import CachedViews
    from dogcat.inference import Classifier

    # Small batches, so that batch order matters; dropout and augmentation on (the defaults).
    config = _config(tiny_dataset, "train.epochs=3", "train.batch_size=2", "train.early_stopping_patience=0",
                     f"train.views={views}")
    straight = train(config, tmp_path / "straight", log=lambda _: None, progress=False)

    batches = CachedViews if views else ImageBatches
    real_getitem = batches.__getitem__
    served = []

    def crash_in_epoch_2(self, index):
        served.append(self.shuffle)
        if sum(served) == 15:  # epoch 1 takes 8 training batches (and Keras peeks at 2): this is mid epoch 2
            raise _Crash("killed")
        return real_getitem(self, index)

    monkeypatch.setattr(batches, "__getitem__", crash_in_epoch_2)
    with pytest.raises(Exception, match="killed"):
        train(config, tmp_path / "resumed", log=lambda _: None, progress=False)
    assert json.loads((tmp_path / "resumed" / "state.json").read_text())["epoch"] == 1
    monkeypatch.setattr(batches, "__getitem__", real_getitem)
    resumed = train(config, tmp_path / "resumed", log=lambda _: None, progress=False)

    def weights(run):
        return Classifier.from_path(run / "dog_cat_classifier.keras", runtime="keras").runner.model.get_weights()

    for expected, actual in zip(weights(straight), weights(resumed), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)
