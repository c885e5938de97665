"""Mixed precision: bf16 compute with float32 params, optimizer state and loss, close to a float32 run."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vae_jax import precision, tasks, train


def _setup(mnist_small, precision_name):
    config = tasks.VAEConfig(latent_dim=8, hidden=(64,), batch_size=64, precision=precision_name)
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    return task


def test_bf16_loss_runs_its_matrix_multiplies_in_bfloat16_and_returns_float32(mnist_small):
    task = _setup(mnist_small, "bf16")
    params = task.init_params(jax.random.key(0))
    batch = {"x": jnp.asarray(mnist_small.x_train[:64])}
    jaxpr = jax.make_jaxpr(lambda p: task.loss_fn(p, batch, jax.random.key(1), jnp.int32(0)))(params)
    dots = [eqn for eqn in jaxpr.eqns if eqn.primitive.name == "dot_general"]
    assert dots and all(v.aval.dtype == jnp.bfloat16 for e in dots for v in e.invars)
    loss, metrics = task.loss_fn(params, batch, jax.random.key(1), jnp.int32(0))
    assert loss.dtype == jnp.float32 and all(v.dtype == jnp.float32 for v in metrics.values())
    grads = jax.grad(lambda p: task.loss_fn(p, batch, jax.random.key(1), jnp.int32(0))[0])(params)
    assert all(g.dtype == jnp.float32 for g in jax.tree_util.tree_leaves(grads))


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
        assert all(leaf.dtype in (jnp.float32, jnp.int32) for leaf in jax.tree_util.tree_leaves(state.opt_state))
    f32_losses, bf16_losses = results["f32"][1], results["bf16"][1]
    # bfloat16 has an 8-bit mantissa (relative rounding 2^-9 ~ 0.2%); over 24 steps the epoch losses
    # (hundreds of nats) stay within 1% of float32's, and both runs learn.
    np.testing.assert_allclose(bf16_losses, f32_losses, rtol=0.01)
    assert bf16_losses[-1] < bf16_losses[0] - 20


def test_f32_leaves_the_model_alone():
    marker = object()
    assert precision.compute_in(marker, "f32") is marker
