"""The Gradio demo (demos/gradio_app.py) and the Hugging Face Space that `dogcat space build` writes.

In-process tests load the app with a tiny untrained model; the slow tests build a real Space with
the shipped model, start its app.py as a server on 127.0.0.1 and talk to it with gradio_client.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")
yaml = pytest.importorskip("yaml")  # a Gradio dependency; parses the Space's front matter

from dogcat.artifacts import CLASS_NAMES_FILENAME, MODEL_FILENAME  # noqa: E402
from dogcat.detector import DESCRIPTION  # noqa: E402
from dogcat.space import NOT_VENDORED, ONNX_REQUIREMENTS, REQUIREMENTS, SpaceError, build_space  # noqa: E402
from dogcat.verdict import row_columns  # noqa: E402
from tests.helpers import REAL_CAT, REAL_DOG, REPO, drawn_photo  # noqa: E402
from tests.servers import free_port, serving  # noqa: E402

APP_FILE = REPO / "demos" / "gradio_app.py"
SERVER_START_TIMEOUT = 120  # seconds; the server is usually up in 6-10 s here
# The Space pins tensorflow-cpu to the installed version, so it is built (and served) only where
# TensorFlow is installed; the app itself runs on any Keras backend.
needs_tensorflow = pytest.mark.skipif(importlib.util.find_spec("tensorflow") is None,
                                      reason="the Space pins tensorflow-cpu: TensorFlow is not installed")


def _load_app(model_dir: Path):
    """Import demos/gradio_app.py as a fresh module with `model_dir`'s model."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DOGCAT_MODEL", str(model_dir / MODEL_FILENAME))
        spec = importlib.util.spec_from_file_location("gradio_app_under_test", APP_FILE)
        module = importlib.util.module_from_spec(spec)
        # No garbage collection while the app builds: in this long pytest process a collection
        # that lands inside gr.Blocks()'s `import IPython` probe breaks importlib's module lock
        # (KeyError in _ModuleLock, CPython 3.11). Servers started by the tests below are not
        # affected, and neither are `python app.py` or `dogcat demo`.
        gc.disable()
        try:
            spec.loader.exec_module(module)
        finally:
            gc.enable()
    return module


@pytest.fixture(scope="module")
def app(tiny_model_dir):
    return _load_app(tiny_model_dir)


def _upload(path: Path) -> dict:
    """What Gradio hands the predict function for an upload (preprocess=False): a file-data dict."""
    return {"path": str(path), "orig_name": path.name, "meta": {"_type": "gradio.FileData"}}


def _assert_one_clean_line(message: str, folder: Path) -> None:
    assert "\n" not in message
    assert "Traceback" not in message
    assert str(folder) not in message  # the server's upload folder is not the user's business


# --- the app, in process ---------------------------------------------------------------------------


def test_predict_returns_a_verdict_and_a_probability_for_each_class(app, tmp_path):
    photo = tmp_path / "drawn.png"
    drawn_photo("dog", 3, size=80).save(photo)
    verdict, result, record, looked = app.predict(_upload(photo))
    # The untrained tiny model is never sure, and it has no detector beside it.
    assert verdict.startswith("Not sure (maybe ")
    assert set(result) == {"cat", "dog"}
    assert all(0.0 <= p <= 1.0 for p in result.values())
    assert sum(result.values()) == pytest.approx(1.0, abs=1e-5)
    assert looked is None  # the heatmap is opt-in
    # For programs: the machine-readable verdict, as `dogcat predict --json` gives it, under the client's file name.
    assert (record["file"], record["verdict"]) == ("drawn.png", "unsure")
    assert {"cat": record["p_cat"], "dog": record["p_dog"]} == result
    assert list(record) == ["file", *row_columns(["cat", "dog"])[1:]]  # the row, "path" renamed:
    # gradio_client would try to download a "path" as a file
    assert record["looks_like"] is None  # no detector, so no ImageNet head
    again = app.predict(str(photo))  # a plain path works too (reload mode, direct calls)
    assert (again[0], again[1], again[3]) == (verdict, result, None)


