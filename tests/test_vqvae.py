"""Tests of the conv VQ-VAE, its task (EMA codebook through the train step, usage over a set) and a short run."""

import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import checkpoint, cli, errors, evaluate, runner, train
from vae_jax.models.vqvae import VQVAE
from vae_jax.models.vqvae import init_params as init_vqvae_params
from vae_jax.reports import vqvae as vqvae_report
from vae_jax.tasks import vqvae as vq

TINY = dict(codebook_size=16, code_dim=4, channels=(8, 16), res_blocks=0, batch_size=32, progress=False)


def _config(tmp_path, **overrides):
    config = vq.VQVAEConfig(**{**TINY, "workdir": str(tmp_path / "run"), **overrides})
    config.validate()
    return config


@pytest.mark.parametrize("image_shape, grid", [((28, 28, 1), (7, 7)), ((32, 32, 3), (8, 8))])
def test_model_grid_and_shapes(image_shape, grid):
    model = VQVAE(num_codes=10, code_dim=3, channels=(4, 8), num_res_blocks=1, image_shape=image_shape)
    params = init_vqvae_params(model, jax.random.key(0))
    assert params["codebook"].shape == (10, 3)
    x = jnp.zeros((2, *image_shape))
    logits, quantized = jax.jit(model.apply)({"params": params}, x)
    assert logits.shape == (2, *image_shape) and quantized.indices.shape == (2, *grid)
    assert model.grid_shape == grid
    decoded = jax.jit(lambda p, i: model.apply(p, i, method=model.decode_indices))(
        {"params": params}, jnp.zeros((2, *grid), jnp.int32)
    )
    assert decoded.shape == (2, *image_shape)


def test_presets_and_flag_errors():
    config = vq.VQVAEConfig(preset="color32")
    assert (config.num_codes, config.dim, config.commitment) == (512, 64, 0.25)
    assert vq.VQVAEConfig(codebook_size=32).num_codes == 32
    for bad, flag in (
        ({"codebook": "adam"}, "--codebook"),
        ({"kmeans_init": "yes"}, "--kmeans-init"),
        ({"ema_decay": 1.0}, "--ema-decay"),
        ({"channels": (8,)}, "--channels"),
        ({"dead_code_steps": (-1,)}, "--dead-code-steps"),
        ({"ema_rule": "haiku"}, "--ema-rule"),
    ):
        with pytest.raises(errors.ConfigError, match=flag):
            vq.VQVAEConfig(**bad).validate()
    with pytest.raises(errors.ConfigError, match="divisible by 4"):
        vq.VQVAEConfig().validate_for((30, 30, 1))


def test_default_codebook_is_ema_with_dead_code_restarts_and_the_old_one_is_a_flag_away(tmp_path):
    config = cli.parse_config(vq.VQVAEConfig, ["--workdir", str(tmp_path / "run")])
    assert (config.codebook, config.kmeans_init, config.dead_code_steps, config.ema_rule) == (
        "ema",
        "off",
        (100,),
        "keep",
    )
    old = cli.parse_config(vq.VQVAEConfig, ["--dead-code-steps", "0"])
    assert old.dead_code_steps == (0,) and old.codebook == "ema"
    assert cli.parse_config(vq.VQVAEConfig, ["--codebook", "grad"]).codebook == "grad"
    # The default update restarts a code unused for 100 steps onto one of the step's encoder outputs.
    _, task = vq.vqvae_task(config, (28, 28, 1))
    codebook = jnp.asarray(np.random.default_rng(0).normal(size=(64, 16)), jnp.float32)
    z_e = jnp.asarray(np.random.default_rng(1).normal(size=(2, 7, 7, 16)), jnp.float32)
    state = {**task.init_model_state(None), "steps_unused": jnp.full((64,), 99, jnp.int32)}
    aux = {"z_e": z_e, "indices": jnp.zeros((2, 7, 7), jnp.int32)}  # only code 0 used
    params, state, metrics = task.update_fn({"codebook": codebook}, state, aux, jnp.int32(0), jax.random.key(0))
    assert float(metrics["codes_restarted"]) == 63
    flat = np.asarray(z_e).reshape(-1, 16)
    for row in np.asarray(params["codebook"])[1:]:
        assert np.min(np.abs(flat - row).sum(axis=1)) == 0.0


