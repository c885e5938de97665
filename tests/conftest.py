"""Shared fixtures: a small slice of the real embedded MNIST digits, loaded once.

Compiling is most of the suite's time: the tests' tiny programs run for
milliseconds but take up to seconds to compile. So the suite compiles with
XLA:CPU's backend optimisation level 0 and without its fusion emitters (set
here, before any backend starts, and inherited by the training processes tests
start): measured on a 2-core CPU, the tiny VAE's initial state and epoch
compile in 0.46 s and 0.83 s instead of 0.60 s and 1.12 s at level 0 alone,
and 1.2 s and 1.9 s at the default level. Both choices change how fast the
code runs and the rounding of some float results in the last bits, not what
it computes. The persistent compilation cache is off in the test processes
themselves (programs differ from test to test, so it only costs writes); the
training processes that tests start share one (see ``_session_xla_cache``).
"""

import os

os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_backend_optimization_level=0", "--xla_cpu_use_fusion_emitters=false"]
).strip()

import jax  # noqa: E402

jax.config.update("jax_enable_compilation_cache", False)

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from vae_jax import data  # noqa: E402


@pytest.fixture(scope="session")
def mnist_small(_session_cache):
    """A Dataset of 512 train / 128 test real MNIST digits (from the embedded fallback), parsed into the
    session's cache (never the user's)."""
    x_train, y_train, x_test, y_test = data.embedded_mnist()
    return data.Dataset(
        x_train[:512, ..., None].astype(np.float32) / 255.0,
        y_train[:512],
        x_test[:128, ..., None].astype(np.float32) / 255.0,
        y_test[:128],
        source="embedded MNIST slice",
    )


@pytest.fixture()
def small_npz(tmp_path, mnist_small):
    """``mnist_small`` written as a Keras-layout ``.npz`` (uint8 images); returns its ``npz:`` spec."""
    path = tmp_path / "digits.npz"
    np.savez(
        path,
        x_train=(mnist_small.x_train[..., 0] * 255).round().astype(np.uint8),
        y_train=mnist_small.y_train,
        x_test=(mnist_small.x_test[..., 0] * 255).round().astype(np.uint8),
        y_test=mnist_small.y_test,
    )
    return f"npz:{path}"


@pytest.fixture(scope="session")
def _session_xla_cache(tmp_path_factory):
    """One XLA compilation cache for the training processes that tests start (never the user's).

    They compile the same small programs again and again; sharing the cache
    lets each load them instead.
    """
    return tmp_path_factory.mktemp("xla_cache")


@pytest.fixture(scope="session")
def _session_arrays_cache(tmp_path_factory):
    """One cache of parsed arrays for the whole session (never the user's): the embedded digits are parsed once
    (seconds), not once per test or per training process a test starts."""
    return tmp_path_factory.mktemp("arrays_cache")


def _cache_folder(tmp_path_factory, name: str, xla_cache, arrays_cache):
    """A new cache folder whose compiled programs and parsed arrays are the session's."""
    folder = tmp_path_factory.mktemp(name)
    (folder / "xla").symlink_to(xla_cache, target_is_directory=True)
    (folder / "arrays").symlink_to(arrays_cache, target_is_directory=True)
    return folder


@pytest.fixture(scope="session", autouse=True)
def _session_cache(tmp_path_factory, _session_xla_cache, _session_arrays_cache):
    """The cache folder of session-scoped fixtures (``mnist_small`` parses the digits into it), set before any
    of them runs: the per-test folder below is set only after the session fixtures a test uses."""
    folder = _cache_folder(tmp_path_factory, "session_cache", _session_xla_cache, _session_arrays_cache)
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VAE_JAX_CACHE_DIR", str(folder))
        yield folder


@pytest.fixture(autouse=True)
def _private_probe_cache(tmp_path_factory, monkeypatch, _session_cache, _session_xla_cache, _session_arrays_cache):
    """Each test remembers TFDS probe answers in its own cache folder, never the user's; compiled programs and
    parsed arrays are shared."""
    folder = _cache_folder(tmp_path_factory, "cache", _session_xla_cache, _session_arrays_cache)
    monkeypatch.setenv("VAE_JAX_CACHE_DIR", str(folder))
