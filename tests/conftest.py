"""Shared fixtures: a small slice of the real embedded MNIST digits, loaded once."""

import numpy as np
import pytest

from vae_jax import data


@pytest.fixture(scope="session")
def mnist_small():
    """A Dataset of 512 train / 128 test real MNIST digits (from the embedded fallback)."""
    x_train, y_train, x_test, y_test = data.embedded_mnist()
    return data.Dataset(
        x_train[:512, ..., None].astype(np.float32) / 255.0, y_train[:512],
        x_test[:128, ..., None].astype(np.float32) / 255.0, y_test[:128],
        source="embedded MNIST slice",
    )


@pytest.fixture()
def small_npz(tmp_path, mnist_small):
    """``mnist_small`` written as a Keras-layout ``.npz`` (uint8 images); returns its ``npz:`` spec."""
    path = tmp_path / "digits.npz"
    np.savez(path, x_train=(mnist_small.x_train[..., 0] * 255).round().astype(np.uint8), y_train=mnist_small.y_train,
             x_test=(mnist_small.x_test[..., 0] * 255).round().astype(np.uint8), y_test=mnist_small.y_test)
    return f"npz:{path}"


@pytest.fixture(autouse=True)
def _private_probe_cache(tmp_path_factory, monkeypatch):
    """Each test remembers TFDS probe answers in its own cache folder, never the user's."""
    monkeypatch.setenv("VAE_JAX_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
