"""The one way an image becomes model input, for training, evaluation, the CLI and the apps.

Any source (path, bytes, file object, PIL image, NumPy array) -> upright RGB -> resized to the
model's size -> uint8 (H, W, 3). `to_model_input` turns a uint8 batch into float32 in [0, 1],
which is what every dogcat model takes: the model itself maps [0, 1] to MobileNetV2's [-1, 1].

Training caches the uint8 arrays from `decode_image` and converts them with `to_model_input`,
so for the same file the training tensor (augmentation off) and the serving tensor are equal.

Uploads are hostile input, so decoding is fenced three ways: only the decoders named in FORMATS
ever see the bytes; any failure while decoding one file is that file's ImageError, never the
caller's (a batch keeps its other results); and memory is bounded by design, per image
(MAX_DECODE_BYTES, what the decode will really hold, charged from the header before any pixel is
decoded) and per process (at most DECODE_CONCURRENCY decodes at once, whichever thread or session
asks). The full-size picture is held once, in the mode it was decoded in: the EXIF turn,
flattening, conversion to RGB and resizing run a band of rows at a time (_rgb_bands).
"""

from __future__ import annotations

import ctypes
import io
import math
import os
import stat
import threading
import warnings
from collections.abc import Sequence
from typing import IO, Any

import numpy as np
from PIL import ExifTags, Image, ImageFile, UnidentifiedImageError

try:
    import pillow_heif
except ImportError:  # pragma: no cover (declared in pyproject.toml; see FORMATS)
    pillow_heif = None

from dogcat.errors import DogcatError

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
# frame. HEIC is what an iPhone saves by default (libheif, through pillow-heif, a core dependency);
# AVIF is Pillow's own decoder (libavif, in Pillow's wheels since 11.3). No TIFF: no phone or
# browser uploads it, and libtiff's many codecs are attack surface for nothing. The JPEG decoder
# also returns MPO, a JPEG carrying extra pictures (many phones).
if pillow_heif is not None:  # a core dependency; an environment installed before it still reads the rest
    pillow_heif.register_heif_opener()  # Pillow format "HEIF": .heic and .heif files, the first picture
