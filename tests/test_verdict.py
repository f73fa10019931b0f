"""Verdicts: the one decision function, the detector artifact and its hash tie, and real photos."""

from __future__ import annotations

import io
import json
import shutil

import numpy as np
import pytest
from PIL import Image

from dogcat.artifacts import DETECTOR_FILENAME, ArtifactError, file_sha256
from dogcat.inference import Classifier
from dogcat.verdict import (
    CAT,
    DOG,
    NEITHER,
    TOO_SMALL,
    UNSURE,
    Detector,
    VerdictRules,
    decide,
    describe,
    detector_for,
    fit_detector,
)
from tests.conftest import REAL_CAT, REAL_DOG, REPO

SHIPPED = REPO / "models"
EXAMPLES = REPO / "demos" / "examples"
needs_shipped = pytest.mark.skipif(not (SHIPPED / DETECTOR_FILENAME).is_file(), reason="no shipped detector")


# --- the decision -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("probabilities", "size", "is_neither", "expected"),
    [
        ({"cat": 0.9, "dog": 0.1}, (300, 200), False, CAT),
        ({"cat": 0.2, "dog": 0.8}, (300, 200), False, DOG),
        ({"cat": 0.9, "dog": 0.1}, (300, 200), None, CAT),  # no detector: cat/dog verdicts only
        ({"cat": 0.9, "dog": 0.1}, (300, 200), True, NEITHER),
        ({"cat": 0.55, "dog": 0.45}, (300, 200), False, UNSURE),
        ({"cat": 0.9, "dog": 0.1}, (300, 20), False, TOO_SMALL),  # the shorter side decides
        ({"cat": 0.9, "dog": 0.1}, (20, 20), True, TOO_SMALL),  # too small explains a thumbnail best
    ],
)
def test_decide_gives_each_outcome_in_order(probabilities, size, is_neither, expected):
    assert decide(probabilities, size, is_neither, VerdictRules(unsure_below=0.6, min_side=32)) == expected


def test_describe_says_the_verdict_in_words():
    rules = VerdictRules(unsure_below=0.6, min_side=32)
    assert describe(NEITHER, {"cat": 0.9, "dog": 0.1}, (10, 10), rules) == "Neither a cat nor a dog"
    assert describe(TOO_SMALL, {"cat": 0.9, "dog": 0.1}, (40, 20), rules) == (
        "Too small to judge (40x20 px; needs 32 px on the shorter side)")
    assert describe(UNSURE, {"cat": 0.45, "dog": 0.55}, (99, 99), rules) == "Not sure (maybe dog)"
    assert describe(CAT, {"cat": 0.9, "dog": 0.1}, (99, 99), rules) == "Cat"


# --- the detector -----------------------------------------------------------------------------------


BLOCKS = (("pool", 12), ("trunk", 4))


def _photos(rng, count, direction):
    """Feature rows near `direction` (an index) in both blocks, with a little noise."""
    centre = np.zeros(16, np.float32)
    centre[direction], centre[12 + direction % 4] = 1.0, 1.0
    return centre + rng.normal(0, 0.05, (count, 16)).astype(np.float32)


@pytest.fixture
def fitted():
    """Training features around two directions (cats, dogs); other directions are novel."""
    rng = np.random.default_rng(0)
    train = np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)])
    val = np.concatenate([_photos(rng, 100, 0), _photos(rng, 100, 1)])
    labels = np.repeat([0, 1], 100)
    return fit_detector(train, labels, val, "f" * 64, BLOCKS, turn_away=0.02), rng


def test_the_threshold_turns_away_the_chosen_share_of_validation_photos(fitted):
    detector, rng = fitted
    assert detector.info["val_turned_away"] == 0.02  # 4 of 200, the most that 2% allows
    fresh = detector.flags(_photos(rng, 1000, 0))
    assert 0.0 < fresh.mean() < 0.06  # about the validation share on new photos like them
    assert detector.flags(_photos(rng, 100, 7)).all()  # a direction no training photo has


