"""The one way an image becomes model input, for training, evaluation, the CLI and the apps.

Any source (path, bytes, file object, PIL image, NumPy array) -> upright RGB -> resized to the
model's size -> uint8 (H, W, 3). `to_model_input` turns a uint8 batch into float32 in [0, 1],
which is what every dogcat model takes: the model itself maps [0, 1] to MobileNetV2's [-1, 1].

Training caches the uint8 arrays from `decode_image` and converts them with `to_model_input`,
so for the same file the training tensor (augmentation off) and the serving tensor are equal.

Uploads are hostile input, so decoding is fenced three ways: only the decoders named in FORMATS
ever see the bytes; any failure while decoding one file is that file's ImageError, never the
caller's (a batch keeps its other results); and memory is bounded by design, per image
(MAX_DECODE_BYTES, checked from the header before any pixel is decoded) and per process (at
most DECODE_CONCURRENCY decodes at once, whichever thread or session asks).
"""

from __future__ import annotations

import io
import os
import stat
import threading
import warnings
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_IMAGE_SIZE = 224
# A 108-megapixel phone photo passes; a decompression bomb (a tiny PNG that inflates to
# gigabytes) is refused before its pixels are decoded.
MAX_PIXELS = 120_000_000
# Uploads are capped in bytes as well, before they are even parsed.
MAX_FILE_BYTES = 50 * 1024 * 1024
# The only decoders an input ever reaches (Pillow format names). Left to itself Pillow tries ~40
# plugins by magic bytes: rarely used ones crash on hostile bytes with IndexError or
# NotImplementedError (QOI, DDS), and EPS hands the file to Ghostscript, an external interpreter.
# These are what cameras, phones and browsers produce; GIF and animated WebP/PNG give their first
# frame. No TIFF: no phone or browser uploads it, and libtiff's many codecs are attack surface
# for nothing. The JPEG decoder also returns MPO, a JPEG carrying extra pictures (many phones).
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "GIF")
FORMAT_NAMES = "JPEG, PNG, WebP, BMP or GIF"
_JPEG_FORMATS = ("JPEG", "MPO")  # libjpeg can decode these at 1/2, 1/4 or 1/8 scale (draft)
# Per-image decode budget: the decoded pixels plus the RGB image they become (Pillow keeps RGB in
# 4 bytes a pixel), computed from the header before decoding. JPEGs count at their draft scale, so
# a 108-megapixel phone photo costs ~14 MP; PNG, WebP, BMP and GIF cannot be decoded at reduced
# scale, so 192 MiB admits about 25 MP in RGB(A) (40 MP grayscale or palette): far above any
# screenshot or browser upload, while one decode's peak (flattening alpha, an EXIF turn) stays
# within about twice the budget. A 50 MP PNG is refused; the same photo as a JPEG passes.
MAX_DECODE_BYTES = 192 * 2**20
_RGB_PIXEL_BYTES = 4
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # others: 4
# Decodes running at once in this process, shared by every caller (each Streamlit session's
# thread, Gradio's workers, Classifier's decode thread), so peak decode memory stays near
# 2 x MAX_DECODE_BYTES x DECODE_CONCURRENCY however many uploads arrive together. Two keep both
# cores of a small server busy; decoding is not the bottleneck (the network is).
DECODE_CONCURRENCY = 2
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_CONCURRENCY)
BACKGROUND = (255, 255, 255)  # transparent pixels are flattened onto white

ImageSource = str | os.PathLike | bytes | IO[bytes] | Image.Image | np.ndarray

# Never silently decode half a file: a truncated JPEG is an error, not a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(ValueError):
    """An input that cannot be turned into an image. The message is one line, fit for users."""


