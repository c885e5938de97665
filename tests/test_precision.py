"""Mixed precision: bf16 compute with float32 params, optimizer state and loss, close to a float32 run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import precision, tasks, train
from vae_jax.tasks import conv_vae, cvae, hvae


def _setup(mnist_small, precision_name):
    config = tasks.VAEConfig(latent_dim=8, hidden=(64,), batch_size=64, precision=precision_name)
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    return task


def test_bf16_training_tracks_float32_training(mnist_small):
    data = {"x": jnp.asarray(mnist_small.x_train)}
    results = {}
    for name in ("f32", "bf16"):
        task = _setup(mnist_small, name)
        optimizer = optax.adam(1e-3)
        keys = train.run_keys(0)
        state = train.init_train_state(task.init_params(keys.init), optimizer)
        epoch = jax.jit(train.make_epoch_fn(train.make_train_step(task.loss_fn, optimizer), 64))
        losses = []
        for e in range(3):
            state, metrics = epoch(state, data, keys.data, keys.sample, jnp.int32(e))
            losses.append(float(metrics["loss"]))
        results[name] = (state, losses)
        assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(state.params))
        # float32 moments, int32 counts and the bool flag of optax.apply_if_finite: no bfloat16
        assert all(
            leaf.dtype in (jnp.float32, jnp.int32, jnp.bool_) for leaf in jax.tree_util.tree_leaves(state.opt_state)
        )
    f32_losses, bf16_losses = results["f32"][1], results["bf16"][1]
    # bfloat16 has an 8-bit mantissa (relative rounding 2^-9 ~ 0.2%); over 24 steps the epoch losses
    # (hundreds of nats) stay within 1% of float32's, and both runs learn.
    np.testing.assert_allclose(bf16_losses, f32_losses, rtol=0.01)
    assert bf16_losses[-1] < bf16_losses[0] - 20


def test_f32_leaves_the_model_alone():
    marker = object()
    assert precision.compute_in(marker, "f32") is marker


def _assert_close_loss_and_every_gradient(f32_loss_fn, bf16_loss_fn, params, batch, key, step):
    """The bf16 loss within 1% of float32's, and every parameter's gradient float32 and within 20%."""
    (loss16, aux16), grads16 = jax.jit(jax.value_and_grad(bf16_loss_fn, has_aux=True))(params, batch, key, step)
    (loss32, _), grads32 = jax.jit(jax.value_and_grad(f32_loss_fn, has_aux=True))(params, batch, key, step)
    metrics16 = aux16[0] if isinstance(aux16, tuple) else aux16  # (metrics, aux) when the task has an update_fn
    assert loss16.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in metrics16.values())
    np.testing.assert_allclose(float(loss16), float(loss32), rtol=0.01)  # bf16 rounds to ~0.4% relative
    # Every parameter's gradient, not just their concatenation: a bias or a shared variance whose gradient
    # were summed in bfloat16 over B x H x W terms would stall at a few percent of its float32 value while
    # the big kernels kept the overall cosine near 1 (measured: 97-99% off; the VQ-VAE's biases 20-38%).
    # With float32 sums, measured at most 11% per leaf (the HVAE's encoder, the conv VAE's first
    # convolution: behind every rounded layer), 5% for the VQ-VAE.
    for (path, g32), g16 in zip(
        jax.tree_util.tree_leaves_with_path(grads32), jax.tree_util.tree_leaves(grads16), strict=True
    ):
        assert g16.dtype == jnp.float32
        if not np.any(g32):  # a parameter the loss does not reach (the PixelCNN's last vertical stack)
            np.testing.assert_array_equal(g16, 0.0)
            continue
        error = np.linalg.norm(np.asarray(g16) - np.asarray(g32)) / np.linalg.norm(np.asarray(g32))
        assert error < 0.2, (jax.tree_util.keystr(path), error)


FAMILY_TASKS = {
    "vae": lambda p, shape: tasks.vae_task(tasks.VAEConfig(latent_dim=8, hidden=(64,), precision=p), shape)[1],
    # one learned variance broadcast over every pixel: its gradient sums B x H x W terms
    "vae-shared-variance": lambda p, shape: tasks.vae_task(
        tasks.VAEConfig(latent_dim=8, hidden=(64,), likelihood="gaussian_shared_var", precision=p), shape
    )[1],
    "cvae": lambda p, shape: cvae.cvae_task(
        cvae.CVAEConfig(latent_dim=4, hidden=(32,), num_classes=10, precision=p), shape
    )[1],
    "hvae": lambda p, shape: hvae.hvae_task(
        hvae.HVAEConfig(latent_dim=4, top_latent_dim=2, hidden=(32,), top_hidden=(16,), precision=p), shape
    )[1],
    # convolution biases, each added at every position of B x H x W
    "conv_vae": lambda p, shape: conv_vae.conv_vae_task(
        conv_vae.ConvVAEConfig(latent_dim=4, channels=(8, 16), hidden=0, precision=p), shape
    )[1],
}


@pytest.mark.parametrize("family", sorted(FAMILY_TASKS))
def test_every_vae_family_computes_in_bf16_and_matches_its_float32_loss_and_gradients(mnist_small, family):
    f32, bf16 = (FAMILY_TASKS[family](p, mnist_small.image_shape) for p in ("f32", "bf16"))
    params = f32.init_params(jax.random.key(0))
    batch = {"x": jnp.asarray(mnist_small.x_train[:64]), "y": jnp.asarray(mnist_small.y_train[:64])}
    key, step = jax.random.key(1), jnp.int32(0)
    jaxpr = jax.make_jaxpr(lambda p: bf16.loss_fn(p, batch, key, step))(params)
    heavy = [e for e in jaxpr.eqns if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert heavy and all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)
    _assert_close_loss_and_every_gradient(f32.loss_fn, bf16.loss_fn, params, batch, key, step)
    # Evaluation stays float32: the same eval values from both tasks.
    np.testing.assert_array_equal(
        np.asarray(jax.jit(bf16.eval_fn)(params, batch, key)["neg_elbo"]),
        np.asarray(jax.jit(f32.eval_fn)(params, batch, key)["neg_elbo"]),
    )


def test_vqvae_computes_its_network_in_bf16_and_searches_the_codebook_in_float32(mnist_small):
    from vae_jax.tasks import vqvae

    def task(p):  # the codebook learned by gradient, so every parameter has one to compare
        config = vqvae.VQVAEConfig(codebook_size=16, code_dim=8, channels=(8, 16), codebook="grad", precision=p)
        return vqvae.vqvae_task(config, mnist_small.image_shape)

    (model, f32), (_, bf16) = task("f32"), task("bf16")
    params = f32.init_params(jax.random.key(0))
    batch = {"x": jnp.asarray(mnist_small.x_train[:64])}
    key, step = jax.random.key(1), jnp.int32(0)
    jaxpr = jax.make_jaxpr(lambda p: bf16.loss_fn(p, batch, key, step))(params)
    convs = [e for e in jaxpr.eqns if e.primitive.name == "conv_general_dilated"]
    dots = [e for e in jaxpr.eqns if e.primitive.name == "dot_general"]  # the distances to the codes
    assert convs and all(v.aval.dtype == jnp.bfloat16 for e in convs for v in e.invars)
    assert dots and all(v.aval.dtype == jnp.float32 for e in dots for v in e.invars)
    # The codes chosen from bf16 encoder outputs: the float32 nearest codes of those outputs (NumPy search).
    z_e = np.asarray(
        precision.compute_in(model, "bf16").apply({"params": params}, batch["x"], method=model.encode), np.float64
    ).reshape(-1, 8)
    codebook = np.asarray(params["codebook"], np.float64)
    nearest = np.argmin(((z_e[:, None, :] - codebook[None]) ** 2).sum(-1), axis=1)
    _, (_, aux) = jax.jit(bf16.loss_fn)(params, batch, key, step)
    np.testing.assert_array_equal(np.asarray(aux["indices"]).reshape(-1), nearest)
    _assert_close_loss_and_every_gradient(f32.loss_fn, bf16.loss_fn, params, batch, key, step)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(bf16.eval_fn)(params, batch, key)["loss"]),
        np.asarray(jax.jit(f32.eval_fn)(params, batch, key)["loss"]),
    )


AE_VARIANTS = {  # every way up of the conv decoder, and the variants whose loss adds more than a reconstruction
    "mlp": dict(arch="mlp", hidden=(64, 32)),
    "conv-transpose": dict(arch="conv", channels=(8, 16), upsampling="transpose"),
    "conv-upsample": dict(arch="conv", channels=(8, 16), upsampling="upsample"),
    "conv-unpool": dict(arch="conv", channels=(8, 16), upsampling="unpool"),
    "denoising": dict(arch="mlp", hidden=(64,), variant="denoising"),
    "masked": dict(arch="mlp", hidden=(64,), variant="masked"),
    "contractive": dict(arch="mlp", hidden=(64,), variant="contractive", contractive_weight=1.0),
}


@pytest.mark.parametrize("name", sorted(AE_VARIANTS))
def test_autoencoders_compute_in_bf16_and_match_their_float32_loss_and_gradients(mnist_small, name):
    def task(p):
        return tasks.ae_task(tasks.AEConfig(latent_dim=8, precision=p, **AE_VARIANTS[name]), mnist_small.image_shape)[1]

    f32, bf16 = task("f32"), task("bf16")
    params = f32.init_params(jax.random.key(0))
    batch = {"x": jnp.asarray(mnist_small.x_train[:64])}
    key, step = jax.random.key(1), jnp.int32(0)
    jaxpr = jax.make_jaxpr(lambda p: bf16.loss_fn(p, batch, key, step))(params)
    heavy = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name in ("dot_general", "conv_general_dilated")]
    assert heavy and all(v.aval.dtype == jnp.bfloat16 for e in heavy for v in e.invars)
    _assert_close_loss_and_every_gradient(f32.loss_fn, bf16.loss_fn, params, batch, key, step)
    headline = tasks.AE_HEADLINE[AE_VARIANTS[name].get("variant", "plain")]
    np.testing.assert_array_equal(
        np.asarray(jax.jit(bf16.eval_fn)(params, batch, key)[headline]),
        np.asarray(jax.jit(f32.eval_fn)(params, batch, key)[headline]),
    )


def _all_eqns(jaxpr):
    """The equations of ``jaxpr`` and of every jaxpr nested in them (jvp, custom_vjp, pjit, scan bodies)."""
    for eqn in jaxpr.eqns:
        yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                inner = getattr(sub, "jaxpr", sub)
                if hasattr(inner, "eqns"):
                    yield from _all_eqns(inner)


@pytest.mark.parametrize("conditional", [False, True])
def test_pixelcnn_prior_computes_in_bf16_and_matches_its_float32_loss_and_gradients(conditional):
    from vae_jax.tasks import prior

    def task(p):
        config = prior.PriorConfig(channels=16, layers=2, conditional=conditional, precision=p)
        return prior.prior_task(config, (7, 7), num_codes=16, num_classes=10 if conditional else None)[1]

    f32, bf16 = task("f32"), task("bf16")
    params = f32.init_params(jax.random.key(0))
    codes = jax.random.randint(jax.random.key(1), (64, 7, 7, 1), 0, 16)  # 64 x 49 lookups of 16 embedding rows
    batch = {"x": codes, "y": jax.random.randint(jax.random.key(2), (64,), 0, 10)}
    key, step = jax.random.key(3), jnp.int32(0)
    jaxpr = jax.make_jaxpr(lambda p: bf16.loss_fn(p, batch, key, step))(params)
    dots = [e for e in _all_eqns(jaxpr.jaxpr) if e.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    _assert_close_loss_and_every_gradient(f32.loss_fn, bf16.loss_fn, params, batch, key, step)
    np.testing.assert_array_equal(
        np.asarray(jax.jit(bf16.eval_fn)(params, batch, key)["nll"]),
        np.asarray(jax.jit(f32.eval_fn)(params, batch, key)["nll"]),
    )
