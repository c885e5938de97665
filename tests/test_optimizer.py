"""The optimizer from the config (--lr-schedule, --warmup-steps, --decay-steps, --grad-clip, --weight-decay),
each option against a NumPy computation written from its definition, and the defaults against optax.adam."""

import dataclasses
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import runner, tasks, train
from vae_jax import workdir as workdir_lib
from vae_jax.errors import ConfigError
from vae_jax.protocol import TrainConfig

B1, B2, EPS = 0.9, 0.999, 1e-8  # optax.adam's defaults


def numpy_adam(grads, params, lr_at, clip=0.0, weight_decay=0.0):
    """Params after Adam (Kingma & Ba, 2015) on the gradient list ``grads``: clipped to the global norm ``clip``
    first (if > 0), AdamW's decoupled decay ``lr * weight_decay * p`` (Loshchilov & Hutter, 2019) if > 0."""
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(p) for k, p in params.items()}
    params = {k: p.astype(np.float64) for k, p in params.items()}
    for t, g in enumerate(grads, start=1):
        g = {k: x.astype(np.float64) for k, x in g.items()}
        if clip > 0:
            norm = math.sqrt(sum(float(np.sum(x**2)) for x in g.values()))
            g = {k: x * min(1.0, clip / norm) for k, x in g.items()}
        for k in params:
            m[k] = B1 * m[k] + (1 - B1) * g[k]
            v[k] = B2 * v[k] + (1 - B2) * g[k] ** 2
            step = (m[k] / (1 - B1**t)) / (np.sqrt(v[k] / (1 - B2**t)) + EPS) + weight_decay * params[k]
            params[k] = params[k] - lr_at(t - 1) * step
    return params


def optax_run(optimizer, grads, params):
    state = optimizer.init(params)
    for g in grads:
        updates, state = optimizer.update(g, state, params)
        params = optax.apply_updates(params, updates)
    return params


def tiny_problem(seed=0):
    rng = np.random.default_rng(seed)
    params = {"w": rng.normal(size=(3, 2)).astype(np.float32), "b": rng.normal(size=(2,)).astype(np.float32)}
    scales = [0.1, 5.0, 0.5, 20.0]  # global norms below and above the clip: the clip factor changes per step
    grads = [{k: (s * rng.normal(size=p.shape)).astype(np.float32) for k, p in params.items()} for s in scales]
    return params, grads


def config(**overrides):
    return TrainConfig(learning_rate=0.01, **overrides)


def test_the_defaults_build_exactly_optax_adam():
    params, grads = tiny_problem()
    chex.assert_trees_all_equal(
        optax_run(train.make_optimizer(config()), grads, params), optax_run(optax.adam(0.01), grads, params)
    )


@pytest.mark.parametrize("clip, weight_decay", [(0.0, 0.0), (1.0, 0.0), (0.0, 0.1), (2.0, 0.05)])
def test_clipping_and_weight_decay_match_numpy(clip, weight_decay):
    params, grads = tiny_problem(1)
    got = optax_run(train.make_optimizer(config(grad_clip=clip, weight_decay=weight_decay)), grads, params)
    expected = numpy_adam(grads, params, lambda t: 0.01, clip, weight_decay)
    chex.assert_trees_all_close(got, expected, rtol=1e-5, atol=1e-7)
    if clip:  # the clip changed the answer: the comparison is not blind to it
        unclipped = numpy_adam(grads, params, lambda t: 0.01, 0.0, weight_decay)
        assert not np.allclose(got["w"], unclipped["w"], rtol=1e-4)


def cosine(lr, t, steps):
    return lr * 0.5 * (1 + math.cos(math.pi * min(t, steps) / steps))


