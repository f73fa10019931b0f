import csv
import json
import shutil
from pathlib import Path

import keras
import numpy as np
import pytest

from dogcat.artifacts import CLASS_NAMES, load_class_names
from dogcat.calibration import logits_of
from dogcat.config import ConfigError, load_config
from dogcat.data import read_split
from dogcat.dataset import ImageBatches, decode_all
from dogcat.inference import Classifier
from dogcat.model import build_model
from dogcat.preprocessing import preprocess
from dogcat.train import TrainError, train
from tests.helpers import TINY_SIZE

pytestmark = pytest.mark.slow


def _config(data_dir, *extra):
    return load_config(None, [
        f'data.dir="{data_dir}"', f"data.image_size={TINY_SIZE}", "model.weights=none", "model.dense_units=8",
        "train.epochs=2", "train.head_epochs=1", "train.batch_size=8", *extra,
    ])


@pytest.mark.parametrize("views", [0, 2])  # the whole network per step, and cached trunk activations
def test_training_writes_a_complete_run_folder(tmp_path, tiny_dataset, views):
    config = _config(tiny_dataset, f"train.views={views}")
    lines = []
    run = train(config, tmp_path / "run", log=lines.append, progress=False)
    assert {p.name for p in run.iterdir()} == {
        "dog_cat_classifier.keras", "class_names.pkl", "config.toml", "history.csv", "training.json",
        "training_curves.png", "best.weights.h5", "state.json", "dog_cat_classifier.onnx", "dog_cat_detector.npz",
        "SHA256SUMS",
    }
    assert load_class_names(run / "class_names.pkl") == CLASS_NAMES
    served = Classifier.from_path(run / "dog_cat_classifier.keras")  # the ONNX twin, and the detector tied to it
    assert served.runtime == "onnx"
    # An untrained tiny model's features read no ImageNet class: its detector is distance alone, and says so.
    assert "'neither' is judged on feature distance alone" in served.verdict_warning
    assert served.detector.info["train_photos"] == 16
    assert load_config(run / "config.toml") == config
    with (run / "history.csv").open() as handle:
        history = list(csv.DictReader(handle))
    assert [(row["epoch"], row["phase"]) for row in history] == [("1", "head"), ("2", "fine_tune")]
    metrics = json.loads((run / "training.json").read_text())
    assert metrics["epochs_run"] == 2
    assert metrics["data_manifest_sha256"]
    assert metrics["views"] == views
    assert sum(line.startswith("epoch ") for line in lines) == 2  # one progress line per epoch
    assert any(line.startswith("cached the frozen trunk's output for 2 views") for line in lines) == (views == 2)


def test_saved_model_predicts_exactly_like_the_best_weights(tmp_path, tiny_dataset):
    config = _config(tiny_dataset, "train.calibrate=false")
    run = train(config, tmp_path / "run", log=lambda _: None, progress=False)
    reference = build_model(config.model, TINY_SIZE)
    reference.load_weights(run / "best.weights.h5")
    images = preprocess(read_split(tiny_dataset, "train").paths, TINY_SIZE)
    served = Classifier.from_path(run / "dog_cat_classifier.keras", runtime="keras").predict_batch(images)
    np.testing.assert_array_equal(served, reference.predict_on_batch(images))
    assert json.loads((run / "training.json").read_text())["calibration"] is None


@pytest.mark.parametrize("views", [0, 2])
def test_saved_model_is_the_best_weights_with_the_recorded_temperature(tmp_path, tiny_dataset, varied_base_weights,
                                                                      monkeypatch, views):
    # A varied base (not weights=none, whose features are ~1e-9), so the last layer's kernel
    # carries the logits; and a set temperature, since 2 val photos rarely ask for T > 1 and a fold
    # of T = 1 is a no-op. That the fitted T lowers the loss: tests/test_calibration.py.
    monkeypatch.setattr("dogcat.train.fit_temperature", lambda logits, labels: 2.5)
    config = _config(tiny_dataset, f"train.views={views}", f'model.weights="{varied_base_weights}"')
    run = train(config, tmp_path / "run", log=lambda _: None, progress=False)
    calibration = json.loads((run / "training.json").read_text())["calibration"]
    assert calibration["temperature"] == 2.5
    reference = build_model(config.model, TINY_SIZE)
    reference.load_weights(run / "best.weights.h5")
    val = read_split(tiny_dataset, "val")
    images = preprocess(val.paths, TINY_SIZE)
    logits, _ = logits_of(reference, [(images, val.labels)])  # the expected answer, without fold_temperature
    kernel_part = logits - keras.ops.convert_to_numpy(reference.get_layer("probabilities").bias)
    assert np.abs(kernel_part[:, 0] - kernel_part[:, 1]).min() > 1e-2, "the kernel should matter, or a bias-only fold passes"
    served = Classifier.from_path(run / "dog_cat_classifier.keras", runtime="keras").predict_batch(images)
    expected = keras.ops.convert_to_numpy(keras.ops.softmax(logits / 2.5))
    np.testing.assert_allclose(served, expected, rtol=1e-5, atol=1e-6)
    rows = np.arange(len(val.labels))
    assert -np.mean(np.log(served[rows, val.labels])) == pytest.approx(calibration["val_loss_after"], abs=1e-5)
    before = keras.ops.convert_to_numpy(keras.ops.softmax(logits))
    assert -np.mean(np.log(before[rows, val.labels])) == pytest.approx(calibration["val_loss_before"], abs=1e-5)


