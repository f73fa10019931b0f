"""Phone photos: HEIC (an iPhone's default) and AVIF read on every path, with the limits of any other format.

The test photos are made here: pillow-heif encodes HEIC (moving the EXIF turn into HEIF's own
rotation box, as an iPhone does), Pillow encodes AVIF.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from dogcat import preprocessing
from dogcat.cli import main
from dogcat.data import IMAGE_SUFFIXES, expand_in_order, skipped_line
from dogcat.preprocessing import ImageError, decode_image, load_image, preprocess
from tests.helpers import drawn_photo
from tests.imagegen import encode, make_exif_photo, quadrants
from tests.test_preprocessing import assert_quadrants, check_tensor

PHONE_FORMATS = {"HEIF": ".heic", "AVIF": ".avif"}


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_a_phone_photo_is_read_upright(fmt, orientation):
    data = make_exif_photo(quadrants((90, 60)), orientation, fmt)
    assert_quadrants(check_tensor(preprocess(data)), margin=12, atol=0.1)
    assert load_image(data).size == (90, 60)


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_a_phone_photo_gives_the_pixels_of_the_same_photo_as_png(fmt):
    photo = drawn_photo("cat", 3, size=96)
    lossless = decode_image(encode(photo, "PNG"))
    phone = decode_image(encode(photo, fmt, quality=95))
    jpeg = decode_image(encode(photo, "JPEG", quality=95))
    difference = np.abs(phone.astype(int) - lossless.astype(int)).mean()
    assert difference < 2 * np.abs(jpeg.astype(int) - lossless.astype(int)).mean() + 2  # lossy, but the same photo


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_a_phone_photo_over_the_budgets_is_refused_from_its_header(fmt, monkeypatch):
    data = encode(drawn_photo("dog", 1, size=256), fmt, quality=50)
    monkeypatch.setattr(preprocessing, "MAX_DECODE_BYTES", 256 * 256 * 4)  # the picture alone, no room to decode it
    with pytest.raises(ImageError, match=r"^image: image is 256x256, too large to decode .*decode budget"):
        decode_image(data)
    monkeypatch.setattr(preprocessing, "MAX_PIXELS", 256 * 255)
    with pytest.raises(ImageError, match=r"over the 65,280-pixel limit$"):
        decode_image(data)


@pytest.mark.parametrize("fmt", PHONE_FORMATS)
def test_a_cut_short_phone_photo_is_one_line(fmt, tmp_path):
    data = encode(drawn_photo("cat", 2, size=200), fmt, quality=80)
    for cut in (data[: len(data) // 2], data[:40]):
        path = tmp_path / f"cut{PHONE_FORMATS[fmt]}"
        path.write_bytes(cut)
        with pytest.raises(ImageError) as raised:
            decode_image(path)
        message = str(raised.value)
        assert message.startswith(f"{path}: "), message
        assert "\n" not in message, message


def test_folders_list_phone_photos_and_name_what_they_skip(tmp_path):
    for name in ("a.HEIC", "b.heif", "c.avif", "d.jpg"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "notes.pdf").write_bytes(b"x")
    skipped = []
    listed = [path for path, _ in expand_in_order([str(tmp_path)], skipped)]
    assert sorted(listed) == sorted(str(tmp_path / n) for n in ("a.HEIC", "b.heif", "c.avif", "d.jpg"))
    assert {".heic", ".heif", ".avif"} <= IMAGE_SUFFIXES
    line = skipped_line(skipped)
    assert line.startswith("skipped 1 file(s) in the folders given, not JPEG, PNG, WebP, HEIC, AVIF, BMP or GIF")
    assert line.endswith(f".pdf (1): {tmp_path / 'notes.pdf'}")
    many = skipped_line([f"f{i}.txt" for i in range(7)])
    assert many.endswith("f0.txt, f1.txt, f2.txt, f3.txt, f4.txt and 2 more"), many


def test_predict_and_the_python_api_read_phone_photos(tmp_path, tiny_model_dir, capsys):
    from dogcat.inference import Classifier

    photo = drawn_photo("cat", 5, size=96)
    for fmt, suffix in PHONE_FORMATS.items():
        (tmp_path / f"cat{suffix}").write_bytes(encode(photo, fmt, quality=95))
    (tmp_path / "cat.png").write_bytes(encode(photo, "PNG"))
    (tmp_path / "notes.pdf").write_bytes(b"%PDF-1.4")
    model = tiny_model_dir / "dog_cat_classifier.keras"
    assert main(["predict", str(tmp_path), "--json", "--model", str(model)]) == 0
    captured = capsys.readouterr()
    rows = {row["path"].rsplit("/", 1)[-1]: row for row in map(json.loads, captured.out.splitlines())}
    assert sorted(rows) == ["cat.avif", "cat.heic", "cat.png"]
    for name in ("cat.avif", "cat.heic"):
        assert rows[name]["error"] is None, rows[name]
        assert (rows[name]["width"], rows[name]["height"]) == (96, 96)
        assert abs(rows[name]["p_cat"] - rows["cat.png"]["p_cat"]) < 0.05
    assert "skipped 1 file(s)" in captured.err, captured.err
    assert str(tmp_path / "notes.pdf") in captured.err, captured.err
    classifier = Classifier.from_path(model)
    for source in (tmp_path / "cat.heic", str(tmp_path / "cat.avif"), (tmp_path / "cat.heic").read_bytes()):
        assert classifier.predict([source])[0].error is None