def test_a_bad_flag_exits_with_a_one_line_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.parse_config(vq.VQVAEConfig, ["--codebook", "adam"])
    assert exit_info.value.code == 2
    assert "--codebook must be grad, ema or a list of them" in capsys.readouterr().err


def test_option_lists_expand_to_sub_workdirs():
    config = vq.VQVAEConfig(codebook="grad,ema", kmeans_init="on", dead_code_steps=(0, 50), workdir="w")
    names = [name for name, _ in config.variants()]
    assert names == ["grad_kmeans-on_dead-0", "grad_kmeans-on_dead-50", "ema_kmeans-on_dead-0", "ema_kmeans-on_dead-50"]
    _, last = config.variants()[-1]
    assert last.is_single() and last.codebook == "ema" and last.workdir == os.path.join("w", names[-1])
    assert vq.VQVAEConfig().variants() == [("", vq.VQVAEConfig())]
    with pytest.raises(ValueError, match="variants"):
        vq.vqvae_task(config, (28, 28, 1))


@pytest.mark.parametrize("mode", ["grad", "ema"])
def test_codebook_gradient_only_in_grad_mode_and_only_on_used_codes(tmp_path, mnist_small, mode):
    model, task = vq.vqvae_task(_config(tmp_path, codebook=mode), mnist_small.image_shape)
    params = task.init_params(jax.random.key(0))
    batch = {"x": jnp.asarray(mnist_small.x_train[:8])}
    grads, (_, aux) = jax.jit(jax.grad(task.loss_fn, has_aux=True))(params, batch, jax.random.key(1), jnp.int32(0))
    used = np.unique(np.asarray(aux["indices"]))
    row_norms = np.abs(np.asarray(grads["codebook"])).sum(axis=1)
    if mode == "ema":
        np.testing.assert_array_equal(row_norms, 0.0)
    else:
        assert np.all(row_norms[used] > 0)
        np.testing.assert_array_equal(np.delete(row_norms, used), 0.0)


def test_the_ema_codebook_is_outside_the_optimizer_and_weight_decay_never_moves_it(tmp_path, mnist_small):
    """With --codebook ema the optimizer (here AdamW with weight decay) leaves the codebook alone and keeps
    no state for it; every other param gets exactly the update of optax.adamw applied to them alone."""
    import optax

    config = _config(tmp_path, codebook="ema", weight_decay=0.5)
    _, task = vq.vqvae_task(config, mnist_small.image_shape)
    optimizer = runner.task_optimizer(config, task)
    params = task.init_params(jax.random.key(0))
    grads = jax.tree_util.tree_map(jnp.ones_like, params)  # a codebook gradient too: it must be ignored
    updates, opt_state = optimizer.update(grads, optimizer.init(params), params)
    np.testing.assert_array_equal(updates["codebook"], 0.0)
    shapes = [leaf.shape for leaf in jax.tree_util.tree_leaves(opt_state)]
    assert params["codebook"].shape not in shapes  # no Adam moments for the codebook
    rest = {k: v for k, v in params.items() if k != "codebook"}
    reference = optax.adamw(config.learning_rate, weight_decay=0.5)
    expected, _ = reference.update({k: grads[k] for k in rest}, reference.init(rest), rest)
    chex.assert_trees_all_equal({k: updates[k] for k in rest}, expected)
    _, grad_task = vq.vqvae_task(_config(tmp_path, codebook="grad"), mnist_small.image_shape)
    assert grad_task.not_trained is None  # --codebook grad: the codebook is a trained param


