"""The library in a user's own code: public names, a light import, model.apply with init_variables,
docstrings on every public method, and shape mistakes that raise instead of broadcasting."""

import inspect
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import vae_jax
from vae_jax import losses


def test_public_names_are_where_users_look_first():
    from vae_jax import models

    assert vae_jax.VAE is models.VAE is models.vae.VAE
    assert vae_jax.init_params is models.vae.init_params and vae_jax.init_variables is models.vae.init_variables
    assert list(inspect.signature(vae_jax.init_params).parameters) == ["model", "key"]
    # An MLP VAE 30 -> 8 -> (mean, logvar) of 3 -> 8 -> 30: its weights and biases, counted by hand.
    params = vae_jax.init_params(vae_jax.VAE(latent_dim=3, hidden=(8,), image_shape=(6, 5, 1)), jax.random.key(0))
    count = sum(leaf.size for leaf in jax.tree_util.tree_leaves(params))
    assert count == (30 * 8 + 8) + 2 * (8 * 3 + 3) + (3 * 8 + 8) + (8 * 30 + 30)
    assert vae_jax.AutoEncoder is models.AutoEncoder is models.autoencoder.AutoEncoder
    assert vae_jax.losses is losses
    dataset = vae_jax.data.load_dataset("mnist:embedded")  # the public loader returns the embedded digits
    assert dataset.x_train.shape == (4500, 28, 28, 1) and dataset.x_test.shape == (500, 28, 28, 1)
    assert sorted(np.unique(dataset.y_test)) == list(range(10)) and np.bincount(dataset.y_test).tolist() == [50] * 10
    assert dataset.x_train.min() == 0.0 and dataset.x_train.max() == 1.0  # pixels scaled to [0, 1]


def test_import_loads_neither_tensorflow_nor_orbax():
    code = "import sys, vae_jax; print(sorted(m for m in ('tensorflow', 'orbax', 'matplotlib') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120)
    assert out.stdout.strip() == "[]"


def test_model_apply_takes_init_variables_and_matches_the_parts():
    model = vae_jax.VAE(latent_dim=3, hidden=(8,), image_shape=(6, 5, 1))
    variables = vae_jax.init_variables(model, jax.random.key(0))
    assert set(variables) == {"params"}
    params = vae_jax.init_params(model, jax.random.key(0))
    jax.tree_util.tree_map(np.testing.assert_array_equal, params, variables["params"])
    x = jax.random.uniform(jax.random.key(1), (4, 6, 5, 1))
    key = jax.random.key(2)
    logits, mean, logvar, z = model.apply(variables, x, key)
    assert logits.shape == (4, 6, 5, 1) and mean.shape == logvar.shape == z.shape == (4, 3)
    # The parts, applied one by one, give the same numbers.
    enc_mean, enc_logvar = model.apply(variables, x, method=model.encode)
    np.testing.assert_allclose(enc_mean, mean, rtol=1e-6)
    np.testing.assert_allclose(z, losses.reparameterize(key, enc_mean, enc_logvar), rtol=1e-6)
    np.testing.assert_allclose(model.apply(variables, z, method=model.decode), logits, rtol=1e-5, atol=1e-6)


def test_every_public_method_and_loss_has_a_docstring():
    from vae_jax.models import vae as vae_module

    for cls in (vae_module.VAE, vae_module.MLPEncoder, vae_module.MLPDecoder):
        assert cls.__doc__ and "[B" in cls.__doc__, cls
    for method in (vae_module.VAE.__call__, vae_module.VAE.encode, vae_module.VAE.decode):
        assert method.__doc__ and "[B" in method.__doc__, method
    for name, function in inspect.getmembers(losses, inspect.isfunction):
        if not name.startswith("_") and function.__module__ == losses.__name__:
            assert function.__doc__, name
    assert "or means" not in vae_module.VAE.__doc__  # the decoder output is logits under both likelihoods


def _bce_numpy(logits, x):
    logits, x = np.asarray(logits, np.float64), np.asarray(x, np.float64)
    return np.maximum(logits, 0) - logits * x + np.log1p(np.exp(-np.abs(logits)))


def test_neg_elbo_is_the_per_example_sum_of_its_terms():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(5, 4, 3, 1)).astype(np.float32)
    x = rng.uniform(size=(5, 4, 3, 1)).astype(np.float32)
    mean, logvar = rng.normal(size=(5, 2)).astype(np.float32), rng.normal(size=(5, 2)).astype(np.float32)
    value = losses.neg_elbo(losses.bernoulli_nll(logits, x), losses.gaussian_kl(mean, logvar), beta=0.5)
    expected = _bce_numpy(logits, x).sum(axis=(1, 2, 3)) + 0.5 * 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(
        axis=1
    )
    np.testing.assert_allclose(value, expected, rtol=1e-5)


def test_images_without_a_channel_axis_raise_naming_the_argument():
    x = jnp.zeros((8, 28, 28))
    with pytest.raises(ValueError, match=r"bernoulli_nll: x has shape \(8, 28, 28\).*x\[\.\.\., None\]"):
        losses.bernoulli_nll(jnp.zeros((8, 28, 28)), x)
    with pytest.raises(ValueError, match=r"bernoulli_nll: logits has shape \(8, 28, 28, 1\) and x has shape"):
        losses.bernoulli_nll(jnp.zeros((8, 28, 28, 1)), x)
    with pytest.raises(ValueError, match="gaussian_nll: x has shape"):
        losses.gaussian_nll(x, x, 0.0)
    with pytest.raises(ValueError, match="squared_error: x has shape"):
        losses.squared_error(x, x)
    with pytest.raises(ValueError, match="bernoulli_nll: x has shape"):  # checked while tracing: under jit too
        jax.jit(losses.bernoulli_nll)(x, x)
    # With event_ndim=2 the same arrays are a fine batch of 8 gray images.
    np.testing.assert_allclose(losses.bernoulli_nll(x, x, event_ndim=2), np.full(8, 784 * np.log(2)), rtol=1e-6)


def test_neg_elbo_refuses_terms_of_different_shapes():
    kl = jnp.ones(8)
    with pytest.raises(ValueError, match=r"reconstruction_nll has shape \(\) and kl has shape \(8,\)"):
        losses.neg_elbo(jnp.float32(100.0), kl)
    with pytest.raises(ValueError, match="both must be"):
        losses.neg_elbo(jnp.ones(8), jnp.ones((8, 1)))
    with pytest.raises(ValueError, match="gaussian_kl: mean has shape"):
        losses.gaussian_kl(jnp.ones((8, 2)), jnp.ones((8, 3)))


def test_per_example_calls_and_broadcast_samples_still_work():
    """One example at a time under vmap, and x broadcast against k sampled logits, as the IWAE does."""
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(3, 5, 4, 4, 1)).astype(np.float32)  # [k, B, H, W, C]
    x = rng.uniform(size=(5, 4, 4, 1)).astype(np.float32)
    expected = _bce_numpy(logits, x[None]).sum(axis=(2, 3, 4))  # [k, B]
    np.testing.assert_allclose(losses.bernoulli_nll(logits, x), expected, rtol=1e-5)
    per_example = jax.vmap(losses.bernoulli_nll)(logits[0], x)  # each call sees one [H, W, C] image
    np.testing.assert_allclose(per_example, expected[0], rtol=1e-5)
