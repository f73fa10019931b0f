"""`.keras` files move between backends: saved on one, loaded on the other, same predictions.

Each backend runs in its own process (Keras picks its backend once, at import). Needs an
environment with both TensorFlow and JAX: the `portability` nox session, which sets
DOGCAT_REQUIRE_BOTH_BACKENDS=1 so that a missing backend fails instead of skipping.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers import REAL_CAT, REAL_DOG, REPO

BACKENDS = ("tensorflow", "jax")
TOLERANCE = 1e-5
missing = [b for b in BACKENDS if importlib.util.find_spec(b) is None]
if missing and os.environ.get("DOGCAT_REQUIRE_BOTH_BACKENDS") == "1":
    raise RuntimeError(f"the portability session needs both backends; missing: {missing}")
pytestmark = [
    pytest.mark.portability,
    pytest.mark.slow,
    pytest.mark.skipif(bool(missing), reason=f"needs both backends; missing: {missing}"),
]


def _run(backend: str, *args: str) -> None:
    env = {**os.environ, "KERAS_BACKEND": backend}
    result = subprocess.run([sys.executable, "-m", "tests.portability_worker", *args],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == backend


@pytest.mark.imagenet
@pytest.mark.parametrize(("saved_on", "loaded_on"), [("tensorflow", "jax"), ("jax", "tensorflow")])
def test_model_trained_on_one_backend_predicts_the_same_on_the_other(tmp_path, imagenet_weights, saved_on, loaded_on):
    images = np.random.default_rng(0).random((8, 96, 96, 3), dtype=np.float32)
    np.save(tmp_path / "images.npy", images)
    _run(saved_on, "train", str(tmp_path / "model"), str(tmp_path / "images.npy"), str(tmp_path / "here.npy"))
    _run(loaded_on, "predict", str(tmp_path / "model" / "dog_cat_classifier.keras"), str(tmp_path / "images.npy"),
         str(tmp_path / "there.npy"))
    here, there = np.load(tmp_path / "here.npy"), np.load(tmp_path / "there.npy")
    assert here.std() > 1e-3, "predictions should vary across images, or the comparison proves nothing"
    np.testing.assert_allclose(there, here, atol=TOLERANCE, rtol=0)


@pytest.mark.shared_data
def test_shipped_model_gives_the_same_probabilities_on_both_backends(tmp_path, shared_data):
    from dogcat.preprocessing import preprocess

    files = [shared_data / REAL_CAT, shared_data / REAL_DOG, *sorted(shared_data.glob("cat.1*.jpg"))[:14]]
    np.save(tmp_path / "images.npy", preprocess(files))
    shipped = str(REPO / "models" / "dog_cat_classifier.keras")
    for backend in BACKENDS:
        _run(backend, "predict", shipped, str(tmp_path / "images.npy"), str(tmp_path / f"{backend}.npy"))
    np.testing.assert_allclose(np.load(tmp_path / "jax.npy"), np.load(tmp_path / "tensorflow.npy"), atol=TOLERANCE, rtol=0)