def test_show_where_it_looked_adds_the_overlay_image(app, tmp_path):
    photo = tmp_path / "wide.png"
    drawn_photo("cat", 4, size=80).resize((120, 80)).save(photo)
    verdict, result, _, looked = app.predict(_upload(photo), True)
    assert (verdict, result) == app.predict(_upload(photo))[:2]
    assert Image.open(looked).size == (120, 80)  # the photo's own size and shape
    assert looked != app.predict(_upload(photo), True)[3]  # a file per request: none is rewritten while sent
    (fn,) = [fn for fn in app.demo.fns.values() if fn.api_name == "predict"]
    assert [type(block).__name__ for block in fn.outputs] == ["Label", "Label", "JSON", "Image"]
    assert [type(block).__name__ for block in fn.inputs] == ["Image", "Checkbox"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"this is not a picture", "not an image"),
        (b"", "empty file"),
        ("truncated", "truncated or corrupt image data"),
    ],
)
def test_bad_upload_is_a_one_line_gradio_error(app, tmp_path, content, reason):
    path = tmp_path / "upload.jpg"
    if content == "truncated":
        buffer = io.BytesIO()
        drawn_photo("cat", 1, size=120).save(buffer, format="JPEG", quality=95)
        content = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    path.write_bytes(content)
    with pytest.raises(gr.Error) as caught:
        app.predict(_upload(path))
    assert caught.value.message.startswith(f"Cannot read upload.jpg: {reason}")
    _assert_one_clean_line(caught.value.message, tmp_path)


def test_a_phone_photo_chosen_by_file_is_shown_upright_and_classified_as_its_own_pixels(app, tmp_path):
    """The photo box takes only what the browser calls image/*, and Chrome gives a .heic no type: the
    file button picks by extension, and the photo box then shows (and classifies) its upright pixels."""
    from PIL import Image

    from tests.imagegen import make_exif_photo

    (button,) = [block for block in app.demo.blocks.values() if isinstance(block, gr.UploadButton)]
    assert {".heic", ".heif", ".avif", ".jpg"} <= set(button.file_types)
    upload = tmp_path / "upload"
    upload.mkdir()
    phone = upload / "IMG_0042.HEIC"
    phone.write_bytes(make_exif_photo(drawn_photo("cat", 6, size=120).resize((120, 80)), 6, "HEIF"))
    shown, *_ = app.from_file(_upload(phone))
    with Image.open(shown) as picture:
        assert (picture.format, picture.size) == ("PNG", (120, 80))  # upright, in a format every browser shows
    assert app.predict(shown)[:2] == app.predict(_upload(phone))[:2]
    assert app.predict(_upload(phone))[2]["file"] == "IMG_0042.HEIC"
    broken = upload / "IMG_0043.HEIC"
    broken.write_bytes(phone.read_bytes()[:60])
    _, message, *_ = app.from_file(_upload(broken))
    assert message.startswith("Cannot read IMG_0043.HEIC: "), message
    _assert_one_clean_line(message, upload)


@pytest.mark.parametrize("upload", [None, {"path": None, "orig_name": "x.jpg"}])
def test_no_image_is_a_gradio_error(app, upload):
    with pytest.raises(gr.Error, match="No image received"):
        app.predict(upload)


def test_the_only_public_endpoint_is_predict_and_its_limits_are_set(app):
    endpoints = app.demo.get_api_info()["named_endpoints"]
    assert list(endpoints) == ["/predict"]
    (fn,) = [fn for fn in app.demo.fns.values() if fn.api_name == "predict"]
    assert fn.concurrency_limit == app.CONCURRENCY_LIMIT
    assert app.demo._queue.max_size == app.QUEUE_MAX_SIZE


def test_the_probabilities_never_head_the_page(app):
    """Only the verdict has a heading: the probabilities' top class ("dog" under "Neither a cat nor a
    dog") would contradict it."""
    assert app.verdict_output.show_heading is True
    assert app.label_output.show_heading is False


