"""The conditional VAE: shapes, the label's path into the decoder (NumPy forward pass), label control,
log-weights against scipy densities, batch-size invariance, and the classifier that judges samples."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from vae_jax import classifier as classifier_lib
from vae_jax import data as data_lib
from vae_jax import objectives
from vae_jax.errors import ConfigError
from vae_jax.models.cvae import CVAE
from vae_jax.models.vae import init_params
from vae_jax.tasks import cvae

D, K = 3, 4


def _model(likelihood="bernoulli"):
    model = CVAE(latent_dim=D, hidden=(16,), image_shape=(6, 5, 1), num_classes=K, likelihood=likelihood)
    return model, init_params(model, jax.random.key(0))


def _batch(b=6, seed=1):
    rng = np.random.default_rng(seed)
    return {"x": jnp.asarray(rng.uniform(size=(b, 6, 5, 1)), jnp.float32), "y": jnp.asarray(np.arange(b) % K)}


def test_shapes():
    model, params = _model()
    batch = _batch()
    out, mean, logvar, z = model.apply({"params": params}, batch["x"], batch["y"], jax.random.key(2))
    chex.assert_shape(out, (6, 6, 5, 1))
    chex.assert_shape([mean, logvar, z], (6, D))
    terms = objectives.make_gaussian_vae_terms(model)(params, batch, jax.random.key(2))
    chex.assert_shape([terms["recon"], terms["kl"]], (6,))
    chex.assert_shape(terms["kl_per_dim"], (6, D))
    chex.assert_shape(objectives.make_gaussian_vae_log_weights(model)(params, batch, jax.random.key(2), 7), (6, 7))
    wide, wide_params = _model("gaussian_pixel_var")
    chex.assert_shape(wide.apply({"params": wide_params}, mean, batch["y"], method=wide.decode), (6, 6, 5, 2))


def test_decoder_reads_the_one_hot_label_as_a_numpy_forward_pass_says():
    model, params = _model()
    z = np.random.default_rng(3).normal(size=(K, D)).astype(np.float32)
    y = np.arange(K)
    out = np.asarray(model.apply({"params": params}, z, y, method=model.decode))
    # decoder: relu([z, onehot(y)] @ W0 + b0) @ W1 + b1, with the one-hot built by hand.
    dec = jax.tree_util.tree_map(np.asarray, params["decoder"])
    inputs = np.concatenate([z, np.eye(K, dtype=np.float32)[y]], axis=1)
    h = np.maximum(inputs @ dec["Dense_0"]["kernel"] + dec["Dense_0"]["bias"], 0.0)
    expected = (h @ dec["out"]["kernel"] + dec["out"]["bias"]).reshape(K, 6, 5, 1)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # Same z, different labels: different images; and swapping the labels of two samples swaps their images.
    same_z = np.repeat(z[:1], K, axis=0)
    images = cvae.decode_means(model, params, same_z, y)
    assert np.min([np.abs(images[i] - images[j]).max() for i in range(K) for j in range(i + 1, K)]) > 1e-4
    swapped = cvae.decode_means(model, params, z[:2], y[[1, 0]])
    straight = cvae.decode_means(model, params, z[:2][::-1], y[[0, 1]])
    np.testing.assert_allclose(swapped, straight[::-1], rtol=1e-6)


def test_encoder_reads_the_label():
    model, params = _model()
    x = _batch()["x"][:1]
    means = [model.apply({"params": params}, x, jnp.array([c]), method=model.encode)[0] for c in range(K)]
    assert min(float(jnp.abs(means[i] - means[j]).max()) for i in range(K) for j in range(i + 1, K)) > 1e-4


def test_log_weights_against_scipy_densities():
    model, params = _model()
    batch = _batch(b=3)
    k = 5
    key = jax.random.key(4)
    log_w = np.asarray(objectives.make_gaussian_vae_log_weights(model)(params, batch, key, k))
    mean, logvar = (
        np.asarray(a, np.float64) for a in model.apply({"params": params}, batch["x"], batch["y"], method=model.encode)
    )
    eps = np.asarray(jax.random.normal(key, (3, k, D)), np.float64)  # the draws the function makes
    std = np.exp(0.5 * logvar)
    z = mean[:, None] + std[:, None] * eps
    for b in range(3):
        logits = np.asarray(
            model.apply({"params": params}, z[b].astype(np.float32), np.full(k, batch["y"][b]), method=model.decode),
            np.float64,
        ).reshape(k, -1)
        x = np.asarray(batch["x"][b], np.float64).reshape(-1)
        p = 1.0 / (1.0 + np.exp(-logits))
        log_px = np.sum(x * np.log(p) + (1 - x) * np.log1p(-p), axis=1)  # cross-entropy with gray targets
        direct = log_px + stats.norm.logpdf(z[b]).sum(-1) - stats.norm.logpdf(z[b], mean[b], std[b]).sum(-1)
        np.testing.assert_allclose(log_w[b], direct, rtol=1e-4)


def test_iwae_bound_dominates_the_elbo_of_the_same_samples_and_tightens_with_k(mnist_small):
    model = CVAE(latent_dim=4, hidden=(32,), image_shape=mnist_small.image_shape, num_classes=10)
    params = init_params(model, jax.random.key(0))
    batch = {"x": jnp.asarray(mnist_small.x_test[:64]), "y": jnp.asarray(mnist_small.y_test[:64])}
    log_weights_fn = objectives.make_gaussian_vae_log_weights(model)
    log_w = log_weights_fn(params, batch, jax.random.key(5), 50)  # [B, 50]
    bound = jax.nn.logsumexp(log_w, axis=1) - np.log(50)
    assert np.all(np.asarray(bound) >= np.asarray(log_w.mean(axis=1)) - 1e-4)  # per example, same samples
    nll = {
        k: float(-(jax.nn.logsumexp(log_weights_fn(params, batch, jax.random.key(k), k), 1) - np.log(k)).mean())
        for k in (1, 10, 100)
    }
    assert nll[100] < nll[10] < nll[1]


def test_per_example_terms_do_not_depend_on_the_batch():
    model, params = _model()
    # Posterior std ~1e-13: z is the posterior mean whatever the key draws, so each example's terms
    # are deterministic and must not depend on which other examples share its batch.
    params = jax.tree_util.tree_map(lambda a: a, params)
    params["encoder"]["logvar"]["kernel"] = jnp.zeros_like(params["encoder"]["logvar"]["kernel"])
    params["encoder"]["logvar"]["bias"] = jnp.full_like(params["encoder"]["logvar"]["bias"], -60.0)
    config = cvae.CVAEConfig(latent_dim=D, hidden=(16,), num_classes=K)
    _, task = cvae.cvae_task(config, (6, 5, 1))
    batch = _batch(b=7)
    whole = task.eval_fn(params, batch, jax.random.key(0))
    for lo, hi in ((0, 3), (3, 7), (5, 6)):
        part = task.eval_fn(params, {k: v[lo:hi] for k, v in batch.items()}, jax.random.key(9))
        for name in ("neg_elbo", "recon", "kl"):
            np.testing.assert_allclose(part[name], whole[name][lo:hi], rtol=1e-5)
    loss_whole = task.loss_fn(params, batch, jax.random.key(0), 0)[0]
    np.testing.assert_allclose(loss_whole, np.mean(whole["neg_elbo"]), rtol=1e-5)


def test_config_errors_name_the_flag_and_data_without_labels_is_refused(mnist_small):
    with pytest.raises(ConfigError, match="--num-classes"):
        cvae.CVAEConfig(num_classes=-1).validate()
    unlabelled = data_lib.Dataset(mnist_small.x_train[:8], None, mnist_small.x_test[:8], None, source="no labels")
    with pytest.raises(ConfigError, match="--dataset .*no labels"):
        cvae.with_data_classes(cvae.CVAEConfig(), unlabelled)
    assert cvae.with_data_classes(cvae.CVAEConfig(), mnist_small).num_classes == 10
    with pytest.raises(ConfigError, match="--num-classes must be at least 10"):
        cvae.with_data_classes(cvae.CVAEConfig(num_classes=5), mnist_small)


def test_classifier_learns_digits_and_the_requested_class_fraction_counts_by_hand(mnist_small):
    judge = classifier_lib.train_classifier(
        mnist_small.x_train,
        mnist_small.y_train,
        mnist_small.x_test,
        mnist_small.y_test,
        10,
        jax.random.key(0),
        epochs=15,
        hidden=(64,),
    )
    predicted = judge.predict(mnist_small.x_test)
    np.testing.assert_allclose(judge.test_accuracy, np.mean(predicted == mnist_small.y_test))
    assert judge.test_accuracy > 0.7  # 512 training digits; chance is 0.1
    requested = (predicted + np.arange(len(predicted)) % 2) % 10  # half right by construction
    measured = classifier_lib.requested_class_fraction(judge, mnist_small.x_test, requested, 10)
    np.testing.assert_allclose(measured["overall"], np.mean(predicted == requested))
    c = int(requested[0])
    np.testing.assert_allclose(measured["per_class"][c], np.mean(predicted[requested == c] == c))
