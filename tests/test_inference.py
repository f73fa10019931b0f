import re
import threading

import numpy as np
import pytest

from dogcat.inference import Classifier
from dogcat.preprocessing import ImageError
from tests.helpers import REPO, drawn_photo


@pytest.fixture(scope="module")
def classifier(tiny_model_dir):
    return Classifier.from_path(tiny_model_dir / "dog_cat_classifier.keras")


@pytest.fixture(scope="module")
def varied_classifier():
    """A small conv net whose answers differ per image (the untrained tiny MobileNetV2 says 0.5 to all)."""
    import keras

    keras.utils.set_random_seed(1)
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(8, 3, activation="tanh")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, activation="softmax")(keras.layers.Dense(8, activation="tanh")(x))
    return Classifier(keras.Model(inputs, outputs), {0: "cat", 1: "dog"})


def test_predictions_are_the_same_when_many_threads_share_one_classifier(varied_classifier):
    classifier = varied_classifier
    """Streamlit sessions and Gradio workers share one Classifier: concurrent calls must not mix results."""
    images = [np.asarray(drawn_photo("cat" if i % 2 else "dog", i, size=48)) for i in range(8)]
    expected = [classifier.probabilities(image) for image in images]
    assert len({round(p["cat"], 6) for p in expected}) > 1, "images should give distinct answers"
    results: dict[tuple[int, int], dict[str, float]] = {}
    failures: list[BaseException] = []

    def work(worker: int) -> None:
        try:
            for round_ in range(5):
                index = (worker + round_) % len(images)
                results[(worker, round_)] = (index, classifier.probabilities(images[index]))
        except BaseException as error:
            failures.append(error)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures
    assert len(results) == 40
    for index, probabilities in results.values():
        assert probabilities == expected[index]


def test_predict_keeps_input_order_and_reports_each_bad_source(classifier):
    good = np.asarray(drawn_photo("cat", 1))
    results = classifier.predict([b"", good, b"not an image", good], names=["e", "g1", "t", "g2"])
    assert [r.source for r in results] == ["e", "g1", "t", "g2"]
    assert [r.error for r in results] == ["empty file", None, "not an image, or not a supported format (JPEG, PNG, WebP, HEIC, AVIF, BMP or GIF)", None]
    assert results[1].probabilities == results[3].probabilities
    assert sum(results[1].probabilities.values()) == pytest.approx(1, abs=1e-5)


def test_probabilities_raises_a_one_line_image_error_and_predict_one_returns_it(classifier):
    """The two one-photo verbs: `probabilities` is the network alone and raises, `predict_one` is `predict`'s row."""
    with pytest.raises(ImageError, match="not an image"):
        classifier.probabilities(b"GIF89a but not really")
    refused = classifier.predict_one(b"GIF89a but not really")
    assert (refused.verdict, refused.error[:12]) == (None, "not an image")
    photo = np.asarray(drawn_photo("cat", 0))
    assert classifier.predict_one(photo).probabilities == pytest.approx(classifier.probabilities(photo), abs=1e-6)


def test_the_classifiers_docstring_lists_every_public_method_and_its_example_holds(monkeypatch):
    """The class is the Python API's front door: a method added without a word there is one a reader never finds."""
    public = {name for name in vars(Classifier) if not name.startswith("_")}
    assert public - set(re.findall(r"`(\w+)", Classifier.__doc__)) == set()
    example = re.search(r"Example: `(.+?)`\.", Classifier.__doc__)[1]
    monkeypatch.chdir(REPO)
    assert eval(example, {"Classifier": Classifier}) is True


def test_predict_across_several_batches_matches_one_by_one(varied_classifier):
    """Batches are decoded and scored on several threads at once; order, errors and answers must not change."""
    sources = [np.asarray(drawn_photo(label, i)) for i in range(4) for label in ("cat", "dog")]
    sources[2], sources[7] = b"not an image", b""
    batched = Classifier(varied_classifier.runner, varied_classifier.class_names, batch_size=3)
    results = batched.predict(sources)
    assert len(results) == len(sources)
    for source, result in zip(sources, results, strict=True):
        if isinstance(source, bytes):
            assert result.error is not None
            assert result.probabilities is None
        else:
            assert result.error is None
            expected = varied_classifier.probabilities(source)
            assert result.probabilities == pytest.approx(expected, abs=1e-6)
    assert batched.predict([]) == []


def test_onnx_predict_scores_batches_on_every_core_at_once_in_input_order(monkeypatch):
    """The shipped model's ONNX twin: one single-threaded ONNX Runtime call per core at once (a
    wide call waits for its slowest thread while a decode holds a core), even when the call
    has fewer photos than a batch, and the predictions still in input order."""
    import os
    import time
    from pathlib import Path

    examples = sorted(Path(__file__).resolve().parents[1].joinpath("demos", "examples").glob("*.jpg"))
    classifier = Classifier.from_path(Path(__file__).resolve().parents[1] / "models", runtime="onnx", batch_size=4)
    assert classifier.workers == max(2, len(os.sched_getaffinity(0)))
    assert classifier.runner.session.get_session_options().intra_op_num_threads == 1
    lock, running, peak = threading.Lock(), [0], [0]
    classify = Classifier._classify

    def counted(self, *args, **kwargs):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.2)  # long enough for the other threads to start theirs
        try:
            return classify(self, *args, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    monkeypatch.setattr(Classifier, "_classify", counted)
    sources = [str(p) for p in examples] * 4 + [b"not an image"]
    results = classifier.predict(sources, names=[f"{i}" for i in range(len(sources))])
    assert 2 <= peak[0] <= classifier.workers, peak
    assert [r.source for r in results] == [f"{i}" for i in range(len(sources))]
    assert results[-1].error
    assert all(r.error is None for r in results[:-1])
    alone = {name: classifier.predict_one(name).probabilities for name in map(str, examples)}
    for source, result in zip(sources, results[:-1], strict=False):
        assert result.probabilities == pytest.approx(alone[source], abs=1e-6)
    peak[0] = 0
    classifier.predict(sources[:2])  # fewer photos than a batch: split over two threads
    assert peak[0] == 2, peak


# --- damaged or extreme model settings and weights never become a verdict -------------------------


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
    from dogcat.inference import Classifier
    from dogcat.verdict import NON_FINITE
    from tests.imagegen import write_pet

    model = keras.saving.load_model(tiny_model_dir / "dog_cat_classifier.keras")
    kernel, bias = model.layers[-1].get_weights()
    model.layers[-1].set_weights([kernel, np.full_like(bias, np.inf)])
    classifier = Classifier(model, load_class_names(tiny_model_dir / "class_names.pkl"))
    [prediction] = classifier.predict([write_pet(tmp_path / "cat.jpg", "cat", 0)])
    assert prediction.error == NON_FINITE
    assert prediction.verdict is None
    assert json.loads(strict_json({"p": float("nan"), "q": [float("inf"), 1.0]})) == {"p": None, "q": [None, 1.0]}
