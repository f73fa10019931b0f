"""Issue #13, items 1-3: hostile bytes, memory and unreadable paths each give one file's error, never a crash.

The crash fixtures were found by mutating generated JPEG and PNG bytes with Pillow's formats
unrestricted: Pillow takes crash-qoi.jpg for QOI and raises IndexError while decoding it, and
crash-dds.jpg for DDS and raises NotImplementedError while opening it. postscript.jpg is an EPS
file (Pillow's own EPS writer), which unrestricted Pillow would hand to Ghostscript.
"""

from __future__ import annotations

import io
import json
import os
import random
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import EpsImagePlugin, Image, ImageFile

from dogcat import preprocessing
from dogcat.cli import _app_command, main
from dogcat.data import expand_paths
from dogcat.preprocessing import MAX_FILE_BYTES, ImageError, decode_image, load_image
from tests.imagegen import encode, make_huge_png, make_pet

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CRASHES = {"crash-qoi.jpg": ("QOI", IndexError), "crash-dds.jpg": ("DDS", NotImplementedError)}
SIZE = 32  # small output: the fuzz loop measures decoding, not resizing


# --- 1. only supported decoders; any failure is that file's ImageError ---------------------------


def _mutate(data: bytes, rng: random.Random) -> bytes:
    """Byte flips, inserted and deleted runs, truncation, and (as fuzzers' dictionaries do)
    another format's magic written over the start."""
    data = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.randrange(6)
        at = rng.randrange(len(data))
        if op == 0:
            data[at] = rng.randrange(256)
        elif op == 1:
            data[at] ^= 1 << rng.randrange(8)
        elif op == 2:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
        elif op == 3:
            del data[at : at + rng.randint(1, 64)]
        elif op == 4:
            del data[max(at, 1) :]
        else:
            magic = rng.choice([b"qoif", b"DDS |\x00\x00\x00", b"%!PS-Adobe-3.0 EPSF-3.0\n", b"II*\x00", b"GIF89a", b"BM"])
            data[: len(magic)] = magic
        if not data:
            data = bytearray(b"\xff")
    return bytes(data)


def test_thousands_of_mutated_jpeg_png_webp_files_give_pixels_or_an_image_error():
    seeds = [
        encode(make_pet("cat", 1, (24, 18)), "JPEG", quality=80),
        encode(make_pet("dog", 2, (24, 18)), "JPEG", quality=70, progressive=True),
        encode(make_pet("dog", 3, (20, 16)), "PNG"),
        encode(make_pet("cat", 4, (20, 16)).convert("P"), "PNG", transparency=0),
        encode(make_pet("cat", 5, (24, 18)), "WEBP", quality=80),
        encode(make_pet("dog", 6, (24, 18)), "WEBP", lossless=True),
    ]
    rng = random.Random(13)
    outcomes = {"pixels": 0, "error": 0}
    started = time.monotonic()
    for _ in range(5000):
        data = _mutate(rng.choice(seeds), rng)
        try:
            x = decode_image(data, SIZE)
        except ImageError as error:
            message = str(error)
            outcomes["error"] += 1
            assert "\n" not in message
        else:
            assert x.dtype == np.uint8
            assert x.shape == (SIZE, SIZE, 3)
            outcomes["pixels"] += 1
    assert outcomes["pixels"] > 100
    assert outcomes["error"] > 100
    assert time.monotonic() - started < 60


@pytest.mark.parametrize("name", sorted(CRASHES))
def test_crash_files_are_one_image_error(name):
    data = (FIXTURES / name).read_bytes()
    fmt, crash = CRASHES[name]
    # The fixture still crashes Pillow when its formats are not restricted.
    if fmt == "QOI":
        image = Image.open(io.BytesIO(data))
        assert image.format == fmt
        with pytest.raises(crash):
            image.load()
    else:
        assert data.startswith(b"DDS ")
        with pytest.raises(crash):
            Image.open(io.BytesIO(data))
    with pytest.raises(ImageError, match="not a supported format") as info:
        decode_image(data)
    assert "\n" not in str(info.value)
    with pytest.raises(ImageError):
        decode_image(FIXTURES / name)