def test_each_feature_block_counts(fitted):
    """A photo novel in only one block (here the trunk's) is still flagged."""
    detector, rng = fitted
    photos = _photos(rng, 50, 0)
    photos[:, 12:] = np.roll(photos[:, 12:], 2, axis=1)  # a trunk pattern neither class has
    assert detector.flags(photos).mean() > 0.9


def test_detector_round_trips_and_loads_without_pickle(fitted, tmp_path):
    detector, rng = fitted
    detector.save(tmp_path / DETECTOR_FILENAME)
    loaded = Detector.load(tmp_path / DETECTOR_FILENAME)
    features = rng.normal(0, 1, (20, 16)).astype(np.float32)
    np.testing.assert_allclose(loaded.scores(features), detector.scores(features), rtol=1e-3, atol=1e-3)
    assert (loaded.threshold, loaded.keras_sha256) == (detector.threshold, "f" * 64)
    assert [b.name for b in loaded.blocks] == ["pool", "trunk"]


@pytest.mark.parametrize("kind", ["pickled", "text", "wrong-shape"])
def test_a_foreign_or_malicious_detector_file_is_refused_in_one_line(tmp_path, kind):
    path = tmp_path / DETECTOR_FILENAME
    if kind == "pickled":  # an object array would need pickle, which could run code
        np.savez(path, reference=np.array([object()], dtype=object), header=np.array("{}"))
    elif kind == "text":
        path.write_text("not a detector")
    else:
        header = {"format": 2, "method": "mahalanobis", "threshold": 0.5, "keras_sha256": "x",
                  "blocks": [{"name": "pool", "val_mean": 0.0, "val_std": 1.0}]}
        np.savez(path, means_0=np.ones((2, 4), np.float32), precision_0=np.ones((3, 3), np.float16),
                 precision_scale_0=np.array(1.0), header=np.array(json.dumps(header)))
    with pytest.raises(ArtifactError, match="Not a dogcat detector file") as caught:
        Detector.load(path)
    assert "\n" not in str(caught.value)


def test_a_stale_or_missing_detector_means_cat_dog_verdicts_and_a_warning(tiny_model_dir, tmp_path, fitted):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = folder / "dog_cat_classifier.keras"
    detector, _ = fitted
    assert detector_for(model)[0] is None
    assert f"no {folder / DETECTOR_FILENAME} beside the model" in detector_for(model)[1]

    detector.save(folder / DETECTOR_FILENAME)  # fitted for another .keras ("fff...")
    found, warning = detector_for(model)
    assert found is None
    assert warning == (f"{folder / DETECTOR_FILENAME} was fitted for a different .keras file, so no 'neither' "
                       f"verdicts (run `dogcat detector fit {model} DATA_DIR`)")
    classifier = Classifier.from_path(model)
    assert classifier.detector is None
    assert classifier.verdict_warning == warning
    assert classifier.predict([np.zeros((96, 96, 3), np.uint8)])[0].verdict in {CAT, DOG, UNSURE}


# --- the shipped model and its detector, on real photos ------------------------------------------