def test_the_page_classifies_on_arrival_and_on_the_checkbox_and_keeps_errors_in_view(app, tmp_path):
    """Upload, the checkbox and the button rerun the page (privately: /predict stays the one endpoint);
    a bad file's reason takes the verdict's place and stays; the overlay panel shows only with an overlay."""
    fns = [fn for fn in app.demo.fns.values() if fn.fn in (app.show, app.classify)]
    targets = {(fn.fn.__name__, type(app.demo.blocks[block_id]).__name__, event)
               for fn in fns for block_id, event in fn.targets}
    assert targets == {("show", "Image", "change"), ("show", "Checkbox", "change"), ("classify", "Button", "click")}
    assert all(fn.api_visibility == "private" and not fn.preprocess for fn in fns)
    assert all(fn.concurrency_limit == app.CONCURRENCY_LIMIT for fn in fns)
    cleared = app.show(None, False)  # the clear button: outputs cleared, no error
    assert cleared[:3] == (None, None, None)
    assert cleared[3].visible is False
    photo = tmp_path / "drawn.png"
    drawn_photo("cat", 5, size=96).save(photo)
    shown = app.show(_upload(photo), False)
    assert shown[0] == app.predict(_upload(photo), False)[0]
    assert shown[3].visible is False  # no overlay asked for: no empty panel
    assert app.show(_upload(photo), True)[3].visible is True
    (tmp_path / "bad.jpg").write_text("not a photo")
    reason, *rest = app.show(_upload(tmp_path / "bad.jpg"), False)
    assert reason.startswith("Cannot read bad.jpg: not an image")
    assert rest[:2] == [None, None]
    with pytest.raises(gr.Error) as error:  # for an API client it stays an error
        app.predict(_upload(tmp_path / "bad.jpg"), False)
    assert error.value.duration == app.ERROR_SECONDS < 10


def test_the_page_speaks_to_a_pet_owner_and_keeps_the_method_in_about(app, tmp_path):
    """Above the photo box, one line a pet owner reads; the method (and its jargon) in an "About"
    panel below; the bars say which question they answer; Classify with no photo says what to do."""
    blocks = list(app.demo.blocks.values())
    before_photo = blocks[: blocks.index(app.image_input)]
    top = " ".join(block.value for block in before_photo if isinstance(block, gr.Markdown))
    for jargon in ("MobileNetV2", "Keras", "ImageNet", "Mahalanobis", "pooled", "classifier"):
        assert jargon not in top, jargon
    assert len(top.split()) <= 20, top
    (about,) = [block for block in blocks if isinstance(block, gr.Accordion) and block.label == "About"]
    assert blocks.index(about) > blocks.index(app.image_input)
    assert DESCRIPTION in app.ABOUT
    assert any(isinstance(block, gr.Markdown) and block.value == app.ABOUT for block in blocks)
    assert app.label_output.label == "If it is a cat or a dog"
    message, *rest = app.classify(None, False)
    assert message == "Add a photo first: upload one, paste one, or pick an example below."
    assert rest[:2] == [None, None]
    photo = tmp_path / "drawn.png"
    drawn_photo("cat", 5, size=96).save(photo)
    assert app.classify(_upload(photo), False)[:2] == app.show(_upload(photo), False)[:2]


def test_cli_demo_share_asks_gradio_for_a_public_link(tiny_model_dir, monkeypatch):
    from dogcat.cli import main

    launched = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kwargs: launched.append(kwargs))
    monkeypatch.setenv("DOGCAT_MODEL", "")  # the demo sets it: recorded here, so it is undone after this test
    gc.disable()  # as in _load_app: the demo builds its gr.Blocks in this long pytest process
    try:
        assert main(["demo", "--share", "--model", str(tiny_model_dir / MODEL_FILENAME)]) == 0
        assert main(["demo", "--model", str(tiny_model_dir / MODEL_FILENAME)]) == 0
    finally:
        gc.enable()
    assert [kwargs["share"] for kwargs in launched] == [True, False]

    # From a terminal (fd 2, which capsys is not): the tiny model has no detector, and that is said
    # exactly once, not lost in the stderr parked while the app loads Keras, and no Keras chatter.
    probe = ("import gradio; gradio.Blocks.launch = lambda self, **kwargs: None; from dogcat.cli import main; "
             f"main(['demo', '--model', {str(tiny_model_dir / MODEL_FILENAME)!r}])")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (warning,) = result.stderr.splitlines()
    assert warning.startswith("dogcat: warning: no ")


def test_every_example_is_readable_and_licensed(app):
    examples = sorted(APP_FILE.parent.joinpath("examples").glob("*.jpg"))
    assert sorted(app.EXAMPLES) == examples
    licences = (APP_FILE.parent / "examples" / "LICENSES.md").read_text(encoding="utf-8")
    for path in examples:
        assert f"`{path.name}`" in licences, f"{path.name} has no licence entry"
        assert sum(app.predict(str(path))[1].values()) == pytest.approx(1.0, abs=1e-5)


# --- building the Space -------------------------------------------------------------------------


