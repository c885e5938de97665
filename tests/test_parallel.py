"""Seeds and device meshes: the one-seed path is the plain scan epoch, vmapped seeds equal single runs, meshes match
one device; the epoch loop's convolution probe."""

import json
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax import lax

from vae_jax import evaluate, parallel, runner, tasks, train
from vae_jax.errors import ConfigError
from vae_jax.tasks import conv_vae

BATCH = 64


@pytest.fixture(scope="module")
def setup(mnist_small):
    config = tasks.VAEConfig(latent_dim=8, hidden=(32,), batch_size=BATCH)
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    optimizer = optax.adam(1e-3)
    step = train.make_train_step(task.loss_fn, optimizer)
    data = {"x": jnp.asarray(mnist_small.x_train)}
    return task, optimizer, step, data


def _two_epochs(fn, state, data, keys):
    for epoch in range(2):
        state, metrics = fn(state, data, keys.data, keys.sample, jnp.int32(epoch))
    return jax.device_get((state, metrics))


def _replicated_run(setup, program, seeds):
    task, optimizer, _, data = setup
    keys = jax.vmap(train.run_keys)(jnp.asarray(seeds))
    return _two_epochs(program, train.init_replicated_state(task.init_params, optimizer, keys.init), data, keys)


def _plain_run(setup, seed):
    """The reference: a single model's jitted scan epoch, no replica axis anywhere."""
    task, optimizer, step, data = setup
    keys = train.run_keys(seed)
    state = train.init_train_state(task.init_params(keys.init), optimizer)
    return _two_epochs(jax.jit(train.make_epoch_fn(step, BATCH), donate_argnums=0), state, data, keys)


def _replica(tree, k):
    return jax.tree_util.tree_map(lambda a: np.asarray(a)[k], tree)


def test_one_seed_runs_the_plain_scan_epoch_bit_for_bit(setup):
    one = _replicated_run(setup, parallel.make_epoch_program(setup[2], BATCH, parallel.Plan(1)), [3])
    plain = _plain_run(setup, 3)
    for a, b in zip(jax.tree_util.tree_leaves(_replica(one, 0)), jax.tree_util.tree_leaves(plain), strict=True):
        np.testing.assert_array_equal(a, b)


def test_one_seed_program_has_no_replica_batching(setup):
    """The compiled one-seed epoch holds the same matrix multiplies as the plain epoch, none batched; a
    ``jax.vmap`` of the plain epoch over one replica (what the one-seed path avoids) batches them."""
    task, optimizer, step, data = setup
    keys = jax.vmap(train.run_keys)(jnp.asarray([0]))
    state = train.init_replicated_state(task.init_params, optimizer, keys.init)
    args = (state, data, keys.data, keys.sample, jnp.int32(0))
    single = parallel.make_epoch_program(step, BATCH, parallel.Plan(1)).lower(*args).as_text()
    vmapped = jax.jit(jax.vmap(train.make_epoch_fn(step, BATCH), in_axes=(0, None, 0, 0, None)))
    vmapped = vmapped.lower(*args).as_text()
    plain_args = (_replica(state, 0), data, keys.data[0], keys.sample[0], jnp.int32(0))
    plain = jax.jit(train.make_epoch_fn(step, BATCH)).lower(*plain_args).as_text()
    assert single.count("dot_general") == plain.count("dot_general") == vmapped.count("dot_general") > 0
    assert single.count("batching_dims") == plain.count("batching_dims") == 0 < vmapped.count("batching_dims")


def test_vmapped_seeds_equal_each_seed_trained_alone(setup):
    seeds = [3, 5]
    vmap = _replicated_run(setup, parallel.make_epoch_program(setup[2], BATCH, parallel.Plan(2)), seeds)
    for k, seed in enumerate(seeds):
        plain = _plain_run(setup, seed)
        # Batched matrix multiplies round differently: equal up to float32 rounding.
        for a, b in zip(jax.tree_util.tree_leaves(_replica(vmap, k)), jax.tree_util.tree_leaves(plain), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("seeds", [[3], [3, 5]])
def test_step_loop_epoch_trains_what_the_scan_epoch_trains(setup, seeds):
    """--epoch-loop steps: the same batches, keys and updates as the scan-fused epoch (XLA may fuse differently)."""
    plan = parallel.Plan(len(seeds))
    scan = _replicated_run(setup, parallel.make_epoch_program(setup[2], BATCH, plan, "scan"), seeds)
    steps = _replicated_run(setup, parallel.make_epoch_program(setup[2], BATCH, plan, "steps"), seeds)
    for a, b in zip(jax.tree_util.tree_leaves(steps), jax.tree_util.tree_leaves(scan), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _conv(x, w):  # x: [N, H, W, C], w: [kh, kw, C, O]
    return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))


