"""Hostile input that must never cost a row: link loops, very deep trees, damaged or extreme model
settings (each test here failed before its fix)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dogcat.data import expand_paths, list_image_files


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


def test_a_model_config_out_of_range_is_said_and_the_defaults_serve(tmp_path, tiny_model_dir, capsys):
    """`predict.batch_size = 1e8` beside a model took predict to 22 GB; an invalid value was dropped silently."""
    import shutil

    from dogcat.cli import main
    from dogcat.inference import Classifier

    model = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model)
    (model / "config.toml").write_text("[predict]\nbatch_size = 100000000\n")
    classifier = Classifier.from_path(model, runtime="keras")
    assert classifier.batch_size == 32
    assert any("predict.batch_size must be in [1, 128]" in w for w in classifier.warnings)
    photo = tmp_path / "cat.png"
    from tests.imagegen import write_pet

    write_pet(photo, "cat", 0)
    assert main(["predict", str(photo), "--model", str(model), "--runtime", "keras", "--json"]) == 0
    err = capsys.readouterr().err
    assert "config.toml beside the model is not used (predict.batch_size must be in [1, 128]" in err


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory, tiny_model_dir):
    """The tiny model with one NaN in its last layer's kernel, saved as a run saves it, plus a good ONNX twin made
    before the damage then damaged the same way (as an export made before the check would be)."""
    import shutil

    import keras
    import numpy as np
    import onnx
    from onnx import numpy_helper

    from dogcat.export import export_onnx

    folder = tmp_path_factory.mktemp("nan_model")
    for name in ("dog_cat_classifier.keras", "class_names.pkl"):
        shutil.copy(tiny_model_dir / name, folder / name)
    model = keras.saving.load_model(folder / "dog_cat_classifier.keras")
    layer = model.layers[-1]
    kernel, bias = layer.get_weights()
    kernel[0, 0] = np.nan
    layer.set_weights([kernel, bias])
    model.save(folder / "dog_cat_classifier.keras")
    good = tmp_path_factory.mktemp("good_twin")
    for name in ("dog_cat_classifier.keras", "class_names.pkl"):
        shutil.copy(tiny_model_dir / name, good / name)
    export_onnx(good / "dog_cat_classifier.keras")
    graph = onnx.load(good / "dog_cat_classifier.onnx")
    for initializer in graph.graph.initializer:  # every weight NaN: whichever is the kernel
        array = numpy_helper.to_array(initializer)
        if array.dtype == np.float32 and array.size > 1:
            initializer.CopyFrom(numpy_helper.from_array(np.full_like(array, np.nan), initializer.name))
    from dogcat.artifacts import file_sha256

    for prop in graph.metadata_props:  # tied to the damaged .keras, as its own export would be
        if prop.key == "dogcat_keras_sha256":
            prop.value = file_sha256(folder / "dog_cat_classifier.keras")
    onnx.save(graph, folder / "dog_cat_classifier.onnx")
    return folder


@pytest.mark.parametrize("runtime", ["keras", "onnx", "auto"])
def test_a_model_with_nan_weights_is_refused_in_one_line(nan_model, tmp_path, capsys, runtime):
    """A NaN model was served: `"cat": NaN` (invalid JSON), "unsure"/"cat" verdicts."""
    from dogcat.cli import main
    from tests.imagegen import write_pet

    photo = write_pet(tmp_path / "cat.jpg", "cat", 0)
    code = main(["predict", str(photo), "--model", str(nan_model), "--runtime", runtime, "--json"])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1
    assert "non-finite" in captured.err


def test_export_refuses_a_model_with_nan_weights(nan_model, capsys):
    from dogcat.cli import main

    assert main(["export", str(nan_model / "dog_cat_classifier.keras")]) == 2
    err = capsys.readouterr().err
    assert "non-finite weights" in err
    assert len(err.strip().splitlines()) == 1


def test_a_non_finite_probability_is_an_error_row_and_json_stays_strict(tiny_model_dir, tmp_path):
    """Per row, whatever the runtime: weights damaged after loading (or a runtime's overflow) never become a verdict."""
    import json

    import keras
    import numpy as np

    from dogcat.artifacts import load_class_names, strict_json
    from dogcat.inference import NON_FINITE, Classifier
    from tests.imagegen import write_pet

    model = keras.saving.load_model(tiny_model_dir / "dog_cat_classifier.keras")
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.full_like(bias, np.inf)])
    classifier = Classifier(model, load_class_names(tiny_model_dir / "class_names.pkl"))
    [prediction] = classifier.predict([write_pet(tmp_path / "cat.jpg", "cat", 0)])
    assert prediction.error == NON_FINITE
    assert prediction.verdict is None
    assert json.loads(strict_json({"p": float("nan"), "q": [float("inf"), 1.0]})) == {"p": None, "q": [None, 1.0]}