def decode_image(source: ImageSource, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Return `source` as an upright RGB uint8 array of shape (image_size, image_size, 3)."""
    return decode_image_with_size(source, image_size)[0]


def decode_image_with_size(source: ImageSource, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image`, and the photo's upright (width, height) as given, before any resizing.

    The verdict needs the original size: a thumbnail upscaled to 224 px looks like any photo to
    the network, but is too small to judge (dogcat.verdict).
    """
    with _DECODE_SLOTS:
        image, size = _load_upright(source, draft_size=image_size)
        image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
        return np.asarray(image, dtype=np.uint8), size


def to_model_input(images: np.ndarray) -> np.ndarray:
    """uint8 (N, H, W, 3) or (H, W, 3) -> float32 (N, H, W, 3) in [0, 1]."""
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ImageError(f"Expected uint8 pixels from decode_image. Received: dtype={images.dtype}")
    if images.ndim == 3:
        images = images[None]
    return images.astype(np.float32) / np.float32(255.0)


def preprocess(sources: ImageSource | list[ImageSource], image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """One source or a list of sources -> float32 (N, image_size, image_size, 3) in [0, 1].

    Raises ImageError on the first source that cannot be read; callers that must keep going
    past bad files decode one at a time (see dogcat.inference).
    """
    if not isinstance(sources, list):
        sources = [sources]
    return to_model_input(np.stack([decode_image(s, image_size) for s in sources]))


def load_image(source: ImageSource, draft_size: int | None = None, max_side: int | None = None) -> Image.Image:
    """Open any supported source as an upright 8-bit RGB PIL image, or raise ImageError.

    `draft_size`: a JPEG may be decoded at reduced scale, never below this. `max_side`: shrink the
    result to fit this square before returning, inside the decode slot, so a preview of a large
    PNG never holds the full-size image outside the process-wide bound.
    """
    with _DECODE_SLOTS:
        image = _load_upright(source, draft_size)[0]
        if max_side:
            image.thumbnail((max_side, max_side))
        return image


def read_image_bytes(path: str | os.PathLike) -> bytes:
    """A file's bytes, or ImageError with the one-line reason it cannot be read.

    Opened non-blocking and read only if it is a regular file, so a fifo or device named like an
    image is refused at once instead of blocking the caller forever.
    """
    name = str(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        reason = "broken symbolic link" if os.path.islink(path) else "no such file"
        raise ImageError(f"{name}: {reason}") from None
    except PermissionError:
        raise ImageError(f"{name}: permission denied") from None
    except OSError as error:
        raise ImageError(f"{name}: cannot open ({error.strerror or type(error).__name__})") from None
    try:
        info = os.fstat(fd)
        if stat.S_ISDIR(info.st_mode):
            raise ImageError(f"{name}: is a folder, not an image file")
        if not stat.S_ISREG(info.st_mode):
            kind = "a named pipe" if stat.S_ISFIFO(info.st_mode) else "a device or socket"
            raise ImageError(f"{name}: not a regular file ({kind})")
        if info.st_size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
        with open(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:  # e.g. EIO, or a network share gone mid-read
        raise ImageError(f"{name}: cannot read ({error.strerror or type(error).__name__})") from None
    finally:
        os.close(fd)


def _load_upright(source: ImageSource, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(upright 8-bit RGB image, its upright (width, height) before any draft reduction).

    The caller holds a decode slot (_DECODE_SLOTS).
    """
    name = _name(source)
    if isinstance(source, np.ndarray):
        image = _array_to_image(source)
        return image, image.size
    image = source if isinstance(source, Image.Image) else _open(source)
    try:
        if image.format is not None and image.format not in (*FORMATS, *_JPEG_FORMATS):
            raise ImageError(f"{name}: not a supported format ({image.format}; dogcat reads {FORMAT_NAMES})")
        _check_size(image, source)
        size = image.size
        if draft_size and image.format in _JPEG_FORMATS:
            # Let libjpeg decode a large photo at 1/2, 1/4 or 1/8 scale, never below the target:
            # a 12-megapixel upload then costs a fraction of a full decode.
            image.draft("RGB", (draft_size, draft_size))
        _check_decode_budget(image, source)
        image.load()
        stored = image.size
        image = ImageOps.exif_transpose(image)
        if image.size != stored:  # EXIF turned it a quarter turn: so is its original size
            size = size[::-1]
        return _to_rgb(image), size
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: truncated or corrupt image data ({_first_line(error)})") from None
    except Exception as error:
        # The one place an input's pixels are decoded, so the one broad catch: Pillow's decoders
        # raise whatever their parser hits on hostile bytes (IndexError, struct.error,
        # MemoryError...). Any failure here is this file's alone; a batch keeps the rest.
        raise ImageError(f"{name}: unreadable image ({type(error).__name__}: {_first_line(error)})") from None


def _check_decode_budget(image: Image.Image, source: ImageSource) -> None:
    width, height = image.size  # after any draft: what will actually be decoded
    cost = width * height * (_PIXEL_BYTES.get(image.mode, 4) + _RGB_PIXEL_BYTES)
    if cost > MAX_DECODE_BYTES:
        raise ImageError(
            f"{_name(source)}: image is {width}x{height}, too large to decode (over the "
            f"{MAX_DECODE_BYTES // 2**20} MiB decode budget; only JPEGs are decoded at reduced scale)"
        )


def _open(source: ImageSource) -> Image.Image:
    name = _name(source)
    if isinstance(source, str | os.PathLike):
        data = read_image_bytes(source)
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif hasattr(source, "read"):
        data = source.read(MAX_FILE_BYTES + 1)
    else:
        raise ImageError(f"Unsupported image source type. Received: source={type(source).__name__}")
    if not data:
        raise ImageError(f"{name}: empty file")
    if len(data) > MAX_FILE_BYTES:
        raise ImageError(f"{name}: file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
    try:
        with warnings.catch_warnings():
            # _check_size enforces our own limit from the header; Pillow's warning is redundant.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # An explicit list, so no other decoder (and no external program) ever sees the bytes.
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image, or not a supported format ({FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is too large (over {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: unreadable image ({_first_line(error)})") from None
    except Exception as error:  # a header parser's own bug on hostile bytes: this file's error, as in _load_upright
        raise ImageError(f"{name}: unreadable image ({type(error).__name__}: {_first_line(error)})") from None


def _check_size(image: Image.Image, source: ImageSource) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageError(
            f"{_name(source)}: image is {width}x{height}, over the {MAX_PIXELS:,}-pixel limit"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{_name(source)}: image has no pixels ({width}x{height})")


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, with transparency flattened onto BACKGROUND."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: Pillow's convert("L") would clip at 255 (all white), so rescale.
        pixels = np.asarray(image)
        peak = 65535.0 if mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        return _gray_to_rgb(pixels, lambda rows: rows / peak * 255.0)
    if mode == "F":
        return _gray_to_rgb(np.asarray(image), lambda rows: rows)
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _gray_to_rgb(pixels: np.ndarray, scale) -> Image.Image:
    """16-bit or float gray -> RGB, in float64 a band of rows at a time: a whole-image float64
    copy would take 8 bytes a pixel, twice what the decode budget allows for."""
    gray = np.empty(pixels.shape, np.uint8)
    for start in range(0, len(pixels), 256):
        rows = pixels[start : start + 256].astype(np.float64)
        gray[start : start + 256] = np.clip(np.rint(scale(rows)), 0, 255)
    return Image.fromarray(gray, mode="L").convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    """Accept (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays; uint8, uint16 or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"Expected an (H, W), (H, W, 3) or (H, W, 4) array. Received: shape={array.shape}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageError(f"array is {array.shape[1]}x{array.shape[0]}, over the {MAX_PIXELS:,}-pixel limit")
    if array.size == 0:
        raise ImageError(f"array has no pixels ({array.shape[1]}x{array.shape[0]})")
    if array.dtype == np.uint8:
        pixels = array
    elif array.dtype == np.uint16:
        pixels = np.rint(array / 65535.0 * 255.0).astype(np.uint8)
    elif np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ImageError("Float arrays must hold values in [0, 1]. Received: a float array outside [0, 1]")
        pixels = np.rint(array * 255.0).astype(np.uint8)
    else:
        raise ImageError(f"Expected uint8, uint16 or float pixels. Received: dtype={array.dtype}")
    return _to_rgb(Image.fromarray(np.ascontiguousarray(pixels)))


def _name(source: Any) -> str:
    if isinstance(source, str | os.PathLike):
        return str(source)
    return getattr(source, "name", None) or "image"


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
