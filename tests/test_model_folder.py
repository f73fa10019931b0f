"""The model folder's one owner (dogcat.model_folder): a copy made from its lists answers as the original does."""

from __future__ import annotations

import re
import shutil
import sys

import pytest

from dogcat.artifacts import MODEL_FILENAME
from dogcat.inference import Classifier
from dogcat.model_folder import ModelFolder
from tests.helpers import REPO, SHIPPED

CAT = REPO / "demos" / "examples" / "cat-chelsea.jpg"
DOG = REPO / "demos" / "examples" / "dog-darknet.jpg"  # p(dog) 0.72: a dog at the shipped 0.6, unsure at the default 0.8
THRESHOLD = 0.9999  # the issue's own: a copy that drops config.toml serves the default 0.8 instead

_opened: list[str] | None = None


def _record_opens(event: str, args: tuple) -> None:
    if _opened is not None and event == "open" and isinstance(args[0], str | bytes):
        _opened.append(str(args[0]))


sys.addaudithook(_record_opens)  # hooks cannot be removed: this one records only inside `_files_opened`


def _files_opened(function) -> set[str]:
    """The names of the files Python code opened while `function` ran (ONNX Runtime's own reads are not seen)."""
    global _opened
    _opened = []
    try:
        function()
        return set(_opened)
    finally:
        _opened = None


@pytest.fixture
def shipped_copy(tmp_path):
    """The shipped model folder, every file, with a [predict] threshold that is not the default."""
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED, folder)
    config = (folder / "config.toml").read_text(encoding="utf-8")
    (folder / "config.toml").write_text(re.sub(r"(?m)^threshold = .*$", f"threshold = {THRESHOLD}", config), encoding="utf-8")
    assert ModelFolder(folder / MODEL_FILENAME).predict_config().threshold == THRESHOLD
    return folder


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_serving_files_hold_every_file_the_classifier_opens(shipped_copy, runtime):
    folder = ModelFolder.resolve(shipped_copy)
    files = folder.serving_files(runtime)
    opened = _files_opened(lambda: Classifier.from_path(shipped_copy, runtime=runtime).predict_one(CAT))
    beside = {path for path in opened if str(shipped_copy) in path}
    assert beside, "the audit hook saw nothing: the test would pass whatever serving_files said"
    assert beside <= {str(path) for path in files.values()}, beside


@pytest.mark.parametrize("runtime", ["onnx", "onnx-int8"])
def test_a_copy_of_the_serving_files_answers_as_the_original(shipped_copy, tmp_path, runtime):
    copy = tmp_path / "copy"
    copy.mkdir()
    for name, path in ModelFolder.resolve(shipped_copy).serving_files(runtime).items():
        shutil.copy2(path, copy / name)
    original, copied = (Classifier.from_path(folder, runtime=runtime) for folder in (shipped_copy, copy))
    assert copied.runtime == original.runtime == runtime
    assert copied.warnings == original.warnings == []
    assert copied.rules == original.rules
    assert copied.rules.unsure_below == THRESHOLD
    assert copied.predict_one(CAT) == original.predict_one(CAT)


def test_batch_ships_the_models_predict_settings_to_its_actors(shipped_copy, tmp_path):
    """Ray actors rebuild the folder from these bytes: without config.toml they served the default threshold."""
    from dogcat.batch import _model_files

    files, _, _ = _model_files(shipped_copy, "onnx")
    (tmp_path / "actor").mkdir()
    for name, data in files.items():
        (tmp_path / "actor" / name).write_bytes(data)
    actor, driver = Classifier.from_path(tmp_path / "actor"), Classifier.from_path(shipped_copy)
    assert actor.rules == driver.rules
    assert actor.predict_one(DOG).verdict == driver.predict_one(DOG).verdict == "unsure"


def test_resolve_finds_the_env_model_then_the_shipped_one_and_names_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    assert ModelFolder.resolve().keras == SHIPPED / MODEL_FILENAME
    assert ModelFolder.resolve(SHIPPED).keras == SHIPPED / MODEL_FILENAME
    monkeypatch.setenv("DOGCAT_MODEL", str(tmp_path / "elsewhere.keras"))
    with pytest.raises(Exception, match=r"Model file not found\. Received: model_path=.*elsewhere\.keras"):
        ModelFolder.resolve()


def test_evaluate_out_into_the_model_folder_is_what_its_card_shows(tmp_path, tiny_model_dir, tiny_dataset):
    """`evaluate --out` wrote metrics.json, which no card read, over the one `train` wrote."""
    from dogcat.cli import main

    shutil.copytree(tiny_model_dir, tmp_path / "run")
    (tmp_path / "run" / "training.json").write_text('{"epochs_run": 3}')
    assert main(["evaluate", str(tmp_path / "run"), str(tiny_dataset), "--out", str(tmp_path / "run")]) == 0
    card = ModelFolder.resolve(tmp_path / "run").card()
    assert card["test"]["count"] == 2
    assert card["training"] == {"epochs_run": 3}  # train's record is left alone
    assert set(ModelFolder.resolve(tmp_path / "run").card_files()) == {"training.json", "test_metrics.json",
                                                                       "confusion_matrix.png"}