def test_the_same_photo_by_relative_and_absolute_path_is_listed_once(tmp_path, monkeypatch):
    """`photos` then `/abs/photos`: each photo was classified twice, and a rerun with the other spelling redid all."""
    from dogcat.batch import list_files

    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "cat.jpg").write_bytes(b"x")
    (tmp_path / "link.jpg").symlink_to(tmp_path / "photos" / "cat.jpg")
    monkeypatch.chdir(tmp_path)
    assert expand_paths(["photos", f"{tmp_path}/photos/cat.jpg", "./photos/*.jpg", "link.jpg"]) == (["photos/cat.jpg"], [])
    assert list_files(["photos/cat.jpg"]) == list_files([f"{tmp_path}/photos"]) == [f"{tmp_path}/photos/cat.jpg"]


@pytest.fixture
def latin1_folder(tmp_path) -> Path:
    """A photo named in Latin-1 (`caf\\xe9.jpg`, as in old zips), beside one named in UTF-8."""
    from tests.imagegen import write_pet

    folder = tmp_path / "photos"
    write_pet(folder / "chat-é.jpg", "cat", 0)
    write_pet(os.fsdecode(bytes(folder) + b"/caf\xe9.jpg"), "cat", 1)
    return folder


@pytest.mark.parametrize("form", ["--csv", "--json", "table"])
def test_a_file_name_that_is_not_utf8_is_written_as_printable_utf8(latin1_folder, tiny_model_dir, tmp_path, capsys, form):
    """The name's bytes reached CSV (pandas could not read it), lone surrogates reached JSON, and a strict
    UTF-8 stdout raised; --explain raised in `overlay_filename` and lost the rows."""
    import io
    import json

    import pandas as pd

    from dogcat.cli import main

    explain = tmp_path / "overlays"
    args = ["predict", str(latin1_folder), "--model", str(tiny_model_dir), "--runtime", "keras", "--explain", str(explain)]
    assert main(args + ([] if form == "table" else [form])) == 0
    out = capsys.readouterr().out
    out.encode("utf-8")  # strictly: a strict UTF-8 stdout takes it
    shown = f"{latin1_folder}/caf\\xe9.jpg"
    if form == "--csv":
        rows = pd.read_csv(io.BytesIO(out.encode("utf-8")), encoding="utf-8")
        assert sorted(rows["path"]) == sorted([shown, f"{latin1_folder}/chat-é.jpg"])
    elif form == "--json":
        rows = [json.loads(line) for line in out.splitlines()]
        assert sorted(row["path"] for row in rows) == sorted([shown, f"{latin1_folder}/chat-é.jpg"])
        assert all(row["explanation"] for row in rows)
    else:
        assert shown in out
    assert len(list(explain.glob("*.png"))) == 2


def test_explain_into_a_folder_that_cannot_be_written_is_one_line_before_any_work(tiny_model_dir, tmp_path, capsys):
    from dogcat.cli import main
    from tests.imagegen import write_pet

    photo = write_pet(tmp_path / "cat.jpg", "cat", 0)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    if os.access(locked, os.W_OK):  # root writes anywhere, except in what the kernel makes up
        locked = Path("/proc/1")
    try:
        assert main(["predict", str(photo), "--model", str(tiny_model_dir), "--explain", str(locked)]) == 2
    finally:
        (tmp_path / "locked").chmod(0o700)
    err = capsys.readouterr().err
    assert "Cannot write overlays into the --explain folder" in err
    assert len(err.strip().splitlines()) == 1


def test_overlays_that_stop_being_writable_mid_run_lose_no_row(tiny_model_dir, tmp_path, capsys, monkeypatch):
    """A disk that fills up mid-run: a traceback lost every row after it."""
    import json

    import dogcat.explain
    from dogcat.cli import main
    from tests.imagegen import write_pet

    photos = [str(write_pet(tmp_path / f"cat{i}.jpg", "cat", i)) for i in range(3)]

    def full(*_, **__):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(dogcat.explain, "write_overlays", full)
    assert main(["predict", *photos, "--model", str(tiny_model_dir), "--runtime", "keras", "--json",
                 "--explain", str(tmp_path / "overlays")]) == 0
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [row["path"] for row in rows] == photos
    assert all(row["explanation"] is None and row["verdict"] for row in rows)
    assert captured.err.count("No space left on device") == 1
