"""Verdicts (dogcat.verdict): the one decision function, its words, and the verdicts on real photos and in predict's rows."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from PIL import Image

from dogcat.detector import COUGAR
from dogcat.inference import Classifier
from dogcat.verdict import (
    CAT,
    DOG,
    NEITHER,
    TOO_SMALL,
    UNSURE,
    LooksLike,
    Prediction,
    VerdictRules,
    decide,
    describe,
    hint,
)
from tests.helpers import EXAMPLES, REAL_CAT, REAL_DOG, model_folder_copy, needs_shipped


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


def test_the_hint_says_what_it_looks_like_only_where_that_says_something():
    tiger, dalmatian = LooksLike("tiger", 0.84), LooksLike("Dalmatian", 0.91, DOG)
    assert hint(NEITHER, tiger) == "looks like a tiger (84%)"
    assert hint(UNSURE, LooksLike("Egyptian cat", 0.4, CAT)) == "looks like an Egyptian cat (40%)"
    assert hint(DOG, dalmatian) == "looks like a Dalmatian (91%)"
    assert hint(CAT, dalmatian) is None  # a cat that "looks like a Dalmatian" would contradict the verdict
    assert hint(DOG, LooksLike("pillow", 0.06)) is None
    assert hint(TOO_SMALL, tiger) is None
    assert hint(NEITHER, None) is None


def test_neither_says_what_it_sees_when_imagenet_and_the_classifier_disagree():
    cougar = LooksLike("cougar", 0.85, None, COUGAR, "wild_cat")
    assert hint(NEITHER, cougar, CAT) == "looks like a cougar (85%), not a house cat"
    assert hint(NEITHER, LooksLike("horse", 0.7, None, "n02389026", "ungulate"), DOG) == "looks like a horse (70%), not a dog"
    assert hint(NEITHER, LooksLike("sports car", 0.5, None, "n04285008", "artifact"), CAT) == "looks like a sports car (50%)"
    assert hint(UNSURE, LooksLike("grey wolf", 0.7, None, "n02114367", "wild_canine"), DOG) == "looks like a grey wolf (70%)"
    prediction = Prediction("a.jpg", {"cat": 0.9, "dog": 0.1}, verdict=NEITHER, text="Neither a cat nor a dog",
                            size=(300, 300), looks_like=cougar)
    assert prediction.sentence == "Neither a cat nor a dog: looks like a cougar (85%), not a house cat"
    row = prediction.as_row(["cat", "dog"])
    assert row["reason"] == "looks like a cougar (85%), not a house cat"
    assert [row[key] for key in ("looks_like", "p_looks_like", "looks_like_id", "looks_like_group")] == [
        "cougar", 0.85, COUGAR, "wild_cat"]


# --- the shipped model's verdicts, on real photos -------------------------------------------


def _small(path, side: int) -> bytes:
    image = Image.open(path)
    image.thumbnail((side, side))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


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
    assert max(predictions[2].probabilities.values()) > 0.7
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


# --- the command line's rows ---------------------------------------------------------------


@needs_shipped
def test_predict_json_and_csv_carry_the_verdict_and_size(capsys):
    from dogcat.cli import main

    photos = [str(EXAMPLES / "astronaut.jpg"), str(EXAMPLES / "cat-chelsea.jpg")]
    assert main(["predict", "--json", *photos]) == 0
    rows = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["verdict"], r["label"]) for r in rows] == [(NEITHER, "cat"), (CAT, "cat")]
    assert (rows[1]["width"], rows[1]["height"]) == (451, 300)
    assert rows[1]["looks_like_group"] == "house_cat"  # Chelsea is a tabby: ImageNet names a domestic cat
    assert rows[0]["looks_like_group"] not in ("house_cat", "dog")
    assert all(r["looks_like"] and r["looks_like_id"].startswith("n") for r in rows)  # a WordNet id: n02123045
    assert rows[1]["reason"].startswith("looks like a ")
    assert rows[0]["reason"].startswith("looks like")
    assert all(0 < r["p_looks_like"] < 1 for r in rows)
    assert main(["predict", "--csv", *photos]) == 0
    lines = list(csv.DictReader(capsys.readouterr().out.splitlines()))
    assert [line["verdict"] for line in lines] == [NEITHER, CAT]
    for line, row in zip(lines, rows, strict=True):
        assert (line["looks_like"], line["looks_like_id"], line["looks_like_group"], line["reason"]) == (
            row["looks_like"], row["looks_like_id"], row["looks_like_group"], row["reason"])
        assert float(line["p_looks_like"]) == pytest.approx(row["p_looks_like"], abs=1e-6)


# --- the model's own verdict rules ---------------------------------------------------------


@needs_shipped
def test_the_models_saved_predict_settings_drive_its_verdicts(tmp_path):
    """[predict] in the config.toml saved with a run: a stricter threshold makes the model unsure."""
    folder, model = model_folder_copy(tmp_path)
    config = (folder / "config.toml").read_text()
    before, after = config.split("[predict]")
    after = after.replace("threshold = 0.6", "threshold = 0.999").replace("batch_size = 32", "batch_size = 3")
    (folder / "config.toml").write_text(f"{before}[predict]\nmin_side = 500{after}")
    classifier = Classifier.from_path(model)
    assert (classifier.rules, classifier.batch_size) == (VerdictRules(unsure_below=0.999, min_side=500), 3)
    assert classifier.predict([EXAMPLES / "cat-chelsea.jpg"])[0].verdict == TOO_SMALL  # 451x300, under 500
    assert Classifier.from_path().rules == VerdictRules(unsure_below=0.6, min_side=80)
