import os

import keras
import pytest


@pytest.mark.skipif(os.environ.get("DOGCAT_EXPECT_NO_TENSORFLOW") != "1", reason="only in the TensorFlow-free session")
def test_tensorflow_is_not_installed_where_the_jax_suite_runs():
    """The jax extra must not pull TensorFlow in: the whole suite passing here proves nothing needs it."""
    assert keras.backend.backend() == "jax"
    with pytest.raises(ImportError):
        import tensorflow  # noqa: F401
