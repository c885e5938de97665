"""The autoencoder model, its config and task, training of every variant, and experiments.autoencoder."""

import dataclasses
import json
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import autoencoder as ae_experiment
from vae_jax import evaluate, runner, tasks
from vae_jax.errors import ConfigError
from vae_jax.models.autoencoder import AutoEncoder, conv_level_sizes, init_params


def _apply(model, params, *args, **kwargs):
    return model.apply({"params": params}, *args, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(arch="mlp", hidden=(32, 16)),
        dict(arch="mlp", hidden=()),
        dict(arch="conv", hidden=(4, 8), upsampling="transpose"),
        dict(arch="conv", hidden=(4, 8), upsampling="upsample"),
        dict(arch="conv", hidden=(4, 8), upsampling="unpool"),
    ],
)
def test_shapes_and_encode_decode_agree_with_call(kwargs):
    model = AutoEncoder(latent_dim=5, image_shape=(12, 12, 1), **kwargs)
    params = init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (3, 12, 12, 1))
    out, z = jax.jit(lambda p, v: _apply(model, p, v))(params, x)
    chex.assert_shape(out, (3, 12, 12, 1))
    chex.assert_shape(z, (3, 5))
    chex.assert_tree_all_finite(out)
    z2, indices = _apply(model, params, x, method=model.encode_with_indices)
    np.testing.assert_allclose(z2, z, rtol=1e-5, atol=1e-6)
    decoded = _apply(model, params, z2, indices, method=model.decode)
    np.testing.assert_allclose(decoded, out, rtol=1e-5, atol=1e-6)
    if kwargs.get("upsampling") != "unpool":
        np.testing.assert_allclose(_apply(model, params, z, method=model.decode), out, rtol=1e-5, atol=1e-6)


def test_conv_handles_odd_sizes_and_colour():
    assert conv_level_sizes(7, 9, 2) == [(7, 9), (4, 5), (2, 3)]
    for upsampling in ("transpose", "upsample", "unpool"):
        model = AutoEncoder(latent_dim=3, arch="conv", hidden=(2, 3), image_shape=(7, 9, 3), upsampling=upsampling)
        params = init_params(model, jax.random.key(0))
        out, z = _apply(model, params, jnp.ones((2, 7, 9, 3)))
        chex.assert_shape([out, z], [(2, 7, 9, 3), (2, 3)])


def test_unpool_decoder_uses_the_indices():
    model = AutoEncoder(latent_dim=4, arch="conv", hidden=(3,), image_shape=(6, 6, 1), upsampling="unpool")
    params = init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 6, 6, 1))
    z, indices = _apply(model, params, x, method=model.encode_with_indices)
    chex.assert_shape(indices[0], (2, 3, 3, 3))
    other = (jnp.zeros_like(indices[0]),)
    assert not np.allclose(
        _apply(model, params, z, indices, method=model.decode), _apply(model, params, z, other, method=model.decode)
    )
    with pytest.raises(ValueError, match='decode needs the pooling indices for upsampling="unpool"'):
        _apply(model, params, z, method=model.decode)


def test_empty_hidden_is_a_linear_autoencoder():
    model = AutoEncoder(latent_dim=3, arch="mlp", hidden=(), image_shape=(4, 4, 1))
    params = init_params(model, jax.random.key(0))
    a, b = jax.random.normal(jax.random.key(1), (2, 1, 4, 4, 1))
    f = lambda v: _apply(model, params, v)[0]  # noqa: E731
    zero = f(jnp.zeros_like(a))
    np.testing.assert_allclose(f(2 * a - b) - zero, 2 * (f(a) - zero) - (f(b) - zero), rtol=1e-4, atol=1e-5)