def _small(path, side: int) -> bytes:
    image = Image.open(path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@needs_shipped
def test_shipped_detector_is_tied_to_the_shipped_model():
    detector, warning = detector_for(SHIPPED / "dog_cat_classifier.keras")
    assert warning is None
    assert detector.keras_sha256 == file_sha256(SHIPPED / "dog_cat_classifier.keras")


@needs_shipped
@pytest.mark.parametrize("runtime", ["onnx", "keras"])
def test_a_verdict_for_each_outcome_on_real_photos(runtime):
    """A cat, a dog, two photos of neither and a thumbnail, none of them training photos."""
    classifier = Classifier.from_path(runtime=runtime)
    assert classifier.verdict_warning is None
    sources = [EXAMPLES / "cat-chelsea.jpg", EXAMPLES / "dog-darknet.jpg", EXAMPLES / "astronaut.jpg",
               EXAMPLES / "rocket.jpg", _small(EXAMPLES / "cat-chelsea.jpg", 24)]
    predictions = classifier.predict(sources)
    assert [p.verdict for p in predictions] == [CAT, DOG, NEITHER, NEITHER, TOO_SMALL]
    # The classifier alone calls the astronaut a cat: the verdict is the detector's doing.
    assert predictions[2].label == "cat"
    assert predictions[2].confidence > 0.7
    assert predictions[4].size == (24, 16)
    assert predictions[4].text == "Too small to judge (24x16 px; needs 80 px on the shorter side)"
    assert all(p.probabilities is not None for p in predictions)


@needs_shipped
@pytest.mark.shared_data
def test_keras_and_onnx_give_the_same_verdicts_on_real_photos(shared_data):
    """Kaggle photos (cats and dogs near and far from the threshold) and the examples of neither."""
    paths = [shared_data / REAL_CAT, shared_data / REAL_DOG, *sorted(shared_data.glob("cat.1*.jpg"))[:40],
             *sorted(shared_data.glob("dog.1*.jpg"))[:40], EXAMPLES / "astronaut.jpg", EXAMPLES / "rocket.jpg"]
    onnx, keras_ = Classifier.from_path(runtime="onnx"), Classifier.from_path(runtime="keras")
    by_onnx, by_keras = onnx.predict(paths), keras_.predict(paths)
    assert [p.verdict for p in by_onnx] == [p.verdict for p in by_keras]
    scores = [onnx.detector.scores(np.stack([p.features for p in ps])) for ps in (by_onnx, by_keras)]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)
    assert {p.verdict for p in by_onnx} >= {CAT, DOG, NEITHER}


# --- the command line -------------------------------------------------------------------------------


@needs_shipped
def test_predict_json_and_csv_carry_the_verdict_and_size(capsys):
    from dogcat.cli import main

    photos = [str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "cat-chelsea.jpg")]
    assert main(["predict", "--json", *photos]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["verdict"], r["label"]) for r in rows] == [(NEITHER, "cat"), (CAT, "cat")]
    assert rows[1]["size"] == [451, 300]
    assert main(["predict", "--csv", *photos]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "path,verdict,label,p_cat,p_dog,width,height,error"
    assert [line.split(",")[1] for line in lines[1:]] == [NEITHER, CAT]


def test_detector_fit_command_ties_a_detector_to_the_model(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    from dogcat.cli import main

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    model = folder / "dog_cat_classifier.keras"
    assert main(["predict", "--model", str(model), str(tiny_dataset / "test")]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith(f"dogcat: warning: no {folder / DETECTOR_FILENAME} beside the model")

    assert main(["detector", "fit", str(model), str(tiny_dataset), "--turn-away", "0.2"]) == 0
    classifier = Classifier.from_path(model)
    assert classifier.verdict_warning is None
    assert classifier.detector.keras_sha256 == file_sha256(model)
    assert classifier.detector.info["train_photos"] == 16
    assert main(["predict", "--model", str(model), str(tiny_dataset / "test")]) == 0
    assert capsys.readouterr().err == ""
    assert main(["detector", "fit", str(model), str(tiny_dataset), "--turn-away", "nan"]) == 2
    assert capsys.readouterr().err.strip().endswith("Received: turn_away=nan")


def test_evaluate_reports_turned_away_and_the_neither_folder(tiny_model_dir, tiny_dataset, tmp_path, capsys):
    from dogcat.cli import main
    from dogcat.verdict import fit_detector_beside

    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    fit_detector_beside(folder / "dog_cat_classifier.keras", tiny_dataset, 0.2, log=lambda _: None)
    others = tmp_path / "others" / "noise"
    others.mkdir(parents=True)
    for index in range(3):
        pixels = np.random.default_rng(index).integers(0, 255, (64, 64, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(others / f"{index}.png")
    assert main(["evaluate", str(folder / "dog_cat_classifier.keras"), str(tiny_dataset),
                 "--neither", str(tmp_path / "others"), "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "turned away" in out
    assert "neither folder" in out
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert sum(metrics["verdicts"].values()) == metrics["count"] == 2
    assert metrics["neither_folder"]["count"] == 3
    assert set(metrics["neither_folder"]["categories"]) == {"noise"}
    assert metrics["detector"] is True
