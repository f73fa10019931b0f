"""The one way an image becomes model input, for training, evaluation, the CLI and the apps.

Any source (path, bytes, file object, PIL image, NumPy array) -> upright RGB -> resized to the
model's size -> uint8 (H, W, 3). `to_model_input` turns a uint8 batch into float32 in [0, 1],
which is what every dogcat model takes: the model itself maps [0, 1] to MobileNetV2's [-1, 1].

Training caches the uint8 arrays from `decode_image` and converts them with `to_model_input`,
so for the same file the training tensor (augmentation off) and the serving tensor are equal.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

DEFAULT_IMAGE_SIZE = 224
# A 108-megapixel phone photo passes; a decompression bomb (a tiny PNG that inflates to
# gigabytes) is refused before its pixels are decoded.
MAX_PIXELS = 120_000_000
# Uploads are capped in bytes as well, before they are even parsed.
MAX_FILE_BYTES = 50 * 1024 * 1024
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


def load_image(source: ImageSource, draft_size: int | None = None) -> Image.Image:
    """Open any supported source as an upright 8-bit RGB PIL image, or raise ImageError."""
    return _load_upright(source, draft_size)[0]


def _load_upright(source: ImageSource, draft_size: int | None = None) -> tuple[Image.Image, tuple[int, int]]:
    """(upright 8-bit RGB image, its upright (width, height) before any draft reduction)."""
    if isinstance(source, np.ndarray):
        image = _array_to_image(source)
        return image, image.size
    image = source if isinstance(source, Image.Image) else _open(source)
    _check_size(image, source)
    size = image.size
    if draft_size and image.format == "JPEG":
        # Let libjpeg decode a large photo at 1/2, 1/4 or 1/8 scale, never below the target:
        # a 12-megapixel upload then costs a fraction of a full decode.
        image.draft("RGB", (draft_size, draft_size))
    try:
        image.load()
        stored = image.size
        image = ImageOps.exif_transpose(image)
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{_name(source)}: truncated or corrupt image data ({_first_line(error)})") from None
    if image.size != stored:  # EXIF turned it a quarter turn: so is its original size
        size = size[::-1]
    return _to_rgb(image), size


def _open(source: ImageSource) -> Image.Image:
    name = _name(source)
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        if not path.is_file():
            raise ImageError(f"{name}: no such file")
        if path.stat().st_size > MAX_FILE_BYTES:
            raise ImageError(f"{name}: file is over the {MAX_FILE_BYTES // 2**20} MiB limit")
        data = path.read_bytes()
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
            return Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{name}: not an image (or a format Pillow cannot read)") from None
    except Image.DecompressionBombError:
        raise ImageError(f"{name}: image is too large (over {MAX_PIXELS:,} pixels)") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageError(f"{name}: unreadable image ({_first_line(error)})") from None


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
        pixels = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if mode.startswith("I;16") or pixels.max(initial=0) > 255 else 255.0
        gray = np.clip(np.rint(pixels / peak * 255.0), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "F":
        gray = np.clip(np.rint(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif mode in ("LA", "La", "PA", "RGBa") or (mode == "L" and "transparency" in image.info):
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGB", image.size, BACKGROUND)
        background.paste(image, mask=image.getchannel("A"))
        return background
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


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
