"""Grad-CAM: where in the photo the classifier found the class it chose, as a heatmap.

dogcat's head is global average pooling, Dense + ReLU, Dropout (an identity at inference) and
Dense + softmax, so the gradient of a class's logit with respect to the base's last feature map A
(H x W x K) is the same at every position and needs no autodiff:

    d logit_c / d pooled = W1 . diag(relu'(z)) . W2[:, c]      (z: the photo's own Dense input)
    d pooled / d A_ij    = 1 / (H * W)

so alpha_c = that gradient / (H * W) and the map is ReLU(sum_k alpha_ck A_k), scaled to [0, 1].
It is NumPy, the same on every backend. The Keras runtime computes the gradient here from the
model's weights (`logit_gradients`); the ONNX twin computes the same product in its graph
(dogcat.onnx_graph), because an ONNX-only install (the Space) has no way to read weights.
The pre-softmax logit, not the probability: with two classes the softmax saturates near p = 1,
so its gradient vanishes for confident photos, which are the ones most worth explaining.

`overlay` is the one picture every surface shows: the map, upsampled and coloured, over the
upright photo at its own aspect ratio. It needs only NumPy and Pillow (the Space has no
matplotlib), hence the small colour table below.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from dogcat.preprocessing import ImageSource, load_image

if TYPE_CHECKING:
    from dogcat.verdict import Prediction

# The ONNX twin's outputs for Grad-CAM (dogcat.onnx_graph writes them; named here, where no Keras is needed).
FEATURE_MAP = "feature_map"  # (N, H, W, K): the base's output, NHWC as in Keras
LOGIT_GRADIENTS = "logit_gradients"  # (N, K, classes): d logit / d pooled features
OVERLAY_MAX_SIDE = 512  # display size: the map is 7 x 7, a bigger picture shows nothing more
OVERLAY_STRENGTH = 0.6  # how much colour the hottest cell gets; cold cells show the photo itself
# Dark blue -> cyan -> yellow -> red: cold to hot, readable over any photo (a coarse "jet").
_ANCHORS = np.array([(0, 0, 128), (0, 90, 255), (0, 220, 220), (255, 230, 0), (255, 60, 0), (180, 0, 0)], float)
COLOUR_TABLE = np.stack(
    [np.interp(np.linspace(0, 1, 256), np.linspace(0, 1, len(_ANCHORS)), _ANCHORS[:, c]) for c in range(3)], axis=1
).astype(np.uint8)  # (256, 3)


def logit_gradients(pooled: np.ndarray, dense_kernel: np.ndarray, dense_bias: np.ndarray,
                    logits_kernel: np.ndarray) -> np.ndarray:
    """d logit / d pooled for every class: (N, K) pooled features -> (N, K, classes).

    The Dense + ReLU layer is (dense_kernel, dense_bias); the last Dense's kernel maps its output
    to the logits (its bias and the softmax do not enter the gradient).
    """
    active = (pooled @ dense_kernel + dense_bias > 0).astype(np.float32)  # relu'(z); 0 at z = 0, as in TF/JAX
    return np.einsum("kj,nj,jc->nkc", dense_kernel, active, logits_kernel, optimize=True)


def grad_cam(feature_map: np.ndarray, gradients: np.ndarray) -> np.ndarray:
    """(N, H, W, K) feature map and (N, K, classes) logit gradients -> (N, H, W, classes) maps in [0, 1].

    Each photo's map for each class is scaled so its hottest cell is 1; a map with no positive
    cell (nothing speaks for that class) stays all zero.
    """
    height, width = feature_map.shape[1:3]
    alpha = gradients / np.float32(height * width)
    maps = np.maximum(np.einsum("nhwk,nkc->nhwc", feature_map, alpha, optimize=True), 0)
    peak = maps.max(axis=(1, 2), keepdims=True)
    return np.divide(maps, peak, out=np.zeros_like(maps), where=peak > 0).astype(np.float32)


def overlay(source: ImageSource, heatmap: np.ndarray, max_side: int = OVERLAY_MAX_SIDE) -> Image.Image:
    """The heatmap, coloured, over the upright photo (EXIF applied) at its aspect ratio, longest side <= max_side.

    The map covers the whole photo: the model's input is the photo resized, not cropped, to a square.
    Raises ImageError where `source` cannot be read.
    """
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.ndim != 2 or not np.all((heatmap >= 0) & (heatmap <= 1)):
        span = f"[{heatmap.min():.3g}, {heatmap.max():.3g}]" if heatmap.size else "empty"
        raise ValueError(f"Expected a 2-D heatmap in [0, 1]. Received: heatmap=shape {heatmap.shape}, values {span}")
    photo = load_image(source, draft_size=max_side, max_side=max_side)
    heat = np.asarray(Image.fromarray(heatmap).resize(photo.size, Image.Resampling.BILINEAR))
    heat = np.clip(heat, 0, 1)[..., None]
    colour = COLOUR_TABLE[np.round(heat[..., 0] * 255).astype(np.uint8)].astype(np.float32)
    weight = OVERLAY_STRENGTH * heat
    mixed = np.asarray(photo, dtype=np.float32) * (1 - weight) + colour * weight
    return Image.fromarray(np.round(mixed).astype(np.uint8))


def overlay_filename(source: str) -> str:
    """A PNG name for `source`'s overlay: its stem, then a hash of the whole path, so that
    cat.jpg from two folders gets two files, and the same photo the same file on every run."""
    stem = "".join(c if c.isalnum() or c in "-_." else "_" for c in Path(source).stem)[:60] or "photo"
    return f"{stem}-{hashlib.sha256(os.fsencode(source)).hexdigest()[:10]}.png"


def write_overlays(predictions: Sequence[Prediction], out_dir: str | Path) -> list[Path | None]:
    """Write each explained prediction's overlay into `out_dir` (created), as `overlay_filename`.

    Returns the path written for each prediction, None where it has no heatmap (an unreadable file).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path | None] = []
    for prediction in predictions:
        if prediction.heatmap is None:
            written.append(None)
            continue
        path = out_dir / overlay_filename(prediction.source)
        overlay(prediction.source, prediction.heatmap).save(path, format="PNG")
        written.append(path)
    return written