def test_a_decoder_crash_is_that_files_image_error(monkeypatch):
    """The boundary itself: whatever a supported decoder raises becomes an ImageError."""

    def broken_load(self):
        raise IndexError("index out of range")

    monkeypatch.setattr(ImageFile.ImageFile, "load", broken_load)
    with pytest.raises(ImageError, match=r"unreadable image \(IndexError: index out of range\)"):
        decode_image(encode(make_pet("cat", 1), "PNG"))


def test_postscript_named_jpg_never_reaches_ghostscript(monkeypatch):
    opened = []
    original = EpsImagePlugin.EpsImageFile._open

    def spy(self):
        opened.append(True)
        return original(self)

    monkeypatch.setattr(EpsImagePlugin.EpsImageFile, "_open", spy)
    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", lambda *a, **k: pytest.fail("Ghostscript was run"))
    data = (FIXTURES / "postscript.jpg").read_bytes()
    assert Image.open(io.BytesIO(data)).format == "EPS"
    assert opened
    opened.clear()
    for source in (data, FIXTURES / "postscript.jpg"):
        with pytest.raises(ImageError, match="not a supported format"):
            decode_image(source)
    with pytest.raises(ImageError, match="not a supported format"):  # a caller's own EPS image too
        decode_image(Image.open(io.BytesIO(data)))
    opened.pop()  # that Image.open was the test's own
    assert not opened


def test_predict_json_on_a_folder_with_crash_files_answers_every_file(tmp_path, kaggle_folder, tiny_model_dir, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in (*CRASHES, "postscript.jpg"):
        shutil.copy(FIXTURES / name, folder / name)
    for name in ("cat.0.jpg", "dog.0.jpg"):
        shutil.copy(kaggle_folder / name, folder / name)
    code = main(["predict", str(folder), "--json", "--model", str(tiny_model_dir / "dog_cat_classifier.keras")])
    out, err = capsys.readouterr()
    rows = {Path(row["path"]).name: row for row in map(json.loads, out.splitlines())}
    assert code == 1
    assert set(rows) == {"cat.0.jpg", "dog.0.jpg", "crash-qoi.jpg", "crash-dds.jpg", "postscript.jpg"}
    for name in ("cat.0.jpg", "dog.0.jpg"):
        assert rows[name]["error"] is None
        assert set(rows[name]["probabilities"]) == {"cat", "dog"}
    for name in (*CRASHES, "postscript.jpg"):
        assert rows[name]["probabilities"] is None
        assert rows[name]["error"].startswith("not an image, or not a supported")
    assert "Traceback" not in err


# --- 2. memory bounded by design ----------------------------------------------------------------


def test_png_over_the_decode_budget_is_refused_from_the_header(monkeypatch):
    data = make_huge_png(8000, 8000)  # 64 MP: under MAX_PIXELS, over the decode budget
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda self: pytest.fail("pixels were decoded"))
    with pytest.raises(ImageError, match="decode budget"):
        decode_image(data)


def test_a_108_megapixel_jpeg_fits_the_budget_through_draft_decoding():
    data = encode(Image.new("L", (12000, 9000), 90), "JPEG", quality=50)
    assert preprocessing.MAX_DECODE_BYTES < 12000 * 9000 * 5  # a full decode would not fit
    x = decode_image(data)
    assert x.shape == (224, 224, 3)
    assert abs(int(x.mean()) - 90) <= 2
    with pytest.raises(ImageError, match="decode budget"):  # without draft it is refused, not decoded
        load_image(data)


def test_the_budget_counts_the_decoded_mode(monkeypatch):
    monkeypatch.setattr(preprocessing, "MAX_DECODE_BYTES", 100 * 100 * 5)
    decode_image(encode(Image.new("L", (100, 100)), "PNG"))  # 1 + 4 bytes a pixel: exactly the budget
    with pytest.raises(ImageError, match="decode budget"):  # RGB: 4 + 4 bytes a pixel
        decode_image(encode(Image.new("RGB", (100, 100)), "PNG"))


