"""Shared fixtures: a small slice of the real embedded MNIST digits, loaded once, and tiny trained runs of every
family, trained once (``tiny_runs``).

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
    return _write_npz(tmp_path / "digits.npz", mnist_small)


def _write_npz(path, dataset) -> str:
    """``dataset`` written to ``path`` as a Keras-layout ``.npz`` (uint8 images); returns its ``npz:`` spec."""
    np.savez(
        path,
        x_train=(dataset.x_train[..., 0] * 255).round().astype(np.uint8),
        y_train=dataset.y_train,
        x_test=(dataset.x_test[..., 0] * 255).round().astype(np.uint8),
        y_test=dataset.y_test,
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


# The training settings of tiny_runs' runs.
TINY_RUN = dict(epochs=1, batch_size=128, eval_batch_size=50, progress=False, checkpoint_every=1, tensorboard=False)


@pytest.fixture(scope="session")
def tiny_runs(tmp_path_factory, mnist_small):
    """Tiny trained runs of every family (1 epoch on ``mnist_small``), trained once for the session and shared by
    the tests that load or evaluate a workdir (tests/test_trained.py, tests/test_evaluate_families.py): the VAE
    (seeds 0 and 1), the HVAE, the conv VAE, the autoencoder, experiments.cvae's run (latent size 2) and
    the VQ-VAE with its PixelCNN prior. Returns ``(root of the workdirs, npz: spec, the Dataset)``; the
    workdirs are ``root/<family>``. Tests may add files to a workdir (experiments.evaluate's eval.json) but
    must not change its run. Like ``mnist_small``, it runs after ``_session_cache`` points the cache at the
    session's folder."""
    import dataclasses

    from experiments import cvae as cvae_exp
    from vae_jax import runner
    from vae_jax.tasks import autoencoder, conv_vae, hvae, vae

    root = tmp_path_factory.mktemp("tiny_runs")
    spec = _write_npz(root / "digits.npz", mnist_small)
    dataset = data.load_dataset(spec)
    runs_root = str(root / "runs")
    shared = dict(TINY_RUN, dataset=spec)
    families = {
        "vae": (vae.VAEConfig(latent_dim=3, hidden=(32,), seeds="2", **shared), vae.vae_task),
        "conv_vae": (conv_vae.ConvVAEConfig(latent_dim=3, channels=(4, 8), hidden=0, **shared), conv_vae.conv_vae_task),
        "hvae": (
            hvae.HVAEConfig(latent_dim=3, top_latent_dim=2, hidden=(32,), top_hidden=(8,), **shared),
            hvae.hvae_task,
        ),
        "autoencoder": (autoencoder.AEConfig(latent_dim=4, hidden=(32,), **shared), autoencoder.ae_task),
    }
    for kind, (config, make_task) in families.items():
        config = dataclasses.replace(config, workdir=os.path.join(runs_root, kind))
        runner.train(config, make_task(config, dataset.image_shape)[1], dataset)
    flags = ["--dataset", spec, "--epochs", "1", "--batch-size", "128", "--no-progress", "--no-tensorboard"]
    cvae_exp.main([*flags, "--workdir", os.path.join(runs_root, "cvae"), "--latent-dim", "2", "--hidden", "32"])
    _train_vqvae(os.path.join(runs_root, "vqvae"), spec, dataset)
    return runs_root, spec, dataset


def _train_vqvae(workdir, spec, dataset):
    """Both stages as experiments.vqvae lays them out (its configs), without its sample-quality measurements."""
    from experiments import vqvae as vqvae_exp
    from vae_jax import runner
    from vae_jax.tasks import prior as prior_lib
    from vae_jax.tasks import vqvae as vq

    config = vqvae_exp.VQVAEExperimentConfig(
        dataset=spec,
        workdir=workdir,
        prior_epochs=3,
        codebook_size=16,
        code_dim=4,
        channels=(4, 8),
        res_blocks=0,
        prior_channels=8,
        prior_layers=2,
        **TINY_RUN,
    )
    vq_config, prior_config = vqvae_exp.stage_configs(config, workdir)
    model, task = vq.vqvae_task(vq_config, dataset.image_shape)
    params = runner.train(vq_config, task, dataset).params(0)
    codes = prior_lib.codes_dataset(
        vq.encode_indices(model, params, dataset.x_train),
        vq.encode_indices(model, params, dataset.x_test),
        "VQ-VAE codes",
    )
    runner.train(prior_config, prior_lib.prior_task(prior_config, model.grid_shape, model.num_codes)[1], codes)
