"""Training: one compile, scan path = loop path, vmapped seeds = single runs, bit-exact resume, divergence."""

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import checkpoint, errors, faults, runner, tasks, train
from vae_jax.protocol import Task, TrainConfig


def small_config(workdir, **overrides):
    base = dict(
        latent_dim=8,
        hidden=(64,),
        batch_size=64,
        epochs=2,
        workdir=str(workdir),
        progress=False,
        checkpoint_every=1,
        eval_batch_size=64,
    )
    base.update(overrides)
    return tasks.VAEConfig(**base)


def _data(ds):
    return {"x": jnp.asarray(ds.x_train), "y": jnp.asarray(ds.y_train)}


def test_train_step_compiles_once_and_changes_params(mnist_small):
    config = small_config("unused")
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    optimizer = optax.adam(1e-3)
    # The loss is traced once per compilation of the step: a second trace would fail here.
    step = train.make_train_step(chex.assert_max_traces(task.loss_fn, n=1), optimizer)
    keys = train.run_keys(0)
    state = train.init_train_state(task.init_params(keys.init), optimizer)
    before = jax.tree_util.tree_map(np.asarray, state.params)  # the step donates (reuses) its input buffers
    data = _data(mnist_small)
    for i in range(3):
        batch = {k: v[i * 64 : (i + 1) * 64] for k, v in data.items()}
        state, metrics = step(state, batch, jax.random.fold_in(keys.sample, i))
    assert int(state.step) == 3
    chex.assert_shape(metrics["loss"], ())
    assert not np.allclose(before["encoder"]["mean"]["kernel"], state.params["encoder"]["mean"]["kernel"])


def test_scan_epoch_equals_python_loop(mnist_small):
    config = small_config("unused")
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    optimizer = optax.adam(1e-3)
    train_step = train.make_train_step(task.loss_fn, optimizer)
    keys = train.run_keys(3)
    state0 = train.init_train_state(task.init_params(keys.init), optimizer)
    data = _data(mnist_small)
    scan_state, scan_metrics = jax.jit(train.make_epoch_fn(train_step, 64))(
        state0, data, keys.data, keys.sample, jnp.int32(0)
    )
    loop_state, loop_metrics = train.loop_epoch(train_step, state0, data, keys.data, keys.sample, 0, 64)
    assert int(scan_state.step) == int(loop_state.step) == 512 // 64
    chex.assert_trees_all_close(scan_state.params, loop_state.params, rtol=1e-4, atol=1e-5)
    chex.assert_trees_all_close(scan_metrics, loop_metrics, rtol=1e-4)


def test_replica_k_of_a_vmapped_run_equals_a_single_run_with_seed_k(tmp_path, mnist_small):
    multi = runner.train(
        small_config(tmp_path / "multi", seeds="5,7"),
        tasks.vae_task(small_config("x"), mnist_small.image_shape)[1],
        mnist_small,
    )
    single = runner.train(
        small_config(tmp_path / "single", seed=7),
        tasks.vae_task(small_config("x"), mnist_small.image_shape)[1],
        mnist_small,
    )
    chex.assert_trees_all_close(multi.params(1), single.params(0), rtol=1e-4, atol=1e-5)
    assert not np.allclose(multi.params(0)["decoder"]["out"]["bias"], multi.params(1)["decoder"]["out"]["bias"])
    test = multi.summary["test"]["neg_elbo"]
    assert len(test["per_seed"]) == 2
    np.testing.assert_allclose(test["mean"], np.mean(test["per_seed"]))
    np.testing.assert_allclose(test["per_seed"][1], single.summary["test"]["neg_elbo"]["mean"], rtol=1e-4)