NESTED_CONVOLUTIONS = {
    "scan": lambda x, w: lax.scan(lambda c, _: (c + _conv(x, w).sum(), None), 0.0, None, length=2)[0],
    "checkpoint": lambda x, w: jax.checkpoint(_conv)(x, w).sum(),
    "cond": lambda x, w: lax.cond(x.sum() > 0, lambda: _conv(x, w).sum(), lambda: 0.0),
    "jit": lambda x, w: jax.jit(_conv)(x, w).sum(),
    # cond inside checkpoint inside scan, differentiated
    "deep": jax.grad(
        lambda x, w: lax.scan(
            lambda c, _: (c + jax.checkpoint(lambda: lax.cond(c > 0, lambda: _conv(x, w).sum(), lambda: c))(), None),
            1.0,
            None,
            length=2,
        )[0],
        argnums=1,
    ),
}


def _names_by_jax(jaxpr) -> set[str]:
    """The reference walk: JAX's own enumeration of an equation's sub-jaxprs (``jax.extend.core.subjaxprs``)."""
    from jax.extend.core import subjaxprs

    return {eqn.primitive.name for eqn in jaxpr.eqns}.union(*map(_names_by_jax, subjaxprs(jaxpr)))


@pytest.mark.parametrize("name", sorted(NESTED_CONVOLUTIONS))
def test_the_probe_finds_a_convolution_nested_in_a_body(name):
    x, w = jax.ShapeDtypeStruct((2, 6, 6, 1), jnp.float32), jax.ShapeDtypeStruct((3, 3, 1, 2), jnp.float32)
    fn = NESTED_CONVOLUTIONS[name]
    jaxpr = jax.make_jaxpr(fn)(x, w).jaxpr
    assert "conv_general_dilated" not in {eqn.primitive.name for eqn in jaxpr.eqns}  # only a walk finds it
    assert parallel.primitive_names(jaxpr) == _names_by_jax(jaxpr)
    assert parallel.has_convolution(fn, x, w)


def test_the_probe_names_an_mlps_primitives_and_finds_no_convolution():
    x, w = jax.ShapeDtypeStruct((4, 3), jnp.float32), jax.ShapeDtypeStruct((3, 2), jnp.float32)
    mlp = lambda x, w: jax.checkpoint(lambda: jnp.tanh(x @ w))()  # noqa: E731
    jaxpr = jax.make_jaxpr(mlp)(x, w).jaxpr
    (outer,) = {eqn.primitive.name for eqn in jaxpr.eqns}  # the checkpoint (its name is JAX's own)
    assert parallel.primitive_names(jaxpr) == {outer, "dot_general", "tanh"}
    assert not parallel.has_convolution(jax.grad(lambda x, w: mlp(x, w).sum(), argnums=1), x, w)


def test_auto_epoch_loop_steps_only_for_convolutions_on_cpu():
    optimizer = optax.adam(1e-3)
    batch = {"x": jax.ShapeDtypeStruct((4, 28, 28, 1), jnp.float32)}
    found = {}
    for name, build in (
        ("mlp", lambda: tasks.vae_task(tasks.VAEConfig(latent_dim=2, hidden=(8,)), (28, 28, 1))),
        (
            "conv",
            lambda: conv_vae.conv_vae_task(conv_vae.ConvVAEConfig(latent_dim=2, channels=(4,), hidden=0), (28, 28, 1)),
        ),
    ):
        _, task = build()
        state = train.init_train_state(task.init_params(jax.random.key(0)), optimizer)
        step = train.make_train_step(task.loss_fn, optimizer)
        found[name] = parallel.has_convolution(step, state, batch, jax.random.key(1))
        replicated = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct((2, *a.shape), a.dtype), state)
        pixels = np.zeros((8, 28, 28, 1), np.uint8)  # the runner's probe traces the loss alone, on stored pixels
        assert runner.loss_has_convolution(task.loss_fn, replicated, pixels, None, 4) == found[name]
    assert found == {"mlp": False, "conv": True}
    assert parallel.choose_epoch_loop("auto", "cpu", lambda: True) == "steps"
    assert parallel.choose_epoch_loop("auto", "cpu", lambda: False) == "scan"
    assert parallel.choose_epoch_loop("auto", "gpu", lambda: True) == "scan"
    assert parallel.choose_epoch_loop("scan", "cpu", lambda: True) == "scan"
    with pytest.raises(ConfigError, match="--epoch-loop"):
        parallel.choose_epoch_loop("fast", "cpu", lambda: True)