@pytest.mark.parametrize("rule", ["keep", "sonnet"])
def test_ema_train_step_moves_used_codes_and_evaluation_changes_nothing(tmp_path, mnist_small, rule):
    config = _config(tmp_path, codebook="ema", dead_code_steps=(0,), ema_rule=rule)
    model, task = vq.vqvae_task(config, mnist_small.image_shape)
    optimizer = train.make_optimizer(config)
    params = task.init_params(jax.random.key(0))
    state = train.init_train_state(params, optimizer, task.init_model_state(params))
    codebook0 = np.asarray(params["codebook"])
    batch = {"x": jnp.asarray(mnist_small.x_train[:32])}
    used = np.unique(np.asarray(vq.encode_indices(model, params, mnist_small.x_train[:32])))
    step = train.make_train_step(task.loss_fn, optimizer, task.update_fn)
    state, metrics = step(state, batch, jax.random.key(2))
    codebook1 = np.asarray(state.params["codebook"])
    moved = np.any(codebook1 != codebook0, axis=1)
    if rule == "keep":
        np.testing.assert_array_equal(np.nonzero(moved)[0], used)
    else:  # Sonnet/Haiku: every code rewritten, the never-used ones to 0 (their averages are 0)
        np.testing.assert_array_equal(np.nonzero(np.any(codebook1 != 0, axis=1))[0], used)
        assert np.all(moved)
    assert int(state.model_state["ema"]["count"]) == 1
    assert float(metrics["batch_codes_used"]) == len(used)

    before = jax.tree_util.tree_map(np.asarray, (state.params, state.model_state))
    eval_fn = evaluate.make_per_example_eval(task.eval_fn, 64)
    metrics = eval_fn(state.params, {"x": jnp.asarray(mnist_small.x_test)}, evaluate.eval_key())
    assert metrics["mse"].shape == (128,)
    after = jax.tree_util.tree_map(np.asarray, (state.params, state.model_state))
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, after)


def test_code_usage_counts_the_whole_set(tmp_path, mnist_small):
    model, task = vq.vqvae_task(_config(tmp_path), mnist_small.image_shape)
    params = task.init_params(jax.random.key(0))
    usage = vq.code_usage(model, params, mnist_small.x_test, batch_size=50)
    indices = vq.encode_indices(model, params, mnist_small.x_test)
    expected = np.bincount(indices.reshape(-1), minlength=16)
    np.testing.assert_array_equal(usage["counts"], expected)
    p = expected[expected > 0] / expected.sum()
    np.testing.assert_allclose(usage["perplexity"], np.exp(-np.sum(p * np.log(p))), rtol=1e-5)


def test_short_run_uses_most_codes_and_lowers_reconstruction_error(tmp_path, mnist_small, capsys):
    config = _config(
        tmp_path,
        codebook_size=32,
        codebook="ema",
        kmeans_init="on",
        dead_code_steps=(20,),
        epochs=3,
        learning_rate=2e-3,
    )
    model, task = vq.vqvae_task(config, mnist_small.image_shape, mnist_small.x_train)
    init_params = task.init_params(train.run_keys(0).init)  # seed 0's initial params, as the runner draws them
    eval_fn = evaluate.make_per_example_eval(task.eval_fn, 128)
    test = {"x": jnp.asarray(mnist_small.x_test)}
    mse_before = float(jnp.mean(eval_fn(init_params, test, evaluate.eval_key())["mse"]))
    result = runner.train(config, task, mnist_small)
    mse_after = float(np.mean(result.test_metrics["mse"]))
    usage = vq.code_usage(model, result.params(0), mnist_small.x_test)
    assert mse_after < 0.7 * mse_before
    assert usage["codes_used"] > 16
    by_epoch = vqvae_report.checkpoint_usage(config, task, model, mnist_small.x_test)
    assert [line["epoch"] for line in by_epoch] == [1, 2, 3]
    assert by_epoch[-1]["codes_used"] == usage["codes_used"]
    with open(os.path.join(config.workdir, "config.json")) as f:
        assert json.load(f)["kind"] == "vqvae"
    # Flipped bytes in epoch 2's largest file: caught by the SHA-256 digests of its array data, left out with a warning.
    step_dir = os.path.join(config.workdir, "checkpoints", "2")
    files = [
        os.path.join(folder, name)
        for folder, _, names in os.walk(step_dir)
        for name in names
        if name != checkpoint.CHECKSUMS
    ]
    with open(max(files, key=os.path.getsize), "r+b") as f:
        f.seek(8)
        byte = f.read(1)
        f.seek(8)
        f.write(bytes([byte[0] ^ 0xFF]))
    capsys.readouterr()
    assert vqvae_report.checkpoint_usage(config, task, model, mnist_small.x_test) == [by_epoch[0], by_epoch[2]]
    assert "warning: checkpoint 2 in" in capsys.readouterr().err