def test_resume_continues_the_run_bit_for_bit(tmp_path, mnist_small):
    _, task = tasks.vae_task(small_config("x"), mnist_small.image_shape)
    straight = runner.train(small_config(tmp_path / "straight", epochs=4, seeds="2"), task, mnist_small)
    half = runner.train(small_config(tmp_path / "resumed", epochs=2, seeds="2"), task, mnist_small)
    # restore_state reads the checkpoint into a traced (never compiled) template: the state the run ended with
    epoch, restored = runner.restore_state(small_config(tmp_path / "resumed", epochs=2, seeds="2"), task)
    assert epoch == 2
    for a, b in zip(jax.tree_util.tree_leaves(half.state), jax.tree_util.tree_leaves(restored), strict=True):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    resumed = runner.train(small_config(tmp_path / "resumed", epochs=4, seeds="2"), task, mnist_small)
    assert resumed.summary["resumed_from_epoch"] == 2
    for a, b in zip(jax.tree_util.tree_leaves(straight.state), jax.tree_util.tree_leaves(resumed.state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert [line["epoch"] for line in resumed.history] == [1, 2, 3, 4]
    assert [line["train_loss"] for line in resumed.history] == [line["train_loss"] for line in straight.history]


def test_resuming_with_other_model_settings_is_refused(tmp_path, mnist_small):
    _, task = tasks.vae_task(small_config("x"), mnist_small.image_shape)
    runner.train(small_config(tmp_path, epochs=1), task, mnist_small)
    _, other_task = tasks.vae_task(small_config("x", latent_dim=4), mnist_small.image_shape)
    with pytest.raises(
        errors.ConfigError, match="other settings \\(--latent-dim 8 there, 4 here\\); use another --workdir"
    ):
        runner.train(small_config(tmp_path, epochs=2, latent_dim=4), other_task, mnist_small)


def test_training_lowers_the_test_loss(tmp_path, mnist_small):
    _, task = tasks.vae_task(small_config("x"), mnist_small.image_shape)
    result = runner.train(small_config(tmp_path, epochs=6), task, mnist_small)
    first, last = result.history[0]["test_neg_elbo"], result.history[-1]["test_neg_elbo"]
    assert last < first - 30, (first, last)


def test_divergence_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
    # loss = log(w) is driven down by Adam until w <= 0, where the loss is no longer finite.
    task = Task(
        init_params=lambda key: {"w": jnp.ones(())},
        loss_fn=lambda params, batch, key, step: (jnp.log(params["w"]), {"loss": jnp.log(params["w"])}),
        eval_fn=lambda params, batch, key: {"w": jnp.broadcast_to(params["w"], batch["x"].shape[:1])},
        headline="w",
    )
    ds = runner.data_lib.Dataset(
        np.zeros((8, 2, 2, 1), np.float32), None, np.zeros((2, 2, 2, 1), np.float32), None, "zeros"
    )
    config = TrainConfig(
        batch_size=8,
        epochs=10,
        learning_rate=0.4,
        workdir=str(tmp_path),
        progress=False,
        checkpoint_every=1,
        max_consecutive_skips=0,
    )  # no step-level guard: the epoch-level stop
    with pytest.raises(
        errors.TrainingDiverged, match="non-finite training loss in epoch 4 .*the checkpoint of epoch 3 .* is kept"
    ):
        runner.train(config, task, ds)
    epoch, state = checkpoint.restore_latest(
        checkpoint.make_manager(str(tmp_path)),
        train.init_replicated_state(task.init_params, optax.adam(0.4), jax.vmap(train.run_keys)(jnp.array([0])).init),
    )
    assert epoch == 3 and np.all(np.isfinite(np.asarray(state.params["w"])))


def test_config_errors_name_the_flag():
    with pytest.raises(errors.ConfigError, match="--seeds must be a count N or a list like 0,3,7, got 'a,b'"):
        dataclasses.replace(TrainConfig(), seeds="a,b").validate()
    with pytest.raises(errors.ConfigError, match="--batch-size must be a positive integer, got 0"):
        TrainConfig(batch_size=0).validate()
    assert TrainConfig(seed=3, seeds="3").seed_list() == [3, 4, 5]
    assert TrainConfig(seeds="0,3,7").seed_list() == [0, 3, 7]


def _counting_task():
    """A task whose update_fn keeps, in model_state, the sum of the batch means it has seen (and the step)."""

    def loss_fn(params, batch, key, step):
        loss = jnp.mean(jnp.square(params["w"] - batch["x"]))
        return loss, ({"loss": loss}, {"batch_mean": jnp.mean(batch["x"]), "step": step})

    def update_fn(params, model_state, aux, step, key):
        del key
        new_state = {"total": model_state["total"] + aux["batch_mean"], "last_step": step}
        return params, new_state, {"seen": new_state["total"]}

    return Task(
        init_params=lambda key: {"w": jnp.zeros(())},
        loss_fn=loss_fn,
        eval_fn=lambda params, batch, key: {"w": jnp.broadcast_to(params["w"], batch["x"].shape[:1])},
        headline="w",
        update_fn=update_fn,
        init_model_state=lambda params: {"total": jnp.zeros(()), "last_step": jnp.zeros((), jnp.int32)},
    )


def test_update_fn_keeps_model_state_across_steps_and_checkpoints(tmp_path):
    task = _counting_task()
    x = np.arange(16, dtype=np.float32).reshape(16, 1, 1, 1)
    ds = runner.data_lib.Dataset(x, None, x[:4], None, "arange")
    config = TrainConfig(batch_size=4, epochs=2, workdir=str(tmp_path), progress=False, checkpoint_every=1)
    result = runner.train(config, task, ds)
    # Every epoch visits all 16 examples once, so two epochs add 2 * sum(x) / 4 over the 8 steps' batch means.
    np.testing.assert_allclose(np.asarray(result.state.model_state["total"])[0], 2 * x.sum() / 4, rtol=1e-6)
    assert int(np.asarray(result.state.model_state["last_step"])[0]) == 7
    assert result.history[-1]["train_seen"] > 0
    resumed = runner.train(dataclasses.replace(config, epochs=3), task, ds)
    np.testing.assert_allclose(np.asarray(resumed.state.model_state["total"])[0], 3 * x.sum() / 4, rtol=1e-6)
    assert int(np.asarray(resumed.state.model_state["last_step"])[0]) == 11


def _linear_task():
    """loss = mean over the batch of <w, x>: its gradient is the batch mean of x (NaN if x holds a NaN)."""

    def loss_fn(params, batch, key, step):
        loss = jnp.mean(batch["x"].reshape(batch["x"].shape[0], -1) @ params["w"])
        return loss, {"loss": loss}

    return loss_fn, {"w": np.asarray([0.5, -1.0, 2.0], np.float32)}  # NumPy: the step donates its input


def _numpy_adam(grads: list[np.ndarray], w: np.ndarray, lr: float, b1=0.9, b2=0.999, eps=1e-8):
    """Adam (Kingma & Ba 2015, Algorithm 1) in float64: ``(w, mu, nu)`` after the ``grads`` in turn."""
    mu, nu = np.zeros_like(w), np.zeros_like(w)
    for t, g in enumerate(grads, start=1):
        mu, nu = b1 * mu + (1 - b1) * g, b2 * nu + (1 - b2) * g * g
        w = w - lr * (mu / (1 - b1**t)) / (np.sqrt(nu / (1 - b2**t)) + eps)
    return w, mu, nu


@pytest.mark.parametrize("max_consecutive_skips", [0, 5])
def test_the_skipping_optimizer_equals_plain_adam_on_finite_steps(max_consecutive_skips):
    # Bit for bit on this model. On the 784-400-20 VAE (CPU) with max_consecutive_skips > 0 some params differ
    # by one float32 ulp from plain Adam's: XLA compiles Adam's update inside skip_non_finite's lax.cond
    # differently from outside one (with max_consecutive_skips = 0, no lax.cond, the VAE's equal plain Adam's).
    loss_fn, params = _linear_task()
    optimizer = optax.adam(0.1)
    step = train.make_train_step(loss_fn, optimizer, max_consecutive_skips=max_consecutive_skips)
    state = train.init_train_state(jax.tree_util.tree_map(jnp.asarray, params), optimizer)
    plain_params, plain_state = params, optimizer.init(params)

    @jax.jit
    def plain_step(params, opt_state, batch):  # the textbook Optax step, no wrapper
        grads = jax.grad(lambda p: loss_fn(p, batch, None, 0)[0])(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    batches = np.random.default_rng(0).normal(size=(4, 2, 3)).astype(np.float32)
    for i, x in enumerate(batches):
        state, metrics = step(state, {"x": jnp.asarray(x)}, jax.random.key(i))
        plain_params, plain_state = plain_step(plain_params, plain_state, {"x": jnp.asarray(x)})
        assert float(metrics["skipped"]) == 0.0
    np.testing.assert_array_equal(state.params["w"], plain_params["w"])
    for got, want in zip(
        jax.tree_util.tree_leaves(state.opt_state.inner_state), jax.tree_util.tree_leaves(plain_state), strict=True
    ):
        np.testing.assert_array_equal(got, want)
    assert int(state.opt_state.total_notfinite) == 0 and bool(state.opt_state.last_finite)


def test_a_nan_gradient_step_is_skipped_and_counted():
    loss_fn, params = _linear_task()
    step = train.make_train_step(loss_fn, optax.adam(0.1), max_consecutive_skips=5)
    state = train.init_train_state(jax.tree_util.tree_map(jnp.asarray, params), optax.adam(0.1))
    batches = np.random.default_rng(1).normal(size=(4, 2, 3)).astype(np.float32)
    batches[2, 1, 0] = np.nan  # the third step's gradient: NaN in its first element
    seen = []
    for i, x in enumerate(batches):
        before = jax.tree_util.tree_map(np.array, (state.params, state.opt_state.inner_state))
        state, metrics = step(state, {"x": jnp.asarray(x)}, jax.random.key(i))
        seen.append(
            (float(metrics["skipped"]), int(state.opt_state.notfinite_count), int(state.opt_state.total_notfinite))
        )
        if i == 2:  # nothing moved: params, Adam's count and moments as they were
            after = jax.tree_util.tree_map(np.array, (state.params, state.opt_state.inner_state))
            for got, want in zip(jax.tree_util.tree_leaves(after), jax.tree_util.tree_leaves(before), strict=True):
                np.testing.assert_array_equal(got, want)
    assert seen == [(0.0, 0, 0), (0.0, 0, 0), (1.0, 1, 1), (0.0, 0, 1)]
    assert int(state.step) == 4 and int(state.opt_state.inner_state[0].count) == 3
    # Adam of the three finite batch-mean gradients, the NaN one left out.
    applied = [batches[i].astype(np.float64).mean(axis=0) for i in (0, 1, 3)]
    w, mu, nu = _numpy_adam(applied, params["w"].astype(np.float64), 0.1)
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-5)
    np.testing.assert_allclose(state.opt_state.inner_state[0].mu["w"], mu, rtol=1e-5)
    np.testing.assert_allclose(state.opt_state.inner_state[0].nu["w"], nu, rtol=1e-5)


@pytest.mark.parametrize("max_consecutive_skips", [0, 3])
def test_skip_non_finite_matches_optax_apply_if_finite(max_consecutive_skips):
    """Params, counters and Adam's state equal optax.apply_if_finite's on the same gradients, a step passed as
    ``usable=False`` counting as one whose gradients are NaN."""
    mine = train.skip_non_finite(optax.adam(0.1), max_consecutive_skips)
    limit = np.iinfo(np.int32).max if max_consecutive_skips else 0  # 0: optax applies every update
    reference = optax.apply_if_finite(optax.adam(0.1), max_consecutive_errors=limit)
    nan, inf = np.float32(np.nan), np.float32(np.inf)
    rows = [[0.5, -1.0], [nan, 1.0], [inf, 2.0], [0.3, 0.2], "unusable", [-inf, 0.0], [1.0, 1.0], [0.1, -0.4]]
    if not max_consecutive_skips:  # make_train_step passes ``usable`` only to skip, so it counts 3 as non-finite
        rows[4] = [nan, nan]
    params = {"w": jnp.asarray([1.0, -2.0]), "b": jnp.asarray(0.5)}
    got, want = (params, mine.init(params)), (params, reference.init(params))
    assert jax.tree_util.tree_structure(got[1]) == jax.tree_util.tree_structure(want[1])
    mine_update = jax.jit(lambda g, s, p, ok: mine.update(g, s, p, usable=ok))
    for row in rows:
        usable = not isinstance(row, str)
        w = np.asarray(row if usable else [0.5, 0.5], np.float32)
        grads = {"w": jnp.asarray(w), "b": jnp.asarray(w[0] * w[1])}
        updates, state = mine_update(grads, got[1], got[0], usable)
        got = (optax.apply_updates(got[0], updates), state)
        ref_grads = grads if usable else jax.tree_util.tree_map(lambda g: jnp.full_like(g, jnp.nan), grads)
        updates, state = jax.jit(reference.update)(ref_grads, want[1], want[0])
        want = (optax.apply_updates(want[0], updates), state)
        for a, b in zip(jax.tree_util.tree_leaves(got), jax.tree_util.tree_leaves(want), strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    assert int(got[1].total_notfinite) == 4 and int(got[1].notfinite_count) == 0
    if max_consecutive_skips:  # Adam counted only the four finite steps
        assert int(got[1].inner_state[0].count) == 4 and np.all(np.isfinite(np.asarray(got[0]["w"])))


def test_a_seed_at_the_skip_limit_is_frozen_and_the_stop_names_its_steps():
    loss_fn, params = _linear_task()
    step = train.make_train_step(loss_fn, optax.adam(0.1), max_consecutive_skips=2)
    state = train.init_train_state(jax.tree_util.tree_map(jnp.asarray, params), optax.adam(0.1))
    finite = jnp.ones((2, 3))
    state, _ = step(state, {"x": finite}, jax.random.key(0))  # step 1: applied
    frozen = np.array(state.params["w"])
    skipped = []
    for i, x in enumerate([jnp.full((2, 3), jnp.nan), jnp.full((2, 3), jnp.nan), finite, finite]):
        state, metrics = step(state, {"x": x}, jax.random.key(i + 1))
        skipped.append(float(metrics["skipped"]))
    # Steps 2 and 3 were NaN; from the limit on even finite steps are skipped, so the run of skips is unbroken.
    assert skipped == [1.0, 1.0, 1.0, 1.0] and int(state.opt_state.notfinite_count) == 4
    np.testing.assert_array_equal(state.params["w"], frozen)
    replicated = jax.tree_util.tree_map(lambda a: np.asarray(a)[None], state)
    message = faults.skip_limit_message(replicated, 2, [7], 3)
    assert message.startswith("2 optimizer steps in a row had a non-finite loss or gradient and were skipped")
    assert "(steps 2-3, seed 7, epoch 3; --max-consecutive-skips 2); the run stopped at step 3" in message
    assert faults.skip_limit_message(replicated, 0, [7], 3) is None


def test_a_skipped_step_leaves_the_model_state_of_update_fn_alone():
    task = _counting_task()
    step = train.make_train_step(task.loss_fn, optax.adam(0.1), task.update_fn, max_consecutive_skips=3)
    params = task.init_params(None)
    state = train.init_train_state(params, optax.adam(0.1), task.init_model_state(params))
    finite = np.arange(4, dtype=np.float32).reshape(4, 1, 1, 1)
    state, _ = step(state, {"x": jnp.asarray(finite)}, jax.random.key(0))
    state, metrics = step(state, {"x": jnp.full((4, 1, 1, 1), jnp.nan)}, jax.random.key(1))
    # update_fn ran for the first batch only: its mean is the whole total, and step 0 the last it saw.
    assert float(metrics["skipped"]) == 1.0 and float(metrics["seen"]) == 0.0
    assert float(state.model_state["total"]) == float(finite.mean()) and int(state.model_state["last_step"]) == 0


def test_replica_keys_stack_each_seeds_run_keys():
    stacked = train.replica_keys([0, 7, 3])
    for r, seed in enumerate([0, 7, 3]):
        alone = train.run_keys(seed)  # eager, one seed
        for a, b in zip(stacked, alone, strict=True):
            np.testing.assert_array_equal(jax.random.key_data(a[r]), jax.random.key_data(b))