def test_eval_programs_agree_with_one_model_evaluations(setup, mnist_small):
    task, optimizer, _, _ = setup
    keys = jax.vmap(train.run_keys)(jnp.asarray([1, 2]))
    params = train.init_replicated_state(task.init_params, optimizer, keys.init).params
    test = {"x": jnp.asarray(mnist_small.x_test)}
    one_model = evaluate.make_per_example_eval(task.eval_fn, 50)
    reference = np.stack(
        [np.asarray(one_model(_replica(params, r), test, jax.random.key(0))["neg_elbo"]) for r in range(2)]
    )
    out = parallel.make_eval_program(task.eval_fn, 50, parallel.Plan(2))(params, test, jax.random.key(0))
    np.testing.assert_allclose(np.asarray(out["neg_elbo"]), reference, rtol=1e-5)
    first = jax.tree_util.tree_map(lambda a: a[:1], params)
    out = parallel.make_eval_program(task.eval_fn, 50, parallel.Plan(1))(first, test, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(out["neg_elbo"]), reference[:1])


def test_seed_layouts_and_device_errors():
    assert [parallel.make_plan(r, 16).seed_layout for r in (1, 2, 8)] == ["single", "vmap", "vmap"]
    assert parallel.parse_devices("all", available=4) == 4
    assert parallel.parse_devices("2", available=4) == 2
    for bad in ("0", "5", "two"):
        with pytest.raises(ConfigError, match="--devices must be 'all' or a count from 1 to 4"):
            parallel.parse_devices(bad, available=4)


def test_runner_records_the_layout(tmp_path, mnist_small):
    config = tasks.VAEConfig(
        latent_dim=4,
        hidden=(16,),
        batch_size=BATCH,
        epochs=1,
        workdir=str(tmp_path),
        progress=False,
        eval_batch_size=64,
        seeds="2",
    )
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    summary = runner.train(config, task, mnist_small).summary
    assert summary["device_count"] == 1 and summary["mesh"] is None
    assert summary["seed_layout"] == "vmap" and summary["epoch_loop"] == "scan"  # an MLP: no convolution


MESH_SCRIPT = textwrap.dedent("""
    import json, sys
    import jax, numpy as np
    from vae_jax import data, errors, runner, tasks
    from vae_jax import parallel
    x_train, y_train, x_test, y_test = data.embedded_mnist()
    # 250 rows: not a multiple of 8 or 4, so the split is padded to lay it out over 8 (or 4) data shards
    ds = data.Dataset(x_train[:250, ..., None] / np.float32(255), y_train[:250],
                      x_test[:60, ..., None] / np.float32(255), y_test[:60], "slice")
    def config(name, **kw):
        kw = {"batch_size": 64, **kw}
        return tasks.VAEConfig(latent_dim=4, hidden=(32,), epochs=1, workdir=sys.argv[1] + "/" + name,
                               progress=False, eval_batch_size=64, checkpoint_every=10, **kw)
    _, task = tasks.vae_task(config("x"), ds.image_shape)
    runs = {"one": config("one", seeds="0,1"), "data8": config("data8", devices="all"),
            "seeds2x4": config("seeds2x4", devices="8", seeds="0,1"),
            "seeds1x2": config("seeds1x2", devices="2", seeds="0,1,2")}
    out = {"device_count": jax.device_count()}
    for name, cfg in runs.items():
        result = runner.train(cfg, task, ds)
        out[name] = {"summary": {k: result.summary[k] for k in ("device_count", "mesh", "seed_layout")},
                     "params": [np.asarray(a).tolist() for a in jax.tree_util.tree_leaves(result.state.params)],
                     "loss": [line["train_loss"] for line in result.history],
                     "test": [line.get("per_seed", {"test_neg_elbo": [line["test_neg_elbo"]]})["test_neg_elbo"]
                              for line in result.history]}
    placed = parallel.make_plan(2, 64, "8").place_examples({"x": ds.train_pixels, "y": ds.y_train})  # 2 x 4 mesh
    out["shards"] = {name: sorted((s.index[0].start, s.index[0].stop, s.data.shape[0], s.device.id,
                                   bool(np.array_equal(np.asarray(s.data)[:max(0, 250 - s.index[0].start)],
                                                       np.asarray(host)[s.index[0]]))
                                   and not np.asarray(s.data)[max(0, 250 - s.index[0].start):].any())
                                  for s in placed[name].addressable_shards)
                     for name, host in (("x", ds.train_pixels), ("y", ds.y_train))}
    from experiments import evaluate as evaluate_experiment  # the IWAE evaluation, each batch split over 8 devices
    np.savez(sys.argv[1] + "/test.npz", x_train=x_train[:250], y_train=y_train[:250], x_test=x_test[:60],
             y_test=y_test[:60])
    evals = {n: evaluate_experiment.main(["--workdir", sys.argv[1] + "/one", "--devices", n, "--iwae-k", "40",
                                          "--batch-size", "20", "--k-chunk", "20",
                                          "--dataset", "npz:" + sys.argv[1] + "/test.npz",
                                          "--out", sys.argv[1] + f"/eval{n}.json"]) for n in ("1", "all")}
    out["eval"] = {n: {k: r[k] for k in ("neg_elbo", "iwae_nll", "active_units", "n")} for n, r in evals.items()}
    try:
        runner.train(config("bad", devices="8", batch_size=60), task, ds)
    except errors.ConfigError as err:
        out["error"] = str(err)
    print("RESULT" + json.dumps(out))
""")