def test_model_errors_name_the_attribute():
    x = jnp.zeros((1, 28, 28, 1))
    cases = [
        (dict(arch="rnn"), "arch must be one of \\('mlp', 'conv'\\), got 'rnn'"),
        (
            dict(upsampling="pixelshuffle"),
            "upsampling must be one of \\('transpose', 'upsample', 'unpool'\\), got 'pixelshuffle'",
        ),
        (dict(latent_dim=0), "latent_dim must be a positive integer, got 0"),
        (dict(hidden=(8, 0)), "hidden must hold positive widths, got \\(8, 0\\)"),
        (dict(arch="conv", hidden=()), "hidden must hold at least one channel count for arch 'conv'"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message):
            AutoEncoder(**kwargs).init(jax.random.key(0), x)
    with pytest.raises(ValueError, match="image_shape must be \\(H, W, C\\), got \\(28, 28\\)"):
        AutoEncoder(image_shape=(28, 28)).init(jax.random.key(0), jnp.zeros((1, 28, 28)))


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(latent_dim=0), "--latent-dim must be a positive integer, got 0"),
        (
            dict(hidden=(64, -1)),
            "--hidden must be comma-separated positive widths like 512,256 (or empty for a linear AE), got '64,-1'",
        ),
        (dict(channels=()), "--channels must be comma-separated positive channel counts like 32,64, got ''"),
        (dict(variant="sparse"), "--variant must be one of plain, denoising, masked, contractive, got 'sparse'"),
        (dict(loss="l1"), "--loss must be one of bce, mse, got 'l1'"),
        (
            dict(output="linear"),
            "--output must be sigmoid with --loss bce (a linear output has no Bernoulli likelihood), got 'linear'",
        ),
        (dict(noise_std=-0.1), "--noise-std must be a non-negative number, got -0.1"),
        (dict(noise_rate=1.5), "--noise-rate must be a fraction in [0, 1], got 1.5"),
        (dict(mask_ratio=1.0), "--mask-ratio must be a fraction strictly between 0 and 1, got 1.0"),
        (dict(patch_size=0), "--patch-size must be a positive integer, got 0"),
        (dict(contractive_weight=float("nan")), "--contractive-weight must be a non-negative number, got nan"),
        (dict(hutchinson_samples=0), "--hutchinson-samples must be a positive integer, got 0"),
        (dict(batch_size=0), "--batch-size must be a positive integer, got 0"),
    ],
)
def test_config_errors_name_the_flag(changes, message):
    config = dataclasses.replace(tasks.AEConfig(), **changes)
    with pytest.raises(ConfigError) as err:
        config.validate()
    assert str(err.value) == message


def test_config_errors_that_depend_on_the_data():
    with pytest.raises(ConfigError) as err:
        tasks.ae_task(tasks.AEConfig(patch_size=29), (28, 28, 1))
    assert str(err.value) == "--patch-size must be at most 28 for 28x28 images, got 29"
    with pytest.raises(ConfigError) as err:
        tasks.ae_task(tasks.AEConfig(arch="conv", channels=(2,) * 6), (28, 28, 1))
    assert str(err.value) == (
        "--channels must be few enough down-blocks for 28x28 images (each halves the size), got '2,2,2,2,2,2'"
    )


def _batch(mnist_small, n=16):
    return {"x": jnp.asarray(mnist_small.x_test[:n]), "y": jnp.asarray(mnist_small.y_test[:n])}


def test_eval_metrics_are_per_example_repeatable_and_consistent(mnist_small):
    batch = _batch(mnist_small)
    x = np.asarray(batch["x"])
    expected = {
        "plain": {"loss", "recon", "mse", "psnr"},
        "denoising": {"loss", "recon", "mse", "psnr", "noisy_psnr", "denoised_mse", "denoised_psnr"},
        "masked": {
            "loss",
            "recon",
            "mse",
            "psnr",
            "masked_recon",
            "all_recon",
            "inpaint_mse",
            "inpaint_psnr",
            "masked_input_psnr",
        },
        "contractive": {"loss", "recon", "mse", "psnr", "penalty", "jacobian_fro2"},
    }
    for variant in tasks.AE_VARIANTS:
        config = tasks.AEConfig(variant=variant, hidden=(32,), latent_dim=4, contractive_weight=0.5)
        model, task = tasks.ae_task(config, mnist_small.image_shape)
        params = task.init_params(jax.random.key(0))
        metrics = jax.jit(task.eval_fn)(params, batch, evaluate.eval_key())
        assert set(metrics) == expected[variant]
        chex.assert_shape(list(metrics.values()), [(16,)] * len(metrics))
        again = jax.jit(task.eval_fn)(params, batch, evaluate.eval_key())
        chex.assert_trees_all_close(metrics, again)
        clean = tasks.ae_reconstruct(model, params, x)
        mse = ((clean - x) ** 2).reshape(16, -1).mean(-1)
        np.testing.assert_allclose(metrics["mse"], mse, rtol=1e-4)
        np.testing.assert_allclose(metrics["psnr"], 10 * np.log10(1 / mse), rtol=1e-4)
        if variant == "masked":
            assert np.all(metrics["masked_recon"] < metrics["all_recon"])
            np.testing.assert_array_equal(metrics["loss"], metrics["masked_recon"])
        if variant == "contractive":
            np.testing.assert_allclose(metrics["loss"], metrics["recon"] + 0.5 * metrics["penalty"], rtol=1e-5)
        if variant == "denoising":
            assert np.all(metrics["noisy_psnr"] < 15)  # std 0.5 noise is heavy