def test_experiment_end_to_end_compares_options(tmp_path, small_npz, capsys, monkeypatch):
    from experiments import vqvae as experiment
    from vae_jax import data

    # The k-means batch, distances and the prior's training codes never convert the whole training split.
    monkeypatch.setattr(data.dataset, "ANALYSIS_TRAIN_EXAMPLES", 300)
    monkeypatch.setattr(data.Dataset, "x_train", property(lambda self: pytest.fail("whole training split converted")))

    workdir = tmp_path / "vq"
    argv = [
        "--dataset",
        small_npz,
        "--workdir",
        str(workdir),
        "--codebook",
        "grad,ema",
        "--epochs",
        "1",
        "--batch-size",
        "64",
        "--codebook-size",
        "16",
        "--code-dim",
        "4",
        "--channels",
        "8,16",
        "--res-blocks",
        "0",
        "--prior-epochs",
        "1",
        "--prior-channels",
        "8",
        "--prior-layers",
        "2",
        "--vae-epochs",
        "1",
        "--num-samples",
        "20",
        "--no-progress",
    ]
    experiment.main(argv)
    out, err = capsys.readouterr()  # the table and where it lies on stdout, the logs on stderr
    table = (workdir / "comparison.md").read_text() + f"outputs in {workdir}\n"
    assert out.startswith(table) and out[len(table) :].startswith("data: ") and "data: " in err
    assert (workdir / "comparison.md").read_text().count("\n") == 4  # header, rule, two rows
    for name in ("grad_kmeans-off_dead-100", "ema_kmeans-off_dead-100"):
        run = workdir / name
        summary = json.loads((run / "summary.json").read_text())
        assert summary["codebook_size"] == 16
        assert 1 <= summary["codes_used"]["mean"] <= 16
        assert 1.0 <= summary["perplexity"]["mean"] <= summary["codes_used"]["mean"] + 1e-6
        assert 0 < summary["prior_test_bits_per_dim"] and summary["uniform_prior_bits_per_dim"] == 4.0
        assert set(summary["sample_quality"]) == {
            "prior_samples",
            "uniform_codes",
            "vae_normal_samples",
            "test_reconstructions",
        }
        assert [line["epoch"] for line in summary["usage_by_epoch"]] == [1]
        for figure in summary["figures"]:
            assert (run / figure).stat().st_size > 0
        assert json.loads((run / "prior" / "config.json").read_text())["kind"] == "vq_prior"
    # A rerun on the finished checkpoints reuses each variant's summary and figures: the same table.
    summaries = {name: (workdir / name / "summary.json").read_text() for name in ("grad_kmeans-off_dead-100",)}
    # (the usage by epoch comes from the finished runs' summary.json, not from their checkpoints again)
    monkeypatch.setattr(vqvae_report, "checkpoint_usage", lambda *args: pytest.fail("usage by epoch computed again"))
    experiment.main(argv)
    rerun_out, rerun_err = capsys.readouterr()
    assert rerun_out == out and rerun_err.count("reusing") == 2
    assert {name: (workdir / name / "summary.json").read_text() for name in summaries} == summaries
    with pytest.raises(SystemExit) as exit_info:  # a workdir of another run is refused with a one-line error
        experiment.main(argv[:-1] + ["--commitment", "0.5", "--no-progress"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()  # before any data is loaded or anything trained
    assert "--commitment 0.25 there, 0.5 here" in line and "grad_kmeans-off_dead-100" in line