@pytest.mark.parametrize("views", [0, 2])
def test_an_interrupted_run_resumes_after_its_last_epoch(tmp_path, tiny_dataset, views):
    config = _config(tiny_dataset, "train.epochs=3", f"train.views={views}")

    def interrupt_after_second_epoch(line):  # Ctrl-C in the fine-tuning phase
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "run", log=interrupt_after_second_epoch, progress=False)
    assert not (tmp_path / "run" / "dog_cat_classifier.keras").exists()
    lines = []
    train(config, tmp_path / "run", log=lines.append, progress=False)
    assert lines[0] == f"resuming {tmp_path / 'run'} after epoch 2"
    assert [line.split()[1] for line in lines if line.startswith("epoch ")] == ["3/3"]
    with (tmp_path / "run" / "history.csv").open() as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1", "2", "3"]
    with pytest.raises(TrainError, match="already finished"):
        train(config, tmp_path / "run", log=lambda _: None, progress=False)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(tmp_path, tiny_dataset):
    """Weights, Adam moments, batch order, views and dropout masks all carry over (a crash mid-epoch:
    test_a_run_killed_mid_epoch_resumes_to_the_same_weights, below)."""
    config = _config(tiny_dataset, "train.epochs=3", "train.early_stopping_patience=0")

    def interrupt_after_second_epoch(line):
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt

    straight = train(config, tmp_path / "straight", log=lambda _: None, progress=False)
    with pytest.raises(KeyboardInterrupt):
        train(config, tmp_path / "resumed", log=interrupt_after_second_epoch, progress=False)
    resumed = train(config, tmp_path / "resumed", log=lambda _: None, progress=False)
    for key in ("loss", "val_loss"):  # epoch 3 trained the same way
        assert _history(resumed)[2][key] == pytest.approx(_history(straight)[2][key], rel=1e-5)
    for expected, actual in zip(_weights(straight), _weights(resumed), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def _history(run):
    with (run / "history.csv").open() as handle:
        return [{k: float(v) for k, v in row.items() if k != "phase"} for row in csv.DictReader(handle)]


def _weights(run):
    return Classifier.from_path(run / "dog_cat_classifier.keras", runtime="keras").runner.model.get_weights()


def test_negative_views_are_refused(tmp_path, tiny_dataset):
    config = _config(tiny_dataset)
    config.train.views = -1  # a Config built in Python, not through load_config
    with pytest.raises(ConfigError, match=r"Received: train.views=-1"):
        train(config, tmp_path / "run", log=lambda _: None, progress=False)
    assert not (tmp_path / "run").exists()


def test_resuming_with_another_config_is_refused(tmp_path, tiny_dataset):
    def stop(line):
        if line.startswith("epoch 1/"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_config(tiny_dataset), tmp_path / "run", log=stop, progress=False)
    with pytest.raises(TrainError, match="different config"):
        train(_config(tiny_dataset, "train.epochs=5"), tmp_path / "run", log=lambda _: None, progress=False)


def test_early_stopping_ends_a_run_that_stopped_improving(tmp_path, tiny_dataset):
    # a learning rate too small to move a float32 weight: val_loss never improves after epoch 1
    config = _config(tiny_dataset, "train.epochs=5", "train.head_epochs=0", "train.fine_tune_learning_rate=1e-30",
                     "train.early_stopping_patience=2")
    lines = []
    run = train(config, tmp_path / "run", log=lines.append, progress=False)
    assert json.loads((run / "training.json").read_text())["epochs_run"] == 3
    assert any(line.startswith("early stopping") for line in lines)


def test_training_tensor_equals_serving_tensor(tiny_dataset):
    """For the same files, the batch fit() sees (augmentation is inside the model) equals predict's input."""
    split = read_split(tiny_dataset, "train")
    batches = ImageBatches(decode_all(split.paths, TINY_SIZE, progress=False), split.labels, batch_size=4)
    training_images = np.concatenate([batches[i][0] for i in range(len(batches))])
    serving_images = preprocess(split.paths, TINY_SIZE)
    assert training_images.dtype == serving_images.dtype == np.float32
    np.testing.assert_array_equal(training_images, serving_images)


# --- data it cannot learn from, failed writes, a run killed mid-epoch ------------------------------


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
