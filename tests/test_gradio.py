"""The Gradio demo (demos/gradio_app.py) and `dogcat demo`.

In-process tests load the app with a tiny untrained model; the slow tests start `dogcat demo` as a
server on 127.0.0.1 and talk to it with gradio_client. The Space that serves this app is test_space.py's.
"""

from __future__ import annotations

import gc
import importlib.util
import io
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

from dogcat.artifacts import MODEL_FILENAME  # noqa: E402
from dogcat.detector import DESCRIPTION  # noqa: E402
from dogcat.verdict import row_columns  # noqa: E402
from tests.helpers import (  # noqa: E402
    REPO,
    SERVER_START_TIMEOUT,
    assert_one_clean_line,
    classify_by_api,
    drawn_photo,
    gradio_server_env,
)
from tests.servers import free_port, serving  # noqa: E402

APP_FILE = REPO / "demos" / "gradio_app.py"


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
    assert_one_clean_line(caught.value.message, tmp_path)


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
    assert_one_clean_line(message, upload)


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
                 cwd=folder, env=gradio_server_env(port, keep_backend=True)):
        DEMO_LOGS[url] = folder / "demo.log"  # what the console showed, for the test that reads it
        yield url


@pytest.mark.slow
def test_cli_demo_serves_the_app(demo_url, tmp_path):
    photo = tmp_path / "drawn.png"
    drawn_photo("cat", 5, size=64).save(photo)
    _, label, probabilities, _ = classify_by_api(gradio_client.Client(demo_url, verbose=False), photo)
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
            looked = classify_by_api(client, example, explain=True)[3]
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
    or the decoder (Streamlit's twin: --server.maxUploadSize, tests/test_preprocessing_limits.py)."""
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
