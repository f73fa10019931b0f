"""dogcat.preprocessing: every source kind and Pillow mode -> a correct (1, 224, 224, 3) tensor, or a one-line ImageError."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from dogcat import preprocessing
from dogcat.preprocessing import (
    MAX_PIXELS,
    ImageError,
    decode_image,
    load_image,
    preprocess,
    to_model_input,
)
from tests.imagegen import (
    BLUE,
    GREEN,
    RED,
    WHITE,
    YELLOW,
    encode,
    halves,
    make_exif_jpeg,
    make_huge_png,
    make_image,
    make_pet,
    quadrants,
)

SIZE = 224
LEFT, RIGHT = np.s_[:, : SIZE // 2 - 8], np.s_[:, SIZE // 2 + 8 :]  # away from the seam


def check_tensor(x: np.ndarray, size: int = SIZE) -> np.ndarray:
    assert x.shape == (1, size, size, 3)
    assert x.dtype == np.float32
    assert x.min() >= 0.0
    assert x.max() <= 1.0
    return x[0]


def assert_colour(region: np.ndarray, rgb, atol: float = 2 / 255) -> None:
    np.testing.assert_allclose(region.reshape(-1, 3), np.broadcast_to(np.array(rgb) / 255, (region.size // 3, 3)), atol=atol)


def assert_quadrants(x, margin: int, atol: float) -> None:
    """The `quadrants` picture, upright: red, blue / green, yellow, away from the borders."""
    a, b = SIZE // 2 - margin, SIZE // 2 + margin
    assert_colour(x[:a, :a], RED, atol=atol)
    assert_colour(x[:a, b:], BLUE, atol=atol)
    assert_colour(x[b:, :a], GREEN, atol=atol)
    assert_colour(x[b:, b:], YELLOW, atol=atol)


def image_error(source, match: str) -> str:
    with pytest.raises(ImageError, match=match) as info:
        preprocess(source)
    message = str(info.value)
    assert "\n" not in message
    assert "Traceback" not in message
    return message


# --- Pillow modes -------------------------------------------------------------------------


@pytest.mark.parametrize("hidden", [(0, 0, 0), (0, 255, 0)])
def test_rgba_transparent_pixels_are_flattened_onto_white(hidden):
    # the transparent half hides a colour that must not leak through
    image = halves((*hidden, 0), (*RED, 255), mode="RGBA")
    x = check_tensor(preprocess(encode(image, "PNG")))
    assert_colour(x[LEFT], WHITE)
    assert_colour(x[RIGHT], RED)


def test_rgba_half_transparent_blends_with_white():
    x = check_tensor(preprocess(encode(Image.new("RGBA", (32, 32), (0, 0, 255, 128)), "PNG")))
    assert_colour(x, (127, 127, 255), atol=1.5 / 255)


def test_la_transparent_is_white_and_opaque_keeps_its_grey():
    x = check_tensor(preprocess(encode(halves((0, 0), (50, 255), mode="LA"), "PNG")))
    assert_colour(x[LEFT], WHITE)
    assert_colour(x[RIGHT], (50, 50, 50))


def _palette_halves() -> Image.Image:
    image = halves(2, 0, mode="P")  # index 2 (black) left, index 0 (red) right
    image.putpalette([*RED, *BLUE, 0, 0, 0])
    return image


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP"])
def test_palette_without_transparency(fmt):
    x = check_tensor(preprocess(encode(_palette_halves(), fmt)))
    assert_colour(x[LEFT], (0, 0, 0))
    assert_colour(x[RIGHT], RED)


@pytest.mark.parametrize("fmt", ["PNG", "GIF"])
def test_palette_transparent_index_is_white(fmt):
    data = encode(_palette_halves(), fmt, transparency=2)
    assert Image.open(io.BytesIO(data)).info.get("transparency") is not None
    x = check_tensor(preprocess(data))
    assert_colour(x[LEFT], WHITE)
    assert_colour(x[RIGHT], RED)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "BMP", "WEBP"])
def test_grayscale_l(fmt):
    x = check_tensor(preprocess(make_image("L", fmt=fmt, color=77)))
    assert_colour(x, (77, 77, 77), atol=3 / 255)  # JPEG and WEBP are lossy


@pytest.mark.parametrize("fmt", ["PNG", "BMP"])
def test_bilevel_mode_1(fmt):
    x = check_tensor(preprocess(encode(halves(0, 1, mode="1"), fmt)))
    assert_colour(x[LEFT], (0, 0, 0))
    assert_colour(x[RIGHT], WHITE)


def test_cmyk_jpeg():
    data = encode(halves((0, 255, 255, 0), (255, 255, 0, 0), mode="CMYK"), "JPEG", quality=95)
    assert Image.open(io.BytesIO(data)).mode == "CMYK"
    x = check_tensor(preprocess(data))
    assert_colour(x[LEFT], RED, atol=0.05)
    assert_colour(x[RIGHT], BLUE, atol=0.05)


def test_16_bit_grayscale_png_is_rescaled_not_saturated():
    pixels = np.full((48, 64), 32768, dtype=np.uint16)
    pixels[:, 32:] = 16384
    data = encode(Image.fromarray(pixels), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    x = check_tensor(preprocess(data))
    np.testing.assert_allclose(x[LEFT], 0.5, atol=1 / 255)
    np.testing.assert_allclose(x[RIGHT], 0.25, atol=1 / 255)


# --- EXIF orientation ---------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_gives_the_upright_picture(orientation):
    upright = quadrants((90, 60))  # not square: a missed 90-degree turn cannot hide
    data = make_exif_jpeg(upright, orientation)
    stored = Image.open(io.BytesIO(data))
    assert stored.size == ((60, 90) if orientation >= 5 else (90, 60))
    assert_quadrants(check_tensor(preprocess(data)), margin=12, atol=0.08)


@pytest.mark.parametrize("orientation", [6, 8])
def test_exif_rotated_left_red_right_blue(orientation, tmp_path):
    path = tmp_path / "rotated.jpg"
    path.write_bytes(make_exif_jpeg(halves(RED, BLUE, size=(120, 60)), orientation))
    for source in (path, str(path), path.read_bytes(), Image.open(path)):
        x = check_tensor(preprocess(source))
        assert_colour(x[LEFT], RED, atol=0.08)
        assert_colour(x[RIGHT], BLUE, atol=0.08)
    assert load_image(path).size == (120, 60)


# --- bad input: one clear line ------------------------------------------------------------


@pytest.mark.parametrize(("width", "height"), [(11000, 11000), (20000, 20000)])
def test_decompression_bomb_png_is_refused(width, height, tmp_path):
    data = make_huge_png(width, height)
    assert len(data) < 100_000
    assert width * height > MAX_PIXELS
    path = tmp_path / "bomb.png"
    path.write_bytes(data)
    for source in (data, path):
        message = image_error(source, "pixel")
        assert f"{MAX_PIXELS:,}" in message


def test_oversized_pil_image_and_array_are_refused(monkeypatch):
    monkeypatch.setattr(preprocessing, "MAX_PIXELS", 100)
    assert "100" in image_error(Image.new("RGB", (11, 10)), "limit")
    assert "100" in image_error(np.zeros((10, 11, 3), np.uint8), "limit")
    check_tensor(preprocess(np.zeros((10, 10, 3), np.uint8)))


def test_file_over_the_byte_limit_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(preprocessing, "MAX_FILE_BYTES", 2**20)
    data = make_image() + b"\0" * 2**20
    path = tmp_path / "big.png"
    path.write_bytes(data)
    for source in (path, data, io.BytesIO(data)):
        assert "1 MiB" in image_error(source, "limit")


def test_truncated_jpeg(tmp_path):
    data = encode(make_pet("dog", 1, (160, 120)), "JPEG", quality=95)
    path = tmp_path / "half.jpg"
    path.write_bytes(data[: len(data) // 2])
    assert "half.jpg" in image_error(path, "truncated")
    image_error(data[: len(data) // 2], "truncated")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    assert str(path) in image_error(path, "empty file")
    image_error(b"", "empty file")
    image_error(io.BytesIO(), "empty file")


def test_text_file_named_jpg(tmp_path):
    path = tmp_path / "notes.jpg"
    path.write_text("these are not the pixels you are looking for\nsecond line\n")
    assert str(path) in image_error(path, "not an image")


def test_nonexistent_path(tmp_path):
    path = tmp_path / "missing.jpg"
    assert str(path) in image_error(path, "no such file")
    image_error(str(path), "no such file")
    image_error(tmp_path, "is a folder, not an image file")


@pytest.mark.parametrize(
    ("array", "match"),
    [
        (np.full((8, 8, 3), 1.5), r"\[0, 1\]"),
        (np.full((8, 8, 3), -0.1, np.float32), r"\[0, 1\]"),
        (np.full((8, 8, 3), np.nan), r"\[0, 1\]"),
        (np.zeros((8, 8, 3), np.int64), "dtype=int64"),
        (np.zeros((8, 8, 2), np.uint8), "shape"),
        (np.zeros((2, 8, 8, 3), np.uint8), "shape"),
        (np.zeros((0, 8, 3), np.uint8), "no pixels"),
        (np.zeros((8, 0), np.float32), "no pixels"),
    ],
)
def test_bad_arrays(array, match):
    image_error(array, match)


def test_unsupported_source_type():
    image_error(12345, "source=int")


# --- every source kind, the same tensor ---------------------------------------------------


def _sources(tmp_path):
    image = make_pet("cat", 7, (80, 60))
    path = tmp_path / "cat.png"
    image.save(path)
    pixels = np.asarray(image)
    return image, path, pixels


SOURCE_KINDS = {
    "str": lambda image, path, pixels: str(path),
    "path": lambda image, path, pixels: path,
    "bytes": lambda image, path, pixels: path.read_bytes(),
    "bytesio": lambda image, path, pixels: io.BytesIO(path.read_bytes()),
    "open file": lambda image, path, pixels: path.open("rb"),
    "PIL opened": lambda image, path, pixels: Image.open(path),
    "PIL in memory": lambda image, path, pixels: image,
    "uint8 array": lambda image, path, pixels: pixels,
    "float64 array": lambda image, path, pixels: pixels / 255.0,
    "float32 array": lambda image, path, pixels: pixels.astype(np.float32) / np.float32(255),
    "uint16 array": lambda image, path, pixels: pixels.astype(np.uint16) * 257,
    "non-contiguous array": lambda image, path, pixels: np.asfortranarray(pixels),
}


@pytest.mark.parametrize("kind", SOURCE_KINDS)
def test_every_source_kind_gives_the_same_tensor(kind, tmp_path):
    image, path, pixels = _sources(tmp_path)
    expected = np.asarray(image.resize((SIZE, SIZE), Image.Resampling.BILINEAR))

    def apply(function):
        source = SOURCE_KINDS[kind](image, path, pixels)  # a fresh one: a file object is read once
        try:
            return function(source)
        finally:
            if isinstance(source, io.BufferedReader):
                source.close()

    decoded = apply(decode_image)
    assert decoded.dtype == np.uint8
    np.testing.assert_array_equal(decoded, expected)
    x = check_tensor(apply(preprocess))
    np.testing.assert_array_equal(x, expected.astype(np.float32) / np.float32(255))


def test_grayscale_and_rgba_arrays_match_their_files(tmp_path):
    gray = np.asarray(make_pet("dog", 2, (50, 40)).convert("L"))
    Image.fromarray(gray).save(tmp_path / "gray.png")
    from_file = preprocess(tmp_path / "gray.png")
    np.testing.assert_array_equal(preprocess(gray), from_file)
    np.testing.assert_array_equal(preprocess(gray[..., None]), from_file)
    np.testing.assert_array_equal(preprocess(gray.astype(np.uint16) * 257), from_file)

    rgba = np.asarray(halves((0, 0, 0, 0), (*BLUE, 255), mode="RGBA"))
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    np.testing.assert_array_equal(preprocess(rgba), preprocess(tmp_path / "rgba.png"))
    assert_colour(preprocess(rgba)[0][LEFT], WHITE)


def test_jpeg_sources_agree(tmp_path):
    path = tmp_path / "dog.jpg"
    make_pet("dog", 3, (300, 200)).save(path, quality=90)
    expected = preprocess(path)
    with path.open("rb") as handle:
        for source in (str(path), path.read_bytes(), handle, Image.open(path)):
            np.testing.assert_array_equal(preprocess(source), expected)


def test_a_list_of_sources_is_a_batch(tmp_path):
    red, blue = make_image(color=RED), make_image(color=BLUE, fmt="JPEG", quality=95)
    x = preprocess([red, blue, np.zeros((5, 5), np.uint8)], image_size=96)
    assert x.shape == (3, 96, 96, 3)
    assert x.dtype == np.float32
    assert_colour(x[0], RED)
    assert_colour(x[1], BLUE, atol=0.03)
    assert_colour(x[2], (0, 0, 0))


# --- to_model_input -----------------------------------------------------------------------


def test_to_model_input_dtype_and_range():
    pixels = np.arange(256, dtype=np.uint8).repeat(3).reshape(16, 16, 3)
    x = to_model_input(pixels)
    assert x.shape == (1, 16, 16, 3)
    assert x.dtype == np.float32
    assert x.min() == 0.0
    assert x.max() == 1.0
    np.testing.assert_array_equal(x[0] * 255, pixels.astype(np.float32))
    assert to_model_input(np.stack([pixels, pixels])).shape == (2, 16, 16, 3)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint16])
def test_to_model_input_rejects_anything_but_uint8(dtype):
    with pytest.raises(ImageError, match="uint8"):
        to_model_input(np.zeros((4, 4, 3), dtype))


# --- large photos: draft decoding ---------------------------------------------------------


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "phone.jpg"
    path.write_bytes(make_exif_jpeg(quadrants((4032, 3024)), 1))
    return path


def test_big_jpeg_is_draft_decoded_and_still_correct(big_jpeg):
    full = load_image(big_jpeg)
    drafted = load_image(big_jpeg, draft_size=SIZE)
    assert full.size == (4032, 3024)
    assert drafted.size == (504, 378)  # libjpeg's 1/8 scale, still >= 224 both ways
    assert drafted.mode == "RGB"

    x = check_tensor(preprocess(big_jpeg))
    assert_quadrants(x, margin=4, atol=0.03)
    reference = to_model_input(np.asarray(full.resize((SIZE, SIZE), Image.Resampling.BILINEAR)))
    assert np.abs(x - reference).mean() < 0.01


def test_draft_never_goes_below_the_target_size(tmp_path):
    path = tmp_path / "panorama.jpg"
    make_pet("cat", 4, (3000, 500)).save(path, quality=80)
    drafted = load_image(path, draft_size=SIZE)
    assert min(drafted.size) >= SIZE
    assert drafted.size == (1500, 250)
    check_tensor(preprocess(path))


def test_big_exif_rotated_jpeg(tmp_path):
    path = tmp_path / "portrait.jpg"
    path.write_bytes(make_exif_jpeg(halves(RED, BLUE, size=(3024, 4032)), 6))
    assert load_image(path, draft_size=SIZE).size == (378, 504)
    x = check_tensor(preprocess(path))
    assert_colour(x[LEFT], RED, atol=0.03)
    assert_colour(x[RIGHT], BLUE, atol=0.03)