@pytest.fixture
def measured_model(tmp_path, tiny_model_dir):
    """The tiny model with a test_metrics.json of made-up numbers: the card must show these."""
    import json

    folder = tmp_path / "run"
    folder.mkdir()
    for name in (MODEL_FILENAME, CLASS_NAMES_FILENAME):
        (folder / name).write_bytes((tiny_model_dir / name).read_bytes())
    metrics = {"count": 16, "accuracy": 0.8125, "log_loss": 0.4321, "class_names": ["cat", "dog"],
               "per_class": {"cat": {"precision": 0.75, "recall": 0.875}, "dog": {"precision": 0.857, "recall": 0.75}},
               "confusion_matrix": [[7, 1], [2, 6]]}
    (folder / "test_metrics.json").write_text(json.dumps(metrics))
    return folder


def _front_matter(readme: str) -> dict:
    assert readme.startswith("---\n")
    return yaml.safe_load(readme.split("---\n")[1])


@needs_tensorflow
def test_space_folder_has_everything_a_gradio_space_needs(tmp_path, measured_model):
    import importlib.metadata

    out = build_space(tmp_path / "space", measured_model)
    assert (out / "app.py").read_bytes() == APP_FILE.read_bytes()  # one app, not two
    readme = (out / "README.md").read_text(encoding="utf-8")
    front = _front_matter(readme)
    assert front["sdk"] == "gradio"
    assert front["sdk_version"] == gr.__version__
    assert front["app_file"] == "app.py"
    assert front["python_version"] == f"{sys.version_info.major}.{sys.version_info.minor}"
    for key in ("title", "emoji", "colorFrom", "colorTo", "license", "short_description"):
        assert front[key], key
    assert len(front["short_description"]) <= 60  # the Hub's limit
    # The card's numbers come from the model's test_metrics.json.
    assert "**0.8125** (13 / 16)" in readme
    assert "0.4321" in readme
    assert "+/-19.1 percentage points" in readme  # 1.96 * sqrt(0.8125 * 0.1875 / 16)
    assert "cat or dog for **any** image" in readme
    assert ".onnx" not in readme  # this model has no export: the Space serves the .keras file

    pins = dict(line.split("==") for line in (out / "requirements.txt").read_text().split())
    assert list(pins) == list(REQUIREMENTS)
    assert "tensorflow" not in pins  # CPU-only wheel
    for name, pinned in pins.items():
        assert pinned == importlib.metadata.version(name), name

    source = REPO / "dogcat"
    vendored = {p.relative_to(out / "dogcat") for p in (out / "dogcat").rglob("*") if p.is_file()}
    # the modules and their data (the ImageNet groups table the detector reads)
    assert vendored == {p.relative_to(source) for pattern in ("*.py", "*.tsv") for p in source.glob(pattern)}
    assert not any(part in NOT_VENDORED for p in vendored for part in p.parts)
    assert (out / "models" / MODEL_FILENAME).read_bytes() == (measured_model / MODEL_FILENAME).read_bytes()
    assert (out / "models" / CLASS_NAMES_FILENAME).is_file()
    assert {p.name for p in (out / "examples").iterdir()} == {p.name for p in (APP_FILE.parent / "examples").iterdir()}
    rules = (out / ".gitattributes").read_text()
    assert "*.keras filter=lfs" in rules
    assert "*.npz filter=lfs" in rules  # the detector and the ImageNet head: the Hub refuses binaries outside LFS


def test_card_recipe_is_read_from_the_models_config(space):
    from dogcat.config import load_config

    config = load_config(REPO / "models" / "config.toml")
    readme = (space / "README.md").read_text(encoding="utf-8")
    assert f"up to {config.train.epochs} epochs in all; batch {config.train.batch_size}" in readme
    assert f"Input {config.data.image_size} px" in readme


