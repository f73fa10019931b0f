"""The int8 twin (`dogcat export --int8`, the onnx-int8 runtime): tied to its .keras file, and giving
float32's labels, accuracy, log loss and verdicts on real photos.

Run by `nox -s bulk` (marker `bulk`), which installs the ray extra and no Keras backend: the int8
runtime needs only ONNX Runtime.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.bulk
# As in test_batch.py: Ray reads this once, when it is imported, whichever file imports it first.
os.environ.setdefault("RAY_AUTH_MODE", "token")
pytest.importorskip("ray", reason="the ray extra is not installed (nox -s bulk)")

from dogcat.artifacts import MODEL_FILENAME  # noqa: E402
from tests.helpers import REPO, SHIPPED  # noqa: E402


def _outside_photos(shared_data: Path, dataset: Path) -> tuple[list[Path], np.ndarray]:
    used = {line.split(",", 1)[0].rsplit("/", 1)[-1] for line in (dataset / "manifest.csv").read_text().splitlines()[1:]}
    paths = sorted(p for p in shared_data.glob("*.jpg") if p.name not in used)
    return paths, np.array([int(p.name.startswith("dog")) for p in paths])


def test_int8_twin_records_its_keras_file_and_is_refused_when_stale(int8_model, tmp_path):
    from dogcat.artifacts import ArtifactError
    from dogcat.inference import Classifier

    assert Classifier.from_path(int8_model, runtime="onnx-int8").runtime == "onnx-int8"
    assert Classifier.from_path(int8_model).runtime == "onnx", "auto must stay float32"
    stale = tmp_path / "stale"
    shutil.copytree(int8_model.parent, stale)
    (stale / MODEL_FILENAME).write_bytes((stale / MODEL_FILENAME).read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match=r"different \.keras file .*export --int8"):
        Classifier.from_path(stale / MODEL_FILENAME, runtime="onnx-int8")


def test_int8_keeps_float32s_labels_accuracy_and_log_loss_on_real_photos(int8_model, shipped_dataset, shared_data):
    """The int8 contract: labels agree on >= 99.5%, accuracy within 0.3 points and log loss
    within 0.01 of float32, on the test split and on the 1,000 Kaggle photos outside the dataset;
    and verdicts ("neither" included) agree on >= 99.5% too."""
    from dogcat.data import read_split
    from dogcat.inference import Classifier

    floats = Classifier.from_path(int8_model, runtime="onnx")
    int8 = Classifier.from_path(int8_model, runtime="onnx-int8")
    test = read_split(shipped_dataset, "test")
    for name, (paths, labels) in {"test": (test.paths, test.labels),
                                  "outside": _outside_photos(shared_data, shipped_dataset)}.items():
        assert len(paths) >= 400, name
        scores = {}
        for runtime, classifier in (("float32", floats), ("int8", int8)):
            predictions = classifier.predict([str(p) for p in paths])
            assert not [p for p in predictions if p.error]
            dog = np.array([p.probabilities["dog"] for p in predictions])
            chosen = np.where(labels == 1, dog, 1 - dog)
            scores[runtime] = ((dog > 0.5).astype(int), float(np.mean((dog > 0.5) == labels)),
                               float(-np.mean(np.log(np.clip(chosen, 1e-7, 1)))), [p.verdict for p in predictions])
        agreement = float(np.mean(scores["float32"][0] == scores["int8"][0]))
        assert agreement >= 0.995, (name, agreement)
        assert abs(scores["float32"][1] - scores["int8"][1]) <= 0.003 + 1e-9, (name, scores)
        assert abs(scores["float32"][2] - scores["int8"][2]) <= 0.01, (name, scores)
        verdicts = float(np.mean(np.array(scores["float32"][3]) == np.array(scores["int8"][3])))
        assert verdicts >= 0.995, (name, verdicts)


def test_the_shipped_int8_twin_is_tied_to_the_shipped_model_and_gives_its_verdicts():
    from dogcat.inference import Classifier

    int8 = Classifier.from_path(SHIPPED / MODEL_FILENAME, runtime="onnx-int8")
    floats = Classifier.from_path(SHIPPED / MODEL_FILENAME, runtime="onnx")
    examples = sorted(str(p) for p in (REPO / "demos" / "examples").glob("*.jpg"))
    assert len(examples) >= 4
    assert [p.verdict for p in int8.predict(examples)] == [p.verdict for p in floats.predict(examples)]