FORMATS = tuple(f for f in ("JPEG", "PNG", "WEBP", "HEIF", "AVIF", "BMP", "GIF") if f != "HEIF" or pillow_heif)
FORMAT_NAMES = "JPEG, PNG, WebP, HEIC, AVIF, BMP or GIF"
# What folders are searched for and uploaders accept: the suffixes of the FORMATS.
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".heic", ".heif", ".avif", ".bmp", ".gif"}
_JPEG_FORMATS = ("JPEG", "MPO")  # libjpeg can decode these at 1/2, 1/4 or 1/8 scale (draft)
# Per-image decode budget: the most one decode holds at its peak, charged from the header before
# any pixel is decoded (_decode_cost): the full-size picture in its decoded mode (Pillow keeps
# palette, grey and 1-bit in 1 byte a pixel, 16-bit grey in 2, everything else in 4), what its
# decoder keeps beside it, one band of rows being converted, and the output (for the model, the
# picture resized across to 224 px but still full height). JPEGs count at their draft scale, so a
# 108-megapixel phone photo costs ~14 MP, except progressive ones: libjpeg keeps every DCT
# coefficient of the full-size picture, 2-6 bytes a pixel whatever the scale. PNG, WebP, HEIC, AVIF,
# BMP and GIF cannot be decoded at reduced scale: 192 MiB admits about 46 MP in RGB(A), palette or
# grey up to MAX_PIXELS, WebP about 12 MP (its decoder's buffers), HEIC about 24 MP and AVIF about
# 19 MP (a 12 or 48 MP iPhone saves HEIC at 12 or 24 MP): far above any screenshot or browser
# upload. A 50 MP RGB PNG is refused; the same photo as a JPEG passes.
MAX_DECODE_BYTES = 192 * 2**20
_RGB_PIXEL_BYTES = 4
_PIXEL_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}  # others: 4
# Held beside the picture while decoding: libwebp decodes the frame into its own buffer, blends it
# onto a canvas, and Pillow copies the canvas out (WebPImagePlugin): three more RGBA pictures.
# libheif and libavif hold the decoded YCbCr planes and an RGB copy that Pillow copies out
# (measured on 12-megapixel photos: 2.5 and 4.5 bytes a pixel above the picture).
_DECODER_PIXEL_BYTES = {"WEBP": 12, "HEIF": 4, "AVIF": 6}
# A band of rows of the upright picture is made RGB at a time: about this many pixels (1 MiB in
# RGB), never under one row nor under one block of a thumbnail's reduction.
_BAND_PIXELS = 2**18
# A band's peak per pixel, for the costliest conversion (float grey: the cut band, its array,
# float64 rows, L, RGB: 4 + 4 + 8 + 1 + 4), with room for its resized rows.
_BAND_PIXEL_BYTES = 24
# Decodes running at once in this process, shared by every caller (each Streamlit session's
# thread, Gradio's workers, Classifier's decode thread), so peak decode memory stays near
# MAX_DECODE_BYTES x DECODE_CONCURRENCY however many uploads arrive together. Two keep both
# cores of a small server busy; decoding is not the bottleneck (the network is).
DECODE_CONCURRENCY = 2
_DECODE_SLOTS = threading.BoundedSemaphore(DECODE_CONCURRENCY)
# glibc keeps what a thread frees in that thread's arena, and Streamlit runs each session on its own
# thread: a server keeps up to a large decode's worth per session, fragmented by its own small
# allocations, on top of the decodes running (20 sessions uploading benchmarks/decode_memory.py's
# worst accepted file at once: a 2.2 GB peak, 0.6 GB given back). So a decode charged at least this
# much gives its freed memory back to the OS when it is done (a fraction of a millisecond).
_GIVE_BACK_FROM = 32 * 2**20
BACKGROUND = (255, 255, 255)  # transparent pixels are flattened onto white
# EXIF Orientation -> the transpose that makes the stored pixels upright (as ImageOps.exif_transpose).
_TURNS = {
    2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_QUARTER_TURNS = (Image.Transpose.TRANSPOSE, Image.Transpose.TRANSVERSE, Image.Transpose.ROTATE_90,
                  Image.Transpose.ROTATE_270)

ImageSource = str | os.PathLike | bytes | IO[bytes] | Image.Image | np.ndarray

# Never silently decode half a file: a truncated JPEG is an error, not a grey bottom half.
ImageFile.LOAD_TRUNCATED_IMAGES = False


class ImageError(DogcatError, ValueError):
    """An input that cannot be turned into an image. The message is one line, fit for users."""


class ImageTooLarge(ImageError):
    """Over the byte, pixel or decode-memory limit: the HTTP API answers 413, not 400."""


class ImageFormatError(ImageError):
    """Not a format dogcat reads: the HTTP API answers 415, not 400."""


def decode_image(source: ImageSource, image_size: int = DEFAULT_IMAGE_SIZE) -> np.ndarray:
    """Return `source` as an upright RGB uint8 array of shape (image_size, image_size, 3)."""
    return decode_image_with_size(source, image_size)[0]


def decode_image_with_size(source: ImageSource, image_size: int = DEFAULT_IMAGE_SIZE) -> tuple[np.ndarray, tuple[int, int]]:
    """`decode_image`, and the photo's upright (width, height) as given, before any resizing.

    The verdict needs the original size: a thumbnail upscaled to 224 px looks like any photo to
    the network, but is too small to judge (dogcat.verdict).
    """
    with _DECODE_SLOTS:
        image, size = _decode(source, draft_size=image_size, square=image_size)
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
    result to fit this square (as Image.thumbnail does) while decoding, so a preview of a large PNG
    never holds the full-size picture in RGB, nor outside the process-wide bound.
    """
    with _DECODE_SLOTS:
        return _decode(source, draft_size, max_side=max_side)[0]


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
            raise ImageTooLarge(f"{name}: file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
        with open(fd, "rb", closefd=False) as handle:
            return handle.read(MAX_FILE_BYTES + 1)
    except OSError as error:  # e.g. EIO, or a network share gone mid-read
        raise ImageError(f"{name}: cannot read ({error.strerror or type(error).__name__})") from None
    finally:
        os.close(fd)


def _decode(source: ImageSource, draft_size: int | None = None, square: int | None = None,
            max_side: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(upright 8-bit RGB picture, its upright (width, height) before any draft reduction).

    The picture is resized to `square` x `square` (the model's input) or fitted in `max_side`, else
    full size. The caller holds a decode slot (_DECODE_SLOTS).
    """
    name = _name(source)
    if isinstance(source, np.ndarray):
        image = _array_to_image(source)
        return _finish(image, None, square, max_side), image.size
    image = source if isinstance(source, Image.Image) else _open(source)
    try:
        if image.format is not None and image.format not in (*FORMATS, *_JPEG_FORMATS):
            raise ImageFormatError(f"{name}: not a supported format ({image.format}; dogcat reads {FORMAT_NAMES})")
        _check_size(image, source)
        size = image.size
        if draft_size and image.format in _JPEG_FORMATS:
            # Let libjpeg decode a large photo at 1/2, 1/4 or 1/8 scale, never below the target:
            # a 12-megapixel upload then costs a fraction of a full decode.
            image.draft("RGB", (draft_size, draft_size))
        cost = _check_decode_budget(image, source, size, square, max_side)
        image.load()
        # Read after decoding: a PNG's eXIf chunk may follow its pixels. The turn is done band by band.
        turn = _TURNS.get(image.getexif().get(ExifTags.Base.Orientation, 1))
        if turn in _QUARTER_TURNS:  # EXIF turned it a quarter turn: so is its original size
            size = size[::-1]
        picture = _finish(image, turn, square, max_side)
        del image  # the full-size picture, freed here unless the caller holds it
        if cost >= _GIVE_BACK_FROM:
            _give_back_freed_memory()
        return picture, size
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: truncated or corrupt image data ({_first_line(error)})") from None
    except Exception as error:
        # The one place an input's pixels are decoded, so the one broad catch: Pillow's decoders
        # raise whatever their parser hits on hostile bytes (IndexError, struct.error,
        # MemoryError...). Any failure here is this file's alone; a batch keeps the rest.
        raise ImageError(f"{name}: unreadable image ({type(error).__name__}: {_first_line(error)})") from None


def _check_decode_budget(image: Image.Image, source: ImageSource, header_size: tuple[int, int],
                         square: int | None, max_side: int | None) -> int:
    """The decode's cost (_decode_cost), or ImageError if it is over MAX_DECODE_BYTES."""
    cost = _decode_cost(image, header_size, square, max_side)
    if cost > MAX_DECODE_BYTES:
        width, height = header_size
        why = ("a progressive JPEG's decoder holds it at full size" if image.format in _JPEG_FORMATS
               else "only JPEGs are decoded at reduced scale")
        raise ImageTooLarge(
            f"{_name(source)}: image is {width}x{height}, too large to decode ({math.ceil(cost / 2**20)} MiB, over the "
            f"{MAX_DECODE_BYTES // 2**20} MiB decode budget; {why})"
        )
    return cost


def _malloc_trim():
    try:
        trim = ctypes.CDLL(None).malloc_trim  # glibc only
    except (AttributeError, OSError, TypeError):
        return None
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


_MALLOC_TRIM = _malloc_trim()


def _give_back_freed_memory() -> None:
    """Return freed heap memory to the OS, from every thread's arena (glibc); elsewhere, nothing."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _decode_cost(image: Image.Image, header_size: tuple[int, int], square: int | None = None,
                 max_side: int | None = None) -> int:
    """Bytes a decode of `image` (opened, drafted, not yet loaded) holds at its peak, from its header.

    Measured against the real peak for each mode and format in tests/test_preprocessing_limits.py.
    """
    width, height = image.size  # after any draft: what will actually be decoded
    cost = width * height * (_PIXEL_BYTES.get(image.mode, 4) + _DECODER_PIXEL_BYTES.get(image.format, 0))
    if image.format in _JPEG_FORMATS and image.info.get("progressive"):
        cost += _jpeg_coefficient_bytes(header_size, image.layer)
    # The turn is known only once the pixels are decoded: charge the costlier way up.
    return cost + max(_finish_cost(width, height, square, max_side), _finish_cost(height, width, square, max_side))


def _jpeg_coefficient_bytes(size: tuple[int, int], layers) -> int:
    """What libjpeg holds for a progressive JPEG: every 8x8 block of every component at its sampling,
    64 coefficients of 2 bytes, for the full-size picture whatever the draft scale."""
    width, height = size
    most_h = max((h for _, h, _, _ in layers), default=1) or 1
    most_v = max((v for _, _, v, _ in layers), default=1) or 1
    return sum(math.ceil(width * h / most_h / 8) * math.ceil(height * v / most_v / 8) * 128 for _, h, v, _ in layers)


def _finish_cost(width: int, height: int, square: int | None, max_side: int | None) -> int:
    """What _finish holds beside the decoded picture, upright width x height: the band being made
    RGB, and the RGB pictures it is resized through."""
    rows = 1
    if square and _columns_first(width, height, square):
        pixels = width * height + width * square + square * square  # whole, Pillow's pass down, result
    elif square:
        pixels = square * height + square * square  # resized across (full height), result
    elif max_side and _fit_size(width, height, max_side) != (width, height):
        final = _fit_size(width, height, max_side)
        factor_x, rows = _reduce_factors((width, height), final)
        pixels = (math.ceil(width / factor_x) + final[0]) * math.ceil(height / rows) + final[0] * final[1]
    else:
        pixels = width * height
    return pixels * _RGB_PIXEL_BYTES + min(_band_rows(width, rows), height) * width * _BAND_PIXEL_BYTES


# --- the decoded picture -> upright RGB, a band of rows at a time --------------------------------


def _finish(image: Image.Image, turn: Image.Transpose | None, square: int | None, max_side: int | None) -> Image.Image:
    if square:
        return _square(image, turn, square)
    if max_side:
        return _fit(image, turn, max_side)
    return _whole(image, turn)


def _upright_size(image: Image.Image, turn: Image.Transpose | None) -> tuple[int, int]:
    return image.size[::-1] if turn in _QUARTER_TURNS else image.size


def _band_rows(width: int, multiple: int = 1) -> int:
    return max(1, _BAND_PIXELS // width // multiple) * multiple


def _rgb_bands(image: Image.Image, turn: Image.Transpose | None, multiple: int = 1):
    """(top, RGB band) of the upright picture, top to bottom, each a multiple of `multiple` rows
    high but the last. A band is cut from the stored pixels and turned and converted on its own,
    so neither the upright picture nor its RGB (let alone RGBA) copy ever exists whole."""
    width, height = _upright_size(image, turn)
    rows = _band_rows(width, multiple)
    # 16- and 32-bit grey scale by one factor for the whole picture, as it would whole (_to_rgb).
    peak = 65535.0 if image.mode.startswith("I;16") or (image.mode == "I" and image.getextrema()[1] > 255) else 255.0
    for top in range(0, height, rows):
        yield top, _to_rgb(_upright_rows(image, turn, top, min(top + rows, height)), peak)


def _upright_rows(image: Image.Image, turn: Image.Transpose | None, top: int, bottom: int) -> Image.Image:
    """Rows top..bottom of the upright picture, in `image`'s own mode: the stored pixels they come
    from, cut out, then turned (crop and transpose keep the palette and transparency)."""
    width, height = image.size
    if turn in (None, Image.Transpose.FLIP_LEFT_RIGHT):
        box = (0, top, width, bottom)
    elif turn in (Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_180):
        box = (0, height - bottom, width, height - top)
    elif turn in (Image.Transpose.TRANSPOSE, Image.Transpose.ROTATE_270):  # upright rows are stored columns
        box = (top, 0, bottom, height)
    else:  # ROTATE_90, TRANSVERSE: upright rows are stored columns, right to left
        box = (width - bottom, 0, width - top, height)
    band = image.crop(box)
    return band if turn is None else band.transpose(turn)


def _whole(image: Image.Image, turn: Image.Transpose | None) -> Image.Image:
    whole = Image.new("RGB", _upright_size(image, turn))
    for top, band in _rgb_bands(image, turn):
        whole.paste(band, (0, top))
    return whole


def _columns_first(width: int, height: int, square: int) -> bool:
    """Whether Pillow resizes this picture to square x square columns first (Image.resize does so for a
    sliver over 100 times taller than wide), so that resizing it by rows would give other pixels."""
    return height > width * 100 and square < height


def _square(image: Image.Image, turn: Image.Transpose | None, square: int) -> Image.Image:
    """The upright RGB picture resized to square x square (BILINEAR): the same pixels as resizing it
    whole, which training's cached arrays came from. Pillow resizes rows first, into 8-bit rows, then
    columns; each band's rows are resized as they come, so only the picture resized across is kept."""
    width, height = _upright_size(image, turn)
    if _columns_first(width, height, square):
        return _whole(image, turn).resize((square, square), Image.Resampling.BILINEAR)
    across = Image.new("RGB", (square, height))
    for top, band in _rgb_bands(image, turn):
        across.paste(band.resize((square, band.height), Image.Resampling.BILINEAR), (0, top))
    return across.resize((square, square), Image.Resampling.BILINEAR)


def _fit_size(width: int, height: int, side: int) -> tuple[int, int]:
    """The size Image.thumbnail((side, side)) gives: the aspect ratio kept, rounded to the nearest."""
    if side >= width and side >= height:
        return width, height
    aspect = width / height

    def nearest(number: float, key) -> int:
        return max(min(math.floor(number), math.ceil(number), key=key), 1)

    if aspect <= 1:
        return nearest(side * aspect, lambda n: abs(aspect - n / side)), side
    return side, nearest(side / aspect, lambda n: 0 if n == 0 else abs(aspect - side / n))


def _reduce_factors(size: tuple[int, int], final: tuple[int, int]) -> tuple[int, int]:
    """Image.thumbnail's first step (reducing_gap 2): average whole blocks, keeping at least twice the final size."""
    return int(size[0] / final[0] / 2.0) or 1, int(size[1] / final[1] / 2.0) or 1


def _fit(image: Image.Image, turn: Image.Transpose | None, side: int) -> Image.Image:
    """The upright RGB picture fitted in side x side: the same pixels as Image.thumbnail on it whole
    (reduce by whole blocks, then BICUBIC), each band reduced as it comes."""
    width, height = _upright_size(image, turn)
    final = _fit_size(width, height, side)
    if final == (width, height):
        return _whole(image, turn)
    factor_x, factor_y = _reduce_factors((width, height), final)
    reduced = Image.new("RGB", (math.ceil(width / factor_x), math.ceil(height / factor_y)))
    for top, band in _rgb_bands(image, turn, multiple=factor_y):
        reduced.paste(band.reduce((factor_x, factor_y)), (0, top // factor_y))
    return reduced.resize(final, Image.Resampling.BICUBIC, box=(0, 0, width / factor_x, height / factor_y))


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
        raise ImageTooLarge(f"{name}: file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
    try:
        with warnings.catch_warnings():
            # _check_size enforces our own limit from the header; Pillow's warning is redundant.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            # An explicit list, so no other decoder (and no external program) ever sees the bytes.
            return Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError:
        raise ImageFormatError(f"{name}: not an image, or not a supported format ({FORMAT_NAMES})") from None
    except Image.DecompressionBombError:
        raise ImageTooLarge(f"{name}: image is too large (over {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: unreadable image ({_first_line(error)})") from None
    except Exception as error:  # a header parser's own bug on hostile bytes: this file's error, as in _decode
        raise ImageError(f"{name}: unreadable image ({type(error).__name__}: {_first_line(error)})") from None


def _check_size(image: Image.Image, source: ImageSource) -> None:
    width, height = image.size
    if width * height > MAX_PIXELS:
        raise ImageTooLarge(
            f"{_name(source)}: image is {width}x{height}, over the {MAX_PIXELS:,}-pixel limit"
        )
    if width == 0 or height == 0:
        raise ImageError(f"{_name(source)}: image has no pixels ({width}x{height})")


def _to_rgb(image: Image.Image, peak: float = 255.0) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, with transparency flattened onto BACKGROUND.

    `peak`: the grey level that becomes white in 32-bit grey ("I"); 16-bit grey always uses 65535.
    """
    mode = image.mode
    if mode == "RGB":
        return image
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        # 16-bit grayscale: Pillow's convert("L") would clip at 255 (all white), so rescale.
        return _gray_to_rgb(np.asarray(image), 65535.0 if mode.startswith("I;16") else peak)
    if mode == "F":
        return _gray_to_rgb(np.asarray(image), None)
    if mode in ("RGBA", "LA", "La", "PA", "RGBa") or (mode in ("P", "L") and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # P, L, 1, CMYK, YCbCr, LAB, HSV


def _gray_to_rgb(pixels: np.ndarray, peak: float | None) -> Image.Image:
    """16-bit or float grey (a band of rows) -> RGB: divided by `peak` and times 255 (float grey as
    it is), rounded and clipped, in one float64 copy worked in place (8 bytes a pixel of the band)."""
    values = pixels.astype(np.float64)
    if peak is not None:
        values /= peak
        values *= 255.0
    np.clip(np.rint(values, out=values), 0, 255, out=values)
    return Image.fromarray(values.astype(np.uint8), mode="L").convert("RGB")


def _array_to_image(array: np.ndarray) -> Image.Image:
    """Accept (H, W), (H, W, 1), (H, W, 3) or (H, W, 4) arrays; uint8, uint16 or floats in [0, 1]."""
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
        raise ImageError(f"Expected an (H, W), (H, W, 3) or (H, W, 4) array. Received: shape={array.shape}")
    if array.shape[0] * array.shape[1] > MAX_PIXELS:
        raise ImageTooLarge(f"array is {array.shape[1]}x{array.shape[0]}, over the {MAX_PIXELS:,}-pixel limit")
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


def decode_sources(sources: Sequence[ImageSource], names: Sequence[str],
                   image_size: int) -> list[tuple[np.ndarray, tuple[int, int]] | str]:
    """Each source as (uint8 image, upright size) for the model, or the one-line reason it could not be read
    (its name and "image: " left off): what `Classifier.classify_decoded` takes, here so that a bulk job's
    actors and the int8 calibration decode without importing the inference stack."""
    decoded: list[tuple[np.ndarray, tuple[int, int]] | str] = []
    for source, name in zip(sources, names, strict=True):
        try:
            decoded.append(decode_image_with_size(source, image_size))
        except ImageError as error:
            decoded.append(str(error).removeprefix(f"{name}: ").removeprefix("image: "))
    return decoded