def test_eight_simulated_devices_match_one_device(tmp_path):
    """Data parallel (1 x 8), seeds x data (2 x 4) and three seeds on two devices (1 x 2: gcd(3, 2) = 1 replica
    shard) train what one device trains."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
    }
    proc = subprocess.run(
        [sys.executable, "-c", MESH_SCRIPT, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    assert out["device_count"] == 8
    assert out["data8"]["summary"] == {"device_count": 8, "mesh": {"replica": 1, "data": 8}, "seed_layout": "single"}
    assert out["seeds2x4"]["summary"]["mesh"] == {"replica": 2, "data": 4}
    assert out["seeds2x4"]["summary"]["seed_layout"] == "vmap"
    assert out["seeds1x2"]["summary"] == {"device_count": 2, "mesh": {"replica": 1, "data": 2}, "seed_layout": "vmap"}
    one = [np.asarray(a) for a in out["one"]["params"]]
    for a, b, c in zip(one, out["seeds2x4"]["params"], out["seeds1x2"]["params"], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(a, np.asarray(c)[:2], rtol=1e-4, atol=1e-5)  # seeds 0, 1 of 0, 1, 2
    for a, b in zip(one, out["data8"]["params"], strict=True):  # seed 0 is replica 0 of the two-seed run
        np.testing.assert_allclose(a[0], np.asarray(b)[0], rtol=1e-4, atol=1e-5)
    assert "--batch-size 60 cannot be split evenly over 8 data shards" in out["error"]
    one, eight = out["eval"]["1"], out["eval"]["all"]  # experiments.evaluate --devices all: the same evaluation
    assert one["n"] == eight["n"] == 60 and one["active_units"] == eight["active_units"]
    np.testing.assert_allclose([one["neg_elbo"], one["iwae_nll"]], [eight["neg_elbo"], eight["iwae_nll"]], rtol=1e-5)
    np.testing.assert_allclose(one["neg_elbo"], np.mean(out["one"]["test"][-1]), rtol=1e-5)  # = the run's own
    # devices share batches
    for a, b, c in zip(out["one"]["test"], out["data8"]["test"], out["seeds2x4"]["test"], strict=True):
        np.testing.assert_allclose(a[0], b[0], rtol=1e-5)
        np.testing.assert_allclose(a, c, rtol=1e-5)
    # The training split over a 2 x 4 mesh: each device holds its 63 of the 252 padded rows (the last 2 zeros);
    # the two replica shards hold the same rows.
    for name in ("x", "y"):
        shards = out["shards"][name]
        assert [s[:3] for s in shards] == [[start, start + 63, 63] for start in (0, 0, 63, 63, 126, 126, 189, 189)]
        assert len({s[3] for s in shards}) == 8 and all(s[4] for s in shards)