def test_concurrent_decodes_never_exceed_the_process_wide_limit(monkeypatch):
    running, peak, lock = 0, 0, threading.Lock()
    real_load = preprocessing._load_upright

    def slow_load(source, draft_size=None):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        time.sleep(0.05)
        with lock:
            running -= 1
        return real_load(source, draft_size)

    monkeypatch.setattr(preprocessing, "_load_upright", slow_load)
    data = encode(make_pet("dog", 1), "PNG")
    errors = []

    def work(i):
        try:
            decode_image(data, SIZE) if i % 2 else load_image(data, max_side=SIZE)
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors
    assert peak == preprocessing.DECODE_CONCURRENCY  # they did overlap, and no more than allowed


def test_streamlit_upload_limit_is_dogcats():
    command = _app_command(Path("app.py"), "127.0.0.1", 8501)
    at = command.index("--server.maxUploadSize")
    assert command[at + 1] == str(MAX_FILE_BYTES // 2**20) == "50"


# --- 3. unreadable paths: one line each, in predict, evaluate and data prepare --------------------


@pytest.fixture
def denied(monkeypatch):
    """Paths that raise PermissionError when opened or listed, as chmod 000 does for a non-root
    user (the tests may run as root, where chmod alone denies nothing)."""
    paths: set[str] = set()
    real_open, real_scandir = os.open, os.scandir

    def fake_open(path, *args, **kwargs):
        if os.fspath(path) in paths:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_open(path, *args, **kwargs)

    def fake_scandir(path="."):
        if os.fspath(path) in paths:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "scandir", fake_scandir)
    return paths


def _unreadable_entries(folder: Path, denied: set[str], prefix: str = "") -> dict[str, str]:
    """Make each kind of unreadable entry in `folder`; returns {name: expected reason}."""
    (folder / f"{prefix}locked.jpg").write_bytes(encode(make_pet("cat", 7), "JPEG"))
    denied.add(str(folder / f"{prefix}locked.jpg"))
    os.mkfifo(folder / f"{prefix}pipe.jpg")
    (folder / f"{prefix}gone.jpg").symlink_to(folder / "nowhere.jpg")
    return {
        f"{prefix}locked.jpg": "permission denied",
        f"{prefix}pipe.jpg": "not a regular file (a named pipe)",
        f"{prefix}gone.jpg": "broken symbolic link",
    }


def _without_hanging(function, *args):
    """Run `function` on a thread: a fifo that blocks fails the test instead of hanging it."""
    outcome: dict = {}

    def run():
        try:
            outcome["result"] = function(*args)
        except BaseException as error:
            outcome["error"] = error

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=60)
    assert not thread.is_alive(), "blocked (a fifo was opened for reading?)"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def test_each_unreadable_path_gives_its_reason(tmp_path, denied):
    expected = _unreadable_entries(tmp_path, denied)
    (tmp_path / "folder.jpg").mkdir()
    expected["folder.jpg"] = "is a folder, not an image file"
    expected["missing.jpg"] = "no such file"
    for name, reason in expected.items():
        with pytest.raises(ImageError) as info:
            _without_hanging(decode_image, tmp_path / name)
        assert str(info.value) == f"{tmp_path / name}: {reason}"