def test_mse_loss_with_linear_output_is_the_squared_error_of_the_output(mnist_small):
    config = tasks.AEConfig(hidden=(), latent_dim=3, loss="mse", output="linear")
    model, task = tasks.ae_task(config, mnist_small.image_shape)
    params = task.init_params(jax.random.key(0))
    batch = _batch(mnist_small, 4)
    out, _ = _apply(model, params, batch["x"])
    loss, metrics = task.loss_fn(params, batch, jax.random.key(1), 0)
    np.testing.assert_allclose(
        loss, np.mean(np.sum((np.asarray(out) - np.asarray(batch["x"])) ** 2, (1, 2, 3))), rtol=1e-5
    )
    images = tasks.ae_decode(model, params, tasks.ae_encode(model, params, np.asarray(batch["x"])), "linear")
    np.testing.assert_allclose(images, out, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "variant, extra",
    [
        ("plain", {}),
        ("denoising", dict(noise="salt_and_pepper", noise_rate=0.2)),
        ("masked", dict(mask_ratio=0.4, patch_size=4)),
        ("contractive", dict(contractive_weight=0.1)),
        ("plain", dict(arch="conv", channels=(4, 8), upsampling="unpool", learning_rate=3e-3)),
    ],
)
def test_a_few_epochs_lower_the_test_loss(mnist_small, tmp_path, variant, extra):
    config = tasks.AEConfig(
        variant=variant,
        hidden=(64,),
        latent_dim=8,
        epochs=3,
        batch_size=64,
        workdir=str(tmp_path),
        progress=False,
        **extra,
    )
    config.validate()
    model, task = tasks.ae_task(config, mnist_small.image_shape)
    init = task.init_params(jax.random.split(jax.random.key(0), 3)[0])
    test = {"x": jnp.asarray(mnist_small.x_test)}
    headline = tasks.AE_HEADLINE[variant]
    before = {k: float(jnp.mean(v)) for k, v in task.eval_fn(init, test, evaluate.eval_key()).items()}
    result = runner.train(config, task, mnist_small)
    after = {k: v["mean"] for k, v in result.summary["test"].items()}
    assert after["loss"] < 0.8 * before["loss"], (before, after)
    assert after[headline] > before[headline] + 1.0, (headline, before, after)  # dB


def test_experiment_writes_outputs_and_rejects_bad_flags(tmp_path, capsys, monkeypatch, mnist_small):
    monkeypatch.setattr(runner, "load_data", lambda config: mnist_small)
    workdir = str(tmp_path / "run")
    ae_experiment.main(
        [
            "--variant",
            "masked",
            "--epochs",
            "1",
            "--hidden",
            "32",
            "--workdir",
            workdir,
            "--no-progress",
            "--batch-size",
            "64",
        ]
    )
    for name in (
        "config.json",
        "metrics.jsonl",
        "summary.json",
        "reconstructions.png",
        "loss_curves.png",
        "psnr_curves.png",
    ):
        assert os.path.exists(os.path.join(workdir, name)), name
    with open(os.path.join(workdir, "summary.json")) as f:
        summary = json.load(f)
    assert {"inpaint_psnr", "masked_recon", "all_recon", "psnr", "mse"} <= set(summary["test"])
    assert summary["figures"] == ["reconstructions.png", "loss_curves.png", "psnr_curves.png"]
    assert "inpainting PSNR on the masked region" in capsys.readouterr().out  # the result line, on stdout
    with pytest.raises(SystemExit) as exit_info:
        ae_experiment.main(["--mask-ratio", "0", "--workdir", workdir])
    assert exit_info.value.code == 2
    assert "--mask-ratio must be a fraction strictly between 0 and 1, got 0.0" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ae_experiment.main(
            ["--variant", "masked", "--patch-size", "40", "--workdir", str(tmp_path / "fresh"), "--epochs", "1"]
        )
    assert "error: --patch-size must be at most 28 for 28x28 images, got 40" in capsys.readouterr().err
