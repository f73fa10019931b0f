"""One model, one answer on every path: the same photos through the Classifier, `dogcat predict --json` and
`--csv`, the Gradio and Streamlit apps (and, in test_batch.py, `dogcat batch`) give the same verdict, label and
probabilities, with a model whose config.toml is not the defaults (a path that dropped it would differ)."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil

import pytest
from PIL import Image, ImageOps

from dogcat.cli import main
from dogcat.inference import Classifier
from dogcat.verdict import UNSURE
from tests.helpers import EXAMPLES, REPO

THRESHOLD, MIN_SIDE = 0.9, 100  # the defaults are 0.6 and 80: the dog (0.72) and the 90 px cat tell them apart


def model_with_own_settings(folder):
    """A copy of the shipped model folder whose config.toml says THRESHOLD and MIN_SIDE."""
    shutil.copytree(REPO / "models", folder)
    config = (folder / "config.toml").read_text(encoding="utf-8")
    config = re.sub(r"(?m)^threshold = .*$", f"threshold = {THRESHOLD}", config)
    config = config.replace("[predict]\n", f"[predict]\nmin_side = {MIN_SIDE}\n", 1)
    (folder / "config.toml").write_text(config, encoding="utf-8")
    return folder


def ten_photos(folder):
    """Cats, dogs, two non-pets, a thumbnail, a photo under MIN_SIDE but over the default, and a broken file."""
    folder.mkdir()
    cat, dog = Image.open(EXAMPLES / "cat-chelsea.jpg"), Image.open(EXAMPLES / "dog-darknet.jpg")
    for name in ("cat-chelsea.jpg", "dog-darknet.jpg", "astronaut.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, folder / name)
    ImageOps.mirror(cat).save(folder / "cat-mirrored.png")
    ImageOps.grayscale(dog).save(folder / "dog-gray.jpg", quality=90)
    cat.crop((100, 20, 400, 300)).save(folder / "cat-cropped.webp")
    cat.resize((60, 40)).save(folder / "thumbnail.png")
    cat.resize((90, 90)).save(folder / "cat-90px.bmp")
    (folder / "broken.jpg").write_bytes(b"not a photo")
    return sorted(folder.iterdir())


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    """(model folder, photo paths, the Classifier's predictions: the reference every path must give)."""
    root = tmp_path_factory.mktemp("consistency")
    model = model_with_own_settings(root / "model")
    photos = ten_photos(root / "photos")
    predictions = Classifier.from_path(model).predict(photos, names=[str(p) for p in photos])
    verdicts = [p.verdict for p in predictions]
    assert {UNSURE, "too_small", "neither", "cat"} <= set(verdicts)  # the settings and the detector are in play
    assert verdicts[[p.name for p in photos].index("cat-90px.bmp")] == "too_small"  # MIN_SIDE, not the default
    return model, photos, predictions


def assert_same(expected, verdict, label, probabilities, context) -> None:
    assert (verdict, label) == (expected.verdict, expected.label), context
    assert probabilities.keys() == expected.probabilities.keys(), context
    for name, p in probabilities.items():
        assert abs(p - expected.probabilities[name]) <= 1e-6, (context, name)


def test_predict_json_gives_the_classifiers_answers(case, capsys):
    model, photos, predictions = case
    assert main(["predict", "--json", "--model", str(model), *map(str, photos)]) == 1  # the broken file
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["path"] for r in records] == [str(p) for p in photos]
    for record, expected in zip(records, predictions, strict=True):
        if expected.error:
            assert (bool(record["error"]), record["verdict"]) == (True, None)
            continue
        probabilities = {name: record[f"p_{name}"] for name in expected.probabilities}
        assert_same(expected, record["verdict"], record["label"], probabilities, record["path"])
        seen = expected.looks_like
        assert record["looks_like"] == (seen and seen.name), record["path"]
        assert abs((record["p_looks_like"] or 0) - (seen.probability if seen else 0)) <= 1e-6


def test_predict_csv_gives_the_classifiers_answers(case, capsys):
    model, photos, predictions = case
    assert main(["predict", "--csv", "--model", str(model), *map(str, photos)]) == 1
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["path"] for r in rows] == [str(p) for p in photos]
    for row, expected in zip(rows, predictions, strict=True):
        if expected.error:
            assert (bool(row["error"]), row["verdict"]) == (True, "")
            continue
        probabilities = {name: float(row[f"p_{name}"]) for name in expected.probabilities}
        assert_same(expected, row["verdict"], row["label"], probabilities, row["path"])
        assert (int(row["width"]), int(row["height"])) == expected.size


def test_the_gradio_app_gives_the_classifiers_answers(case):
    gr = pytest.importorskip("gradio")
    from tests.test_gradio import _load_app, _upload

    model, photos, predictions = case
    app = _load_app(model)
    for photo, expected in zip(photos, predictions, strict=True):
        if expected.error:
            with pytest.raises(gr.Error):
                app.predict(_upload(photo))
            continue
        sentence, probabilities, record, _ = app.predict(_upload(photo))
        assert sentence == expected.sentence, photo.name
        assert_same(expected, record["verdict"], record["label"], probabilities, photo.name)


def test_the_streamlit_page_gives_the_classifiers_answers(case, monkeypatch):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    model, photos, predictions = case
    monkeypatch.setenv("DOGCAT_MODEL", str(model))
    app = AppTest.from_file(str(REPO / "demos" / "streamlit_app.py"), default_timeout=180).run()
    assert app.slider(key="threshold").value == THRESHOLD  # the page starts from the model's own settings
    app.file_uploader(key="uploads").set_value([(p.name, p.read_bytes(), "image/jpeg") for p in photos])
    app.run()
    assert not app.exception
    headings = [p.text if p.verdict == UNSURE else p.text.partition(" (")[0] for p in predictions if not p.error]
    assert [s.value for s in app.subheader] == headings
    assert sorted(app.get("button_group")[0].value) == sorted({p.verdict or "error" for p in predictions})