def test_predict_answers_every_unreadable_path_and_predicts_the_rest(tmp_path, kaggle_folder, tiny_model_dir, denied, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("cat.0.jpg", "dog.0.jpg"):
        shutil.copy(kaggle_folder / name, folder / name)
    expected = _unreadable_entries(folder, denied)
    locked_folder = tmp_path / "locked"
    locked_folder.mkdir()
    shutil.copy(kaggle_folder / "cat.1.jpg", locked_folder / "cat.1.jpg")
    denied.add(str(locked_folder))
    vanished = folder / "vanished.jpg"
    vanished.write_bytes(b"listed, then deleted")
    real_expand = expand_paths

    def expand_then_delete(patterns, *rest):  # the file goes between listing and reading
        found = real_expand(patterns, *rest)
        vanished.unlink()
        return found

    import dogcat.data

    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(dogcat.data, "expand_paths", expand_then_delete)
    try:
        code = _without_hanging(main, ["predict", str(folder), str(locked_folder), "--json",
                                       "--model", str(tiny_model_dir / "dog_cat_classifier.keras")])
    finally:
        monkeypatch.undo()
    out, err = capsys.readouterr()
    rows = {row["path"]: row for row in map(json.loads, out.splitlines())}
    assert code == 1
    for name in ("cat.0.jpg", "dog.0.jpg"):
        assert rows[str(folder / name)]["error"] is None
    for name, reason in expected.items():
        assert rows[str(folder / name)]["error"] == reason
    assert rows[str(vanished)]["error"] == "no such file"
    assert rows[str(locked_folder)]["error"] == "permission denied"
    assert len(err.strip().splitlines()) <= 6
    assert "Traceback" not in err


def test_data_prepare_skips_unreadable_files_with_their_reasons(tmp_path, kaggle_folder, denied):
    from dogcat.data import prepare

    src = tmp_path / "src"
    shutil.copytree(kaggle_folder, src)
    expected = _unreadable_entries(src, denied, prefix="cat.")
    (src / "dog.folder.jpg").mkdir()  # a folder named like an image: searched, not read
    shutil.copy(FIXTURES / "crash-qoi.jpg", src / "dog.crash.jpg")
    (src / "cat").mkdir()
    denied.add(str(src / "cat"))  # a class folder that cannot be listed
    report = _without_hanging(lambda: prepare(src, tmp_path / "out", per_class=5, seed=0, progress=False))
    reasons = {s.source.name: s.reason for s in report.skipped}
    for name, reason in expected.items():
        assert reasons[name] == reason
    assert reasons["dog.crash.jpg"].startswith("not an image, or not a supported format")
    assert reasons["cat"] == "permission denied"
    assert report.written["train"] == {"cat": 3, "dog": 3}  # the unreadable entries left out


def test_evaluate_skips_unreadable_files_with_their_reasons(tmp_path, kaggle_folder, tiny_model_dir, denied):
    from dogcat.evaluate import evaluate
    from dogcat.inference import Classifier

    data = tmp_path / "data"
    for label in ("cat", "dog"):
        (data / label).mkdir(parents=True)
        for index in range(3):
            shutil.copy(kaggle_folder / f"{label}.{index}.jpg", data / label / f"{index}.jpg")
    expected = _unreadable_entries(data / "cat", denied)
    shutil.copy(FIXTURES / "crash-dds.jpg", data / "dog" / "crash.jpg")
    classifier = Classifier.from_path(tiny_model_dir / "dog_cat_classifier.keras")
    metrics = _without_hanging(evaluate, classifier, data, "test")
    reasons = {Path(s["path"]).name: s["reason"] for s in metrics["skipped"]}
    for name, reason in expected.items():
        assert reasons[name] == reason
    assert reasons["crash.jpg"].startswith("not an image, or not a supported format")
    assert metrics["count"] == 6


def test_a_folder_named_like_an_image_is_answered_for_not_skipped(tmp_path):
    (tmp_path / "x.jpg").mkdir()
    (tmp_path / "sub").mkdir()  # a plain folder matched by a glob stays out, as before
    assert expand_paths([str(tmp_path / "x.jpg")]) == ([str(tmp_path / "x.jpg")], [])
    assert expand_paths([str(tmp_path / "*")]) == ([str(tmp_path / "x.jpg")], [])
    with pytest.raises(ImageError, match="is a folder, not an image file"):
        decode_image(tmp_path / "x.jpg")


def test_streamlit_labels_the_photos_uploaded_with_crash_files(monkeypatch, tiny_model_dir):
    pytest.importorskip("streamlit")
    from streamlit.testing.v1 import AppTest

    from tests.conftest import REPO, _drawn_photo

    monkeypatch.setenv("DOGCAT_MODEL", str(tiny_model_dir / "dog_cat_classifier.keras"))
    app = AppTest.from_file(str(REPO / "demos" / "streamlit_app.py"), default_timeout=120).run()
    good = io.BytesIO()
    _drawn_photo("cat", 1).save(good, format="JPEG")
    files = [("good.jpg", good.getvalue())] + [(name, (FIXTURES / name).read_bytes()) for name in (*CRASHES, "postscript.jpg")]
    app.file_uploader(key="uploads").set_value([(name, data, "image/jpeg") for name, data in files])
    app.run()
    assert not app.exception
    assert len(app.subheader) == 1  # the good photo's verdict
    assert sorted(e.value.split(":")[0] for e in app.error) == ["crash-dds.jpg", "crash-qoi.jpg", "postscript.jpg"]
