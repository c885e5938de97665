"""Streaming from host memory or disk (Grain) draws the same batches and keys as the device-resident epoch."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import parallel, runner, streaming, tasks, train

BATCH = 64


@pytest.fixture(scope="module")
def setup(mnist_small):
    config = tasks.VAEConfig(latent_dim=4, hidden=(32,), batch_size=BATCH)
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    optimizer = optax.adam(1e-3)
    return task, optimizer, train.make_train_step(task.loss_fn, optimizer)


def test_grain_batches_are_the_rows_of_the_epoch_permutation_read_from_a_memory_map(tmp_path, mnist_small):
    path = tmp_path / "x.npy"
    np.save(path, mnist_small.x_train)
    x = np.load(path, mmap_mode="r")
    keys = jax.vmap(train.run_keys)(jnp.asarray([0, 1]))
    order = streaming.epoch_batch_indices(keys.data, 3, len(x), BATCH)  # [num_batches, R, B]
    expected = np.stack([np.asarray(train.epoch_batches(k, jnp.asarray(3), len(x), BATCH)) for k in keys.data], axis=1)
    np.testing.assert_array_equal(order, expected)
    batches = list(streaming.batch_dataset({"x": x}, order))
    assert len(batches) == len(x) // BATCH
    for idx, batch in zip(order, batches, strict=True):
        assert isinstance(batch["x"], jax.Array) and batch["x"].shape == (2, BATCH, 28, 28, 1)
        np.testing.assert_array_equal(np.asarray(batch["x"]), mnist_small.x_train[idx])


@pytest.mark.parametrize("seeds", [[3], [3, 5]])
def test_streamed_epochs_train_what_the_resident_epochs_train(setup, mnist_small, seeds):
    task, optimizer, step = setup
    plan = parallel.Plan(len(seeds))
    resident = parallel.make_epoch_program(step, BATCH, plan)
    streamed = streaming.make_stream_epoch(step, BATCH, plan, {"x": mnist_small.x_train})
    keys = jax.vmap(train.run_keys)(jnp.asarray(seeds))
    out = {}
    for name, fn, data in (
        ("resident", resident, {"x": jnp.asarray(mnist_small.x_train)}),
        ("streamed", streamed, None),
    ):
        state = train.init_replicated_state(task.init_params, optimizer, keys.init)
        for epoch in range(2):
            state, metrics = fn(state, data, keys.data, keys.sample, jnp.int32(epoch))
        out[name] = jax.device_get((state, metrics))
    assert int(out["streamed"][0].step[0]) == 2 * (len(mnist_small.x_train) // BATCH)
    for a, b in zip(
        jax.tree_util.tree_leaves(out["resident"]), jax.tree_util.tree_leaves(out["streamed"]), strict=True
    ):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_runner_streams_on_request_and_when_the_device_is_too_small(tmp_path, mnist_small):
    config = tasks.VAEConfig(
        latent_dim=4,
        hidden=(16,),
        batch_size=BATCH,
        epochs=1,
        workdir=str(tmp_path),
        progress=False,
        eval_batch_size=64,
        stream=True,
        tensorboard=False,
    )
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    result = runner.train(config, task, mnist_small)
    assert result.summary["streamed"] and np.isfinite(result.history[0]["train_loss"])

    class SmallDevice:
        def memory_stats(self):
            return {"bytes_limit": 1000}

    assert streaming.should_stream(False, 600, SmallDevice())
    assert not streaming.should_stream(False, 400, SmallDevice())
    assert streaming.should_stream(True, 1, SmallDevice())


def test_streamed_epoch_metrics_equal_the_resident_ones_with_a_skipped_step(setup, mnist_small):
    """A step with a NaN loss is skipped: every path leaves it out of the epoch's means and counts it."""
    task, optimizer, _ = setup

    def loss_fn(params, batch, key, step):  # the third step (step 2) of the run has a NaN loss
        loss, metrics = task.loss_fn(params, batch, key, step)
        return jnp.where(step == 2, jnp.nan, loss), metrics

    step = train.make_train_step(loss_fn, optimizer, max_consecutive_skips=5)
    plan = parallel.Plan(1)
    keys = jax.vmap(train.run_keys)(jnp.asarray([3]))
    data = {"x": jnp.asarray(mnist_small.x_train)}
    out = {}
    for name, fn in (
        ("scan", parallel.make_epoch_program(step, BATCH, plan, "scan")),
        ("steps", parallel.make_epoch_program(step, BATCH, plan, "steps")),
        ("streamed", streaming.make_stream_epoch(step, BATCH, plan, {"x": mnist_small.x_train})),
    ):
        state = train.init_replicated_state(task.init_params, optimizer, keys.init)
        state, metrics = fn(state, data, keys.data, keys.sample, jnp.int32(0))
        out[name] = jax.device_get(metrics)
    # Independently: the mean of the applied steps' losses, from a plain loop over the same step.
    state = train.init_train_state(task.init_params(train.run_keys(3).init), optimizer)
    order = train.epoch_batches(train.run_keys(3).data, jnp.asarray(0), len(mnist_small.x_train), BATCH)
    losses = []
    for idx in order:
        state, metrics = step(state, {"x": data["x"][idx]}, jax.random.fold_in(train.run_keys(3).sample, state.step))
        losses.append(float(metrics["loss"]))
    assert np.isnan(losses[2]) and np.all(np.isfinite(np.delete(losses, 2)))
    assert "skipped" not in out["streamed"] and "skipped_steps" in out["streamed"]
    np.testing.assert_array_equal(out["streamed"]["skipped_steps"], [1.0])
    np.testing.assert_allclose(out["streamed"]["loss"], [np.mean(np.delete(losses, 2))], rtol=1e-5)
    chex.assert_trees_all_close(out["streamed"], out["scan"], rtol=1e-5)
    chex.assert_trees_all_close(out["streamed"], out["steps"], rtol=1e-5)