@pytest.mark.parametrize(
    "name, overrides, closed_form",
    [
        ("cosine", dict(decay_steps=10), lambda t: cosine(0.01, t, 10)),
        (
            "warmup_cosine",
            dict(warmup_steps=4, decay_steps=10),
            lambda t: 0.01 * t / 4 if t < 4 else cosine(0.01, t - 4, 6),
        ),
    ],
)
def test_schedules_match_their_closed_form(name, overrides, closed_form):
    schedule = train.learning_rate_schedule(config(lr_schedule=name, **overrides))
    for t in range(13):
        np.testing.assert_allclose(float(schedule(t)), closed_form(t), rtol=1e-6, atol=1e-9)
    # Through the optimizer: Adam on a constant gradient moves each param by lr_t / (1 + eps) at step t.
    params, grads = {"p": np.zeros(1, np.float32)}, [{"p": np.ones(1, np.float32)}] * 12
    got = optax_run(train.make_optimizer(config(lr_schedule=name, **overrides)), grads, params)
    np.testing.assert_allclose(got["p"], -sum(closed_form(t) for t in range(12)) / (1 + EPS), rtol=1e-5)


def test_a_cosine_schedule_spans_the_run_unless_decay_steps_is_given():
    schedule = train.learning_rate_schedule(config(lr_schedule="cosine"), total_steps=20)
    np.testing.assert_allclose(float(schedule(10)), cosine(0.01, 10, 20), rtol=1e-6)
    schedule = train.learning_rate_schedule(config(lr_schedule="cosine", decay_steps=40), total_steps=20)
    np.testing.assert_allclose(float(schedule(10)), cosine(0.01, 10, 40), rtol=1e-6)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(grad_clip=-1.0), "--grad-clip must be 0 \\(off\\) or a positive number, got -1.0"),
        (dict(weight_decay=float("nan")), "--weight-decay must be 0 \\(off\\) or a positive number, got nan"),
        (dict(warmup_steps=5), "--warmup-steps must be 0 unless --lr-schedule warmup_cosine, got 5"),
        (dict(lr_schedule="warmup_cosine", warmup_steps=10, decay_steps=10), "--decay-steps must be 0 or more than"),
        (dict(decay_steps=-1), "--decay-steps must be a non-negative integer"),
    ],
)
def test_bad_optimizer_flags_name_the_flag(overrides, message):
    with pytest.raises(ConfigError, match=message):
        config(**overrides).validate()


def test_a_warmup_longer_than_the_run_is_a_config_error():
    with pytest.raises(ConfigError, match="--warmup-steps 50 must be fewer than the 20 steps"):
        train.make_optimizer(config(lr_schedule="warmup_cosine", warmup_steps=50), total_steps=20)


def test_optimizer_flags_change_what_a_run_computes_so_a_resume_must_keep_them():
    fields = {"lr_schedule", "warmup_steps", "decay_steps", "grad_clip", "weight_decay"}
    assert fields <= {f.name for f in dataclasses.fields(TrainConfig)}
    assert not fields & workdir_lib.RESUMABLE_FIELDS


def test_a_default_run_equals_a_hand_built_adam_loop(tmp_path, mnist_small):
    cfg = tasks.VAEConfig(
        latent_dim=2,
        hidden=(16,),
        batch_size=128,
        epochs=1,
        workdir=str(tmp_path / "a"),
        progress=False,
        tensorboard=False,
        eval_batch_size=500,
        seed=3,
    )
    _, task = tasks.vae_task(cfg, mnist_small.image_shape)
    result = runner.train(cfg, task, mnist_small)
    # The same run with the task's own optax.adam: bit for bit the same (the defaults are plain Adam).
    own = runner.train(
        dataclasses.replace(cfg, workdir=str(tmp_path / "b")),
        dataclasses.replace(task, optimizer=optax.adam(cfg.learning_rate)),
        mnist_small,
    )
    chex.assert_trees_all_equal(result.params(0), own.params(0))
    # A plain Python loop over the jitted step with optax.adam, outside the runner (float order may differ).
    optimizer, keys = optax.adam(cfg.learning_rate), train.run_keys(3)
    state = train.init_train_state(task.init_params(keys.init), optimizer)
    data = {"x": jnp.asarray(mnist_small.x_train), "y": jnp.asarray(mnist_small.y_train)}
    state, _ = train.loop_epoch(
        train.make_train_step(task.loss_fn, optimizer), state, data, keys.data, keys.sample, 0, cfg.batch_size
    )
    assert int(state.step) == len(mnist_small.x_train) // cfg.batch_size
    chex.assert_trees_all_close(result.params(0), jax.device_get(state.params), rtol=1e-4, atol=1e-6)