def test_space_of_an_exported_model_runs_without_keras_or_tensorflow(space):
    """The shipped model has a matching ONNX twin, so its Space installs and imports no TensorFlow."""
    pins = dict(line.split("==") for line in (space / "requirements.txt").read_text().split())
    assert list(pins) == list(ONNX_REQUIREMENTS)
    assert (space / "models" / "dog_cat_classifier.onnx").is_file()
    assert (space / "models" / "dog_cat_detector.npz").is_file()
    readme = (space / "README.md").read_text(encoding="utf-8")  # the card names what serves, and the detector
    assert "- `models/dog_cat_classifier.onnx` (" in readme
    assert "what the app serves, with ONNX Runtime" in readme
    assert "- `models/dog_cat_detector.npz`: the \"neither\" detector" in readme
    assert DESCRIPTION in readme  # the one description of the detector, as the apps give it
    assert (space / "models" / "imagenet_head.npz").is_file()  # what the detector reads
    # Import the app with keras and tensorflow made unimportable: it must build and answer.
    probe = (
        "import sys; sys.modules.update(keras=None, tensorflow=None); import runpy; "
        "app = runpy.run_path('app.py', run_name='space_probe'); "
        "print(app['CLASSIFIER'].runtime, app['CLASSIFIER'].verdict_warning, "
        "[app['predict'](f'examples/{name}')[0] for name in ('cat-chelsea.jpg', 'astronaut.jpg')])"
    )
    result = subprocess.run([sys.executable, "-c", probe], cwd=space, env=_space_env(0),
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    # The detector reads the ONNX twin's features: verdicts without Keras.
    runtime, warning, verdicts = result.stdout.strip().splitlines()[-1].split(" ", 2)
    assert (runtime, warning) == ("onnx", "None")
    assert re.fullmatch(r"\['Cat: looks like an? [^']+ cat \(\d+%\)', 'Neither a cat nor a dog: looks like an? [^']+ \(\d+%\)'\]",
                        verdicts), verdicts


@needs_tensorflow
def test_card_says_when_nothing_was_measured(tmp_path, tiny_model_dir):
    readme = (build_space(tmp_path / "space", tiny_model_dir) / "README.md").read_text(encoding="utf-8")
    assert "Not measured: no `test_metrics.json`" in readme
    assert "accuracy (" not in readme


@needs_tensorflow
def test_rebuilding_into_a_clone_of_the_space_keeps_its_other_files(tmp_path, tiny_model_dir):
    import json

    out = tmp_path / "clone"
    (out / ".git").mkdir(parents=True)
    (out / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    (out / ".gitattributes").write_text("*.pkl filter=lfs diff=lfs merge=lfs -text\n")
    build_space(out, tiny_model_dir)
    (out / "notes.txt").write_text("mine")  # the user's, added after the first build
    marker = json.loads((out / ".dogcat-space.json").read_text())
    (out / "dogcat" / "stale.py").write_text("# from an older build")  # as if an older build wrote it
    (out / ".dogcat-space.json").write_text(json.dumps({"files": [*marker["files"], "dogcat/stale.py"]}))
    build_space(out, tiny_model_dir)
    build_space(out, tiny_model_dir)  # twice: idempotent
    assert (out / ".git" / "HEAD").read_text() == "ref: refs/heads/main\n"
    assert (out / "notes.txt").read_text() == "mine"
    assert not (out / "dogcat" / "stale.py").exists()
    rules = (out / ".gitattributes").read_text().splitlines()
    assert rules.count("*.pkl filter=lfs diff=lfs merge=lfs -text") == 1
    assert "*.keras filter=lfs diff=lfs merge=lfs -text" in rules
    assert not [p for p in out.iterdir() if p.name.startswith(".dogcat-space-")]  # no staging left


def test_refuses_to_build_over_the_source_tree(tiny_model_dir):
    with pytest.raises(SpaceError, match="source tree"):
        build_space(REPO, tiny_model_dir)


@needs_tensorflow
def test_cli_space_build_and_a_missing_model(tmp_path, tiny_model_dir, capsys):
    from dogcat.cli import main

    assert main(["space", "build", str(tmp_path / "s"), "--model", str(tiny_model_dir)]) == 0
    assert (tmp_path / "s" / "app.py").is_file()
    assert "hf upload" in capsys.readouterr().out
    assert main(["space", "build", str(tmp_path / "t"), "--model", str(tmp_path / "nope.keras")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dogcat: error: ")
    assert len(err.strip().splitlines()) == 1


# --- the built Space, served: a real server and a real client -------------------------------------


def _space_env(port: int, keep_backend: bool = False) -> dict[str, str]:
    """The environment of a server under test: a Space has no $DOGCAT_MODEL nor $KERAS_BACKEND (so TensorFlow)."""
    dropped = ("DOGCAT_MODEL", "PYTHONPATH") + (() if keep_backend else ("KERAS_BACKEND",))
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(GRADIO_SERVER_NAME="127.0.0.1", GRADIO_SERVER_PORT=str(port), GRADIO_ANALYTICS_ENABLED="False",
               HF_HUB_OFFLINE="1", NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
    return env


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> Path:
    """A Space built with the shipped model, as a user would push it."""
    return build_space(tmp_path_factory.mktemp("space") / "out")


@pytest.fixture(scope="module")
def space_client(space, tmp_path_factory):
    """`python app.py` in the Space folder, serving on 127.0.0.1:<free port>; always stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("space_log") / "server.log"
    with serving([sys.executable, "app.py"], f"{url}/gradio_api/info", log, SERVER_START_TIMEOUT,
                 cwd=space, env=_space_env(port)):
        yield gradio_client.Client(url, verbose=False)


def _probabilities(result: dict) -> dict[str, float]:
    """gr.Label's API value -> {label: probability}."""
    return {item["label"]: item["confidence"] for item in result["confidences"]}


def _classify(client, path: Path, explain: bool = False) -> tuple[str, str, dict[str, float], str | None]:
    """(the verdict in words, the top class, the probabilities, the overlay's local file or None) from /predict."""
    verdict, result, _, looked = client.predict(gradio_client.handle_file(str(path)), explain, api_name="/predict")
    return verdict["label"], result["label"], _probabilities(result), looked


@pytest.mark.slow
@needs_tensorflow
def test_the_cards_python_example_runs_against_the_served_space(space, space_client):
    """The README's snippet, as it is, with only the Space's address and a photo filled in."""
    readme = (space / "README.md").read_text(encoding="utf-8")
    snippet = readme.split("## Use it from Python", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert '"USER/SPACE"' in snippet
    assert 'handle_file("photo.jpg")' in snippet
    rocket = space / "examples" / "rocket.jpg"
    code = snippet.replace('"USER/SPACE"', repr(space_client.src)).replace('"photo.jpg"', repr(str(rocket)))
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    printed = result.stdout.splitlines()[-2:]  # after gradio_client's own "Loaded as API: ..."
    verdict, seen = printed[0].split(" ", 1)
    looks_like, probability = seen.rsplit(" ", 1)
    assert verdict == "neither"
    assert looks_like  # ImageNet's top class, by its everyday name: "sports car"
    assert 0 < float(probability) < 1
    assert printed[1].startswith("Neither a cat nor a dog: looks like ")


@pytest.mark.slow
@needs_tensorflow
def test_space_imports_its_vendored_package(space):
    probe = subprocess.run([sys.executable, "-c", "import dogcat; print(dogcat.__file__)"], cwd=space,
                           env=_space_env(0), capture_output=True, text=True, check=True, timeout=60)
    assert Path(probe.stdout.strip()) == space / "dogcat" / "__init__.py"


@pytest.mark.slow
@needs_tensorflow
def test_space_classifies_the_example_cat_and_refuses_a_corrupt_file(space, space_client, tmp_path):
    from PIL import Image

    cat = space / "examples" / "cat-chelsea.jpg"
    verdict, label, probabilities, looked = _classify(space_client, cat, explain=True)
    assert (verdict.split(":")[0], label) == ("Cat", "cat")
    assert verdict.startswith("Cat: looks like ")
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    with Image.open(looked) as shown, Image.open(cat) as photo:
        assert shown.size == photo.size  # the ONNX-only Space draws the heatmap too
    verdict, label, _, looked = _classify(space_client, space / "examples" / "rocket.jpg")
    assert verdict.startswith("Neither a cat nor a dog: looks like ")
    assert looked is None

    corrupt = tmp_path / "corrupt.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG")
    with pytest.raises(gradio_client.exceptions.AppError) as caught:
        _classify(space_client, corrupt)
    message = str(caught.value)
    assert message.startswith("Cannot read corrupt.jpg: ")
    _assert_one_clean_line(message, tmp_path)


@pytest.mark.slow
@pytest.mark.shared_data
@needs_tensorflow
def test_space_classifies_real_photos_one_by_one_and_twenty_at_once(space_client, shared_data):
    photos = {"cat": shared_data / REAL_CAT, "dog": shared_data / REAL_DOG}
    answers = {}
    for truth, path in photos.items():
        verdict, label, probabilities, _ = _classify(space_client, path)
        assert verdict.split(": looks like ")[0] == truth.capitalize()  # and, for a breed, what it looks like
        assert label == truth
        assert set(probabilities) == {"cat", "dog"}
        assert probabilities[truth] > 0.9
        assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
        answers[truth] = probabilities

    # 20 requests in flight together, cats and dogs interleaved: each must get its own answer.
    truths = ["cat", "dog"] * 10
    jobs = [space_client.submit(gradio_client.handle_file(str(photos[t])), api_name="/predict") for t in truths]
    results = [job.result(timeout=120) for job in jobs]  # all were submitted before the first is awaited
    assert [r[1]["label"] for r in results] == truths
    for truth, result in zip(truths, results, strict=True):
        for name, p in _probabilities(result[1]).items():
            assert p == pytest.approx(answers[truth][name], abs=1e-5)


# --- `dogcat demo` -------------------------------------------------------------------------------


def test_cli_demo_refuses_a_missing_model_in_one_line(tmp_path, capsys):
    from dogcat.cli import main

    assert main(["demo", "--model", str(tmp_path / "nope.keras")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("dogcat: error: Model file not found")
    assert len(err.strip().splitlines()) == 1


DEMO_LOGS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def demo_url(tiny_model_dir, tmp_path_factory):
    """`dogcat demo` with the tiny model, serving on 127.0.0.1:<free port>; always stopped."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("demo")
    command = [sys.executable, "-m", "dogcat", "demo", "--host", "127.0.0.1", "--port", str(port),
               "--model", str(tiny_model_dir / MODEL_FILENAME)]
    with serving(command, f"{url}/gradio_api/info", folder / "demo.log", SERVER_START_TIMEOUT,
                 cwd=folder, env=_space_env(port, keep_backend=True)):
        DEMO_LOGS[url] = folder / "demo.log"  # what the console showed, for the test that reads it
        yield url


@pytest.mark.slow
def test_cli_demo_serves_the_app(demo_url, tmp_path):
    photo = tmp_path / "drawn.png"
    drawn_photo("cat", 5, size=64).save(photo)
    _, label, probabilities, _ = _classify(gradio_client.Client(demo_url, verbose=False), photo)
    assert set(probabilities) == {"cat", "dog"}
    assert label == max(probabilities, key=probabilities.get)
    assert sum(probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    console = DEMO_LOGS[demo_url].read_text()
    assert f"* Running on {demo_url}" in console
    assert "* For a temporary public link: dogcat demo --share" in console
    assert "share=True" not in console  # Gradio's own hint names an argument dogcat users never write


@pytest.mark.slow
def test_twenty_clients_asking_for_the_same_examples_overlay_all_get_it(demo_url):
    """20 clients x 5 requests of the shipped cat example with the overlay on: 7 of 100 failed
    ("Too little data for declared Content-Length") while Gradio rewrote the one cached overlay file."""
    from concurrent.futures import ThreadPoolExecutor

    example = REPO / "demos" / "examples" / "cat-chelsea.jpg"

    def client_run(_: int) -> list[tuple[int, int]]:
        client = gradio_client.Client(demo_url, verbose=False)
        sizes = []
        for _ in range(5):
            looked = _classify(client, example, explain=True)[3]
            with Image.open(looked) as image:
                image.load()  # the whole PNG arrived
                sizes.append(image.size)
        return sizes

    with ThreadPoolExecutor(20) as pool:
        sizes = [size for run in pool.map(client_run, range(20)) for size in run]
    assert sizes == [Image.open(example).size] * 100


@pytest.mark.slow
def test_the_served_demo_refuses_uploads_over_50_mib_before_storing_them(demo_url):
    """Gradio's own upload route enforces dogcat's MAX_FILE_BYTES (launch's max_file_size): the
    server stops reading at the limit and answers 413, so a huge upload never reaches the disk
    or the decoder (Streamlit's twin: --server.maxUploadSize, tests/test_decode_hardening.py)."""
    import httpx

    from dogcat.preprocessing import MAX_FILE_BYTES

    assert MAX_FILE_BYTES == 50 * 2**20  # the limit the README promises

    def upload(size: int) -> httpx.Response:
        files = {"files": ("photo.jpg", b"\xff" * size, "image/jpeg")}
        return httpx.post(f"{demo_url}/gradio_api/upload", files=files, timeout=60, trust_env=False)

    refused = upload(MAX_FILE_BYTES + 1)
    assert refused.status_code == 413
    assert f"maximum allowed size of {MAX_FILE_BYTES} bytes" in refused.text
    accepted = upload(MAX_FILE_BYTES)  # exactly at the limit is allowed, as in dogcat.preprocessing
    assert accepted.status_code == 200, accepted.text
    assert len(accepted.json()) == 1
