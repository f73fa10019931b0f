"""The Streamlit page through streamlit.testing.v1.AppTest (no browser)."""

from __future__ import annotations

import io
import json
import re
import sys

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from dogcat.detector import DESCRIPTION
from dogcat.preprocessing import MAX_FILE_BYTES
from tests.helpers import REAL_CAT, REAL_DOG, REPO, drawn_photo

APP = str(REPO / "demos" / "streamlit_app.py")


def _jpeg(label: str, index: int) -> bytes:
    buffer = io.BytesIO()
    drawn_photo(label, index, size=96).save(buffer, format="JPEG")  # over predict.min_side
    return buffer.getvalue()


@pytest.fixture
def tiny_app(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("DOGCAT_MODEL", str(tiny_model_dir / "dog_cat_classifier.keras"))
    app = AppTest.from_file(APP, default_timeout=120)
    app.run()
    return app


def _upload(app: AppTest, files: list[tuple[str, bytes]]) -> AppTest:
    app.file_uploader(key="uploads").set_value([(name, data, "image/jpeg") for name, data in files])
    return app.run()


def test_empty_page_invites_an_upload(tiny_app):
    assert not tiny_app.exception
    assert "Upload one or more" in tiny_app.info[0].value
    assert tiny_app.slider(key="threshold").value == 0.6  # Config().predict.threshold


def test_each_photo_gets_a_label_and_both_probabilities(tiny_app):
    app = _upload(tiny_app, [("a.jpg", _jpeg("cat", 1)), ("b.jpg", _jpeg("dog", 2))])
    assert not app.exception
    assert len(app.subheader) == 2
    bars = [bar.value for bar in app.get("progress")]
    assert len(bars) == 4
    # The bars answer another question than the heading ("Neither..." above "dog: 87%"): they say which.
    assert [c.value for c in app.caption].count("If it is a cat or a dog:") == 2
    assert bars[0] + bars[1] == pytest.approx(100, abs=1)  # st.progress stores percent
    assert len(app.get("image")) == 2


def test_phone_photos_are_accepted_and_classified(tiny_app):
    from tests.imagegen import encode

    assert {"heic", "heif", "avif"} <= {kind.lstrip(".") for kind in tiny_app.file_uploader(key="uploads").proto.type}
    photo = drawn_photo("cat", 1, size=96)
    app = _upload(tiny_app, [("IMG_0001.HEIC", encode(photo, "HEIF", quality=90)),
                             ("IMG_0002.avif", encode(photo, "AVIF", quality=90))])
    assert not app.exception
    assert not app.error, [e.value for e in app.error]
    assert len(app.subheader) == 2
    # Captions are Markdown: the names are escaped so that they render as typed ("IMG_0001.HEIC").
    assert [image.proto.imgs[0].caption for image in app.get("image")] == ["IMG\\_0001.HEIC", "IMG\\_0002.avif"]


def test_show_where_it_looked_adds_an_overlay_per_photo(tiny_app):
    files = [("a.jpg", _jpeg("cat", 1)), ("b.jpg", _jpeg("dog", 2)), ("bad.jpg", b"not a picture")]
    app = _upload(tiny_app, files)
    assert len(app.get("image")) == 2
    app.toggle(key="explain").set_value(True).run()
    assert not app.exception
    images = app.get("image")
    assert len(images) == 4  # each good photo, and its heatmap beside it
    captions = [image.proto.imgs[0].caption for image in images]
    assert sum(c.startswith("Where it looked for a ") for c in captions) == 2
    assert len(app.error) == 1  # the bad upload still gets its one line
    app.toggle(key="explain").set_value(False).run()
    assert len(app.get("image")) == 2


def test_with_the_heatmap_each_upload_is_decoded_once_for_the_model_and_once_for_both_pictures(tiny_app, monkeypatch):
    """The heatmap is drawn over the preview, not over a third decode of the upload (a
    large PNG costs a decode's memory each time). The model still decodes the upload's own bytes."""
    from dogcat import preprocessing

    opened = []
    real_open = preprocessing._open
    monkeypatch.setattr(preprocessing, "_open", lambda source: opened.append(source) or real_open(source))
    tiny_app.toggle(key="explain").set_value(True).run()
    files = [("a.jpg", _jpeg("cat", 1)), ("b.jpg", _jpeg("dog", 2))]
    app = _upload(tiny_app, files)
    assert not app.exception
    assert len(app.get("image")) == 4  # each photo and its heatmap
    decoded = [source if isinstance(source, bytes) else source.getvalue() for source in opened]
    assert sorted(decoded) == sorted(data for _, data in files for _ in range(2))
    assert sum(isinstance(source, bytes) for source in opened) == 2  # the model's: the upload's bytes, as in training


def test_the_heatmap_over_the_preview_is_the_heatmap_over_the_upload():
    """What the page now draws is what it drew when the overlay decoded the upload again: the preview
    is upright already, so it is not turned twice, and it is no smaller than the overlay."""
    import numpy as np
    from PIL import Image

    from dogcat.explain import overlay
    from dogcat.preprocessing import load_image
    from tests.imagegen import encode, make_exif_jpeg, quadrants

    palette = Image.new("P", (1500, 1000), 0)
    palette.putpalette([230, 120, 40] * 128 + [10, 20, 30] * 128)
    palette.paste(200, (0, 0, 700, 500))
    heatmap = np.random.default_rng(0).random((7, 7)).astype(np.float32)
    for data in (make_exif_jpeg(quadrants((1200, 800)), 6), encode(palette, "PNG", transparency=0), _jpeg("cat", 1)):
        preview = load_image(io.BytesIO(data), draft_size=512, max_side=512)
        again = overlay(io.BytesIO(data), heatmap, max_side=512)
        np.testing.assert_array_equal(np.asarray(overlay(preview, heatmap, max_side=512)), np.asarray(again))


def test_threshold_decides_when_the_page_is_not_sure(tiny_app):
    # The untrained tiny model is never confident: every top probability is close to 0.5.
    app = _upload(tiny_app, [("a.jpg", _jpeg("cat", 1))])
    assert app.subheader[0].value.startswith("Not sure (maybe ")
    app.slider(key="threshold").set_value(0.5).run()
    assert app.subheader[0].value in {"Cat", "Dog"}


def test_bad_uploads_get_one_error_line_each_and_good_ones_are_still_predicted(tiny_app):
    good = _jpeg("cat", 3)
    app = _upload(tiny_app, [
        ("good.jpg", good),
        ("half.jpg", good[: len(good) // 2]),
        ("notes.jpg", b"this is a text file"),
        ("huge.png", b"\x89PNG" + bytes(MAX_FILE_BYTES)),
    ])
    assert not app.exception
    errors = [e.value for e in app.error]
    assert len(errors) == 3
    assert errors[0].startswith("half.jpg: truncated")
    assert errors[1].startswith("notes.jpg: not an image")
    assert errors[2].startswith("huge.png: file is over the 50 MiB limit")
    assert all("\n" not in e for e in errors)
    assert len(app.subheader) == 1  # good.jpg


def test_about_panel_reads_accuracy_from_the_model_card(monkeypatch):
    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    card = json.loads((REPO / "models" / "test_metrics.json").read_text())
    app = AppTest.from_file(APP, default_timeout=120).run()
    about = " ".join(m.value for m in app.sidebar.markdown)
    assert f"{card['accuracy']:.1%} accuracy" in about
    assert f"{card['count']} held-out" in about
    assert DESCRIPTION in about  # the one description of the detector (dogcat.detector)


@pytest.mark.shared_data
def test_shipped_model_labels_real_photos(monkeypatch, shared_data):
    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    app = AppTest.from_file(APP, default_timeout=120).run()
    app = _upload(app, [("cat.jpg", (shared_data / REAL_CAT).read_bytes()),
                        ("dog.jpg", (shared_data / REAL_DOG).read_bytes())])
    assert [s.value for s in app.subheader] == ["Cat", "Dog"]


def test_shipped_model_says_neither_for_a_photo_of_neither(monkeypatch):
    """The demo's astronaut (public domain): the classifier alone calls it a cat."""
    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    app = AppTest.from_file(APP, default_timeout=120).run()
    app = _upload(app, [("astronaut.jpg", (REPO / "demos" / "examples" / "astronaut.jpg").read_bytes())])
    assert not app.exception
    assert [s.value for s in app.subheader] == ["Neither a cat nor a dog"]
    assert not app.warning  # the shipped detector matches the shipped model
    # Under the verdict: what ImageNet's classes see, worded as a hint for a pet owner.
    assert any(re.fullmatch(r"Looks like an? .+ \(\d+%\)", m.value) for m in app.markdown)
    captions = [c.value for c in app.caption]
    assert "A general photo recognizer's guess at what it shows: a hint, not a claim." in captions
    assert not any("ImageNet" in caption for caption in captions)


def test_the_heading_never_contradicts_the_bars(monkeypatch):
    """At the slider's top a confident photo still reads "Cat", and no bar rounds up to 100% or to the threshold."""
    import importlib.util

    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    app = AppTest.from_file(APP, default_timeout=120).run()
    slider = app.slider(key="threshold")
    assert slider.max < 1
    slider.set_value(slider.max).run()
    app = _upload(app, [("cat.jpg", (REPO / "demos" / "examples" / "cat-chelsea.jpg").read_bytes())])
    assert [s.value for s in app.subheader] == ["Cat"]
    texts = [bar.proto.text for bar in app.get("progress")]
    assert texts[0].startswith("cat: 99.")
    assert not texts[0].endswith("100.0%")

    spec = importlib.util.spec_from_file_location("streamlit_page", APP)
    page = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "streamlit_page", page)  # its dataclass looks itself up there
    spec.loader.exec_module(page)
    assert page.percent(0.98999) == "98.9%"  # "not sure" at 0.99 must not sit beside "99.0%"
    assert page.percent(0.99) == "99.0%"
    assert page.percent(0.99996) == "99.9%"


def test_the_camera_photo_is_answered_first_and_the_prompt_goes(tiny_app):
    tiny_app.toggle(key="use_camera").set_value(True).run()
    app = _upload(tiny_app, [("a.jpg", _jpeg("cat", 1))])
    assert not app.info  # the upload prompt is gone once there are photos
    app.camera_input(key="camera").set_value(("shot.jpg", _jpeg("dog", 2), "image/jpeg")).run()
    assert not app.exception
    captions = [image.proto.imgs[0].caption for image in app.get("image")]
    assert captions == ["camera photo", "a.jpg"]  # right below the camera, above the uploads


def test_the_uploader_takes_every_format_the_cli_and_gradio_read(monkeypatch):
    """A .webp was refused with a hover-only icon while the app's own text listed WebP, BMP and GIF."""
    from PIL import Image

    from dogcat.preprocessing import IMAGE_SUFFIXES

    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    app = AppTest.from_file(APP, default_timeout=120).run()
    assert sorted(app.file_uploader(key="uploads").proto.type) == sorted(IMAGE_SUFFIXES)
    buffer = io.BytesIO()
    Image.open(REPO / "demos" / "examples" / "cat-chelsea.jpg").save(buffer, format="WEBP")
    app.file_uploader(key="uploads").set_value([("chelsea.webp", buffer.getvalue(), "image/webp")])
    app = app.run()
    assert [s.value for s in app.subheader] == ["Cat"]


def test_many_photos_get_a_summary_that_filters_them_and_short_headings(monkeypatch):
    """Counts per verdict at the top, which also choose what is shown; "Too small" keeps its size below it."""
    from PIL import Image

    monkeypatch.delenv("DOGCAT_MODEL", raising=False)
    examples = REPO / "demos" / "examples"
    small = io.BytesIO()
    Image.open(examples / "cat-chelsea.jpg").resize((60, 40)).save(small, format="PNG")
    app = AppTest.from_file(APP, default_timeout=120).run()
    app = _upload(app, [("cat.jpg", (examples / "cat-chelsea.jpg").read_bytes()),
                        ("rocket.jpg", (examples / "rocket.jpg").read_bytes()),
                        ("astronaut.jpg", (examples / "astronaut.jpg").read_bytes()),
                        ("tiny.png", small.getvalue()), ("bad.jpg", b"not a photo")])
    assert not app.exception
    pills = app.get("button_group")[0]
    assert pills.label == "5 photos"
    assert sorted(pills.value) == ["cat", "error", "neither", "too_small"]
    headings = [s.value for s in app.subheader]
    assert headings == ["Cat", "Neither a cat nor a dog", "Neither a cat nor a dog", "Too small to judge"]
    assert "60x40 px; needs 80 px on the shorter side" in [c.value for c in app.caption]
    pills.set_value(["neither"]).run()  # show only the photos called neither
    assert [s.value for s in app.subheader] == ["Neither a cat nor a dog", "Neither a cat nor a dog"]
    assert not app.error  # the unreadable upload is filtered out too


def test_an_upload_name_is_shown_as_typed_never_as_markdown(tiny_app):
    """An upload named like a Markdown image made every viewer's browser fetch its address."""
    name = "![x](http://example.invalid/a.png).jpg"
    app = _upload(tiny_app, [(name, b"not a photo")])
    [error] = app.error
    assert "](http" not in error.value
    assert "\\!\\[x\\]\\(http://example.invalid/a.png\\).jpg" in error.value
