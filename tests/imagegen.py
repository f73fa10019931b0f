"""Test images made on the fly with Pillow and NumPy: nothing downloaded, no binary fixtures."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

import dogcat.preprocessing  # noqa: F401  (registers pillow-heif's HEIF with Pillow, for encode(..., "HEIF"))

RED = (255, 0, 0)
GREEN = (0, 255, 0)
BLUE = (0, 0, 255)
YELLOW = (255, 255, 0)
WHITE = (255, 255, 255)

T = Image.Transpose
# EXIF Orientation (tag 274) -> the transpose that turns the upright picture into the stored
# pixels, i.e. the inverse of what a viewer applies (EXIF 2.3, section 4.6.4).
# 6: row 0 is the visual right side, column 0 the visual top -> stored = upright turned 90 deg CCW.
# 8: row 0 is the visual left side, column 0 the visual bottom -> stored = upright turned 90 deg CW.
_TO_STORED = {
    1: None,
    2: T.FLIP_LEFT_RIGHT,
    3: T.ROTATE_180,
    4: T.FLIP_TOP_BOTTOM,
    5: T.TRANSPOSE,
    6: T.ROTATE_90,
    7: T.TRANSVERSE,
    8: T.ROTATE_270,
}
ORIENTATION_TAG = 274


def encode(image: Image.Image, fmt: str = "PNG", **save_kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_kwargs)
    return buffer.getvalue()


def make_image(mode: str = "RGB", size: tuple[int, int] = (64, 48), fmt: str = "PNG", color=None, **save_kwargs) -> bytes:
    """A solid `mode` image of `size` (width, height), encoded as `fmt`."""
    return encode(Image.new(mode, size, color if color is not None else 0), fmt, **save_kwargs)


def halves(left, right, size: tuple[int, int] = (64, 48), mode: str = "RGB") -> Image.Image:
    """Left half one colour, right half another."""
    image = Image.new(mode, size, left)
    image.paste(right, (size[0] // 2, 0, size[0], size[1]))
    return image


def quadrants(size: tuple[int, int] = (90, 60)) -> Image.Image:
    """Red top-left, blue top-right, green bottom-left, yellow bottom-right: tells all 8 orientations apart."""
    width, height = size
    image = Image.new("RGB", size, RED)
    image.paste(BLUE, (width // 2, 0, width, height // 2))
    image.paste(GREEN, (0, height // 2, width // 2, height))
    image.paste(YELLOW, (width // 2, height // 2, width, height))
    return image


def make_exif_jpeg(upright: Image.Image, orientation: int, **save_kwargs) -> bytes:
    """A JPEG whose stored pixels are `upright` turned per `orientation`, with the EXIF tag saying so."""
    return make_exif_photo(upright, orientation, "JPEG", **save_kwargs)


def make_exif_photo(upright: Image.Image, orientation: int, fmt: str, **save_kwargs) -> bytes:
    """`upright` stored turned per `orientation`, the EXIF tag saying so, as a camera or phone writes it
    in `fmt` (JPEG, HEIF, AVIF; pillow-heif moves the tag into HEIF's own rotation boxes, as an iPhone does)."""
    method = _TO_STORED[orientation]
    stored = upright.transpose(method) if method is not None else upright
    exif = Image.Exif()
    exif[ORIENTATION_TAG] = orientation
    return encode(stored, fmt, exif=exif.tobytes(), quality=95, **save_kwargs)


def make_pet(label: str, seed: int, size: tuple[int, int] = (64, 48)) -> Image.Image:
    """A stand-in photo: "cat" is warm with stripes, "dog" cool with spots; `seed` varies it."""
    rng = np.random.default_rng([seed, 0 if label == "cat" else 1])
    width, height = size
    yy, xx = np.mgrid[:height, :width]
    if label == "cat":
        base, mark = np.array([220, 140, 50]), np.array([90, 50, 20])
        pattern = ((xx + yy // 2 + rng.integers(8)) // rng.integers(3, 8)) % 2 == 0
    else:
        base, mark = np.array([70, 100, 200]), np.array([240, 240, 230])
        cy, cx = rng.integers(height), rng.integers(width)
        pattern = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.integers(20, 200)
    pixels = np.where(pattern[..., None], mark, base) + rng.integers(-25, 26, 3)
    pixels = pixels + rng.normal(0, 6, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")


def write_pet(path: str | Path, label: str, seed: int, size: tuple[int, int] = (64, 48)) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode(make_pet(label, seed, size), "JPEG", quality=90))
    return path


def make_huge_png(width: int, height: int) -> bytes:
    """A valid all-black 1-bit grayscale PNG of width x height, built row by row to keep memory small."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1 bit, grayscale, no interlace
    rows = b"\x00" * (1 + (width + 7) // 8) * 1000  # filter byte + packed bits, 1000 rows at a time
    compressor = zlib.compressobj(9)
    parts = [compressor.compress(rows) for _ in range(height // 1000)]
    parts.append(compressor.compress(rows[: len(rows) // 1000 * (height % 1000)]))
    idat = b"".join(parts) + compressor.flush()
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
