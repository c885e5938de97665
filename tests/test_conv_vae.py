"""The convolutional VAE: the faces128 preset's layer shapes, its loss, config errors, a short training run."""

import dataclasses
import math
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import runner
from vae_jax.cli import parse_config
from vae_jax.errors import ConfigError
from vae_jax.models.vae import init_params
from vae_jax.tasks.conv_vae import ConvVAEConfig, build_conv_vae, conv_vae_task


def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: a.shape, tree)


def test_faces128_preset_layer_shapes():
    model = build_conv_vae(ConvVAEConfig(preset="faces128"), (128, 128, 3))
    params = jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))
    shapes = _shapes(params)
    assert shapes["encoder"]["fc1"]["kernel"] == (1024, 64)  # mean head: 1024 -> 64
    assert shapes["encoder"]["fc2"]["kernel"] == (1024, 64)  # log-variance head
    assert shapes["decoder"]["fc3"]["kernel"] == (64, 1024)  # back up: 64 -> 1024
    x = jax.ShapeDtypeStruct((16, 128, 128, 3), jnp.float32)
    flat = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, method=lambda m, x: m.encoder(x)), params, x)
    out, mean, logvar, z = jax.eval_shape(lambda p, x: model.apply({"params": p}, x, jax.random.key(1)), params, x)
    chex.assert_shape([mean, logvar, z], (16, 64))
    chex.assert_shape(out, (16, 128, 128, 3))
    chex.assert_shape(flat, [(16, 64), (16, 64)])


def test_faces128_loss_is_summed_squared_error_plus_kl_plus_constant():
    # The preset's likelihood settings on a small colour model (the 128x128 forward pass is slow on CPU).
    resolved = ConvVAEConfig(preset="faces128").resolved()
    config = ConvVAEConfig(
        likelihood=resolved.likelihood, decoder_logvar=resolved.decoder_logvar, channels=(4, 8), hidden=0, latent_dim=6
    )
    model, task = conv_vae_task(config, (32, 32, 3))
    params = init_params(model, jax.random.key(0))
    x = jax.random.uniform(jax.random.key(1), (2, 32, 32, 3))
    key = jax.random.key(2)
    got = jax.jit(task.eval_fn)(params, {"x": x}, key)
    out, mean, logvar, _ = jax.jit(model.apply)({"params": params}, x, key)
    sse = np.square(np.asarray(x, np.float64) - np.asarray(jax.nn.sigmoid(out), np.float64)).sum(axis=(1, 2, 3))
    kl = 0.5 * np.sum(np.exp(logvar) + np.square(mean) - 1 - logvar, axis=-1)  # summed over the latent dims
    d = 32 * 32 * 3
    np.testing.assert_allclose(got["neg_elbo"], sse + kl + 0.5 * d * math.log(math.pi), rtol=1e-5)


def test_preset_refuses_other_images_and_other_architecture_flags():
    with pytest.raises(ConfigError, match=r"--preset faces128 needs 128x128x3 images.*got 28x28x1"):
        build_conv_vae(ConvVAEConfig(preset="faces128"), (28, 28, 1))
    with pytest.raises(SystemExit):
        parse_config(ConvVAEConfig, ["--preset", "faces128", "--latent-dim", "8"])
    with pytest.raises(ConfigError, match="--latent-dim is set by --preset faces128"):
        ConvVAEConfig(preset="faces128", latent_dim=8).validate()
    with pytest.raises(ConfigError, match="--channels"):
        build_conv_vae(ConvVAEConfig(channels=(8, 8, 8, 8, 8, 8)), (28, 28, 1))
    with pytest.raises(ConfigError, match="--iwae-k"):
        ConvVAEConfig(iwae_k=5, beta=2.0).validate()
    with pytest.raises(ConfigError, match="--beta-warmup-steps"):
        ConvVAEConfig(beta_schedule="linear").validate()
    resolved = ConvVAEConfig(preset="faces128").resolved()
    assert (resolved.latent_dim, resolved.likelihood, resolved.decoder_logvar) == (64, "gaussian", math.log(0.5))


@pytest.mark.parametrize(
    "likelihood,channels", [("bernoulli", 1), ("gaussian_pixel_var", 2), ("gaussian_shared_var", 2)]
)
def test_decoder_output_channels_follow_the_likelihood(likelihood, channels):
    model = build_conv_vae(ConvVAEConfig(likelihood=likelihood, channels=(4, 8), hidden=0, latent_dim=3), (28, 28, 1))
    params = jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))
    out = jax.eval_shape(lambda p: model.apply({"params": p}, jnp.zeros((2, 3)), method=model.decode), params)
    assert out.shape == (2, 28, 28, channels)


def test_an_unknown_likelihood_is_refused_when_the_model_is_built():
    model = build_conv_vae(ConvVAEConfig(channels=(4, 8), hidden=0, latent_dim=3), (28, 28, 1))
    with pytest.raises(ValueError, match="likelihood must be one of .*got 'laplace'"):
        init_params(dataclasses.replace(model, likelihood="laplace"), jax.random.key(0))


def test_short_training_lowers_the_elbo_and_logs_the_train_test_gap(mnist_small, tmp_path):
    config = ConvVAEConfig(
        channels=(8, 16),
        hidden=32,
        latent_dim=4,
        epochs=2,
        batch_size=64,
        learning_rate=3e-3,
        workdir=str(tmp_path / "run"),
        progress=False,
    )
    model, task = conv_vae_task(config, mnist_small.image_shape)
    before = jax.jit(task.eval_fn)(
        init_params(model, jax.random.key(config.seed)), {"x": mnist_small.x_test}, jax.random.key(0)
    )
    result = runner.train(config, task, mnist_small, train_eval_examples=128)
    assert result.history[-1]["test_neg_elbo"] < float(np.mean(before["neg_elbo"])) - 40
    for line in result.history:
        assert {"train_eval_neg_elbo", "train_eval_recon", "train_eval_kl", "test_neg_elbo"} <= set(line)
    # Seen images fit at least about as well as unseen ones.
    assert result.history[-1]["train_eval_neg_elbo"] < result.history[-1]["test_neg_elbo"] + 20


def test_experiment_end_to_end(tmp_path, small_npz, capsys, monkeypatch):
    import json
    import os

    from experiments import conv_vae as conv_vae_exp
    from vae_jax import data

    # The figures and analyses read at most ANALYSIS_TRAIN_EXAMPLES training images: never the whole split.
    monkeypatch.setattr(data.dataset, "ANALYSIS_TRAIN_EXAMPLES", 300)
    monkeypatch.setattr(data.Dataset, "x_train", property(lambda self: pytest.fail("whole training split converted")))

    workdir = str(tmp_path / "run")
    args = [
        "--dataset",
        small_npz,
        "--epochs",
        "1",
        "--channels",
        "4,8",
        "--hidden",
        "16",
        "--latent-dim",
        "3",
        "--batch-size",
        "128",
        "--train-eval-examples",
        "64",
        "--mixture-components",
        "2",
        "--tsne-points",
        "60",
        "--workdir",
        workdir,
        "--no-progress",
    ]
    conv_vae_exp.main(args)
    out, err = capsys.readouterr()  # the result line on stdout, the logs on stderr
    result_line, data_line = out.splitlines()
    assert result_line.startswith("test neg-ELBO ") and result_line.endswith(f"outputs in {workdir}")
    assert data_line.startswith(f"data: {small_npz} (") and "data: " in err
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    for name in [
        "reconstructions.png",
        "train_test_gap.png",
        "samples.png",
        "tsne.png",
        "mixture_samples.png",
        "kl_per_dim.png",
    ]:
        assert name in summary["figures"] and os.path.isfile(os.path.join(workdir, name)), name
    diag = summary["diagnostics"]
    assert len(diag["mean_kl_per_dim"]) == 3 and 0 <= diag["mutual_information"] <= diag["mutual_information_max"] + 0.1
    assert {"prior", "mixture"} <= set(summary["prior_vs_mixture"])
    assert "mean_max_prob" in summary["prior_vs_mixture"]["mixture"]
    line = json.loads(open(os.path.join(workdir, "metrics.jsonl")).readline())
    assert {"train_eval_neg_elbo", "test_neg_elbo"} <= set(line)
    # A rerun on the finished checkpoint reuses the summary and figures the report wrote for it.
    assert conv_vae_exp.main(args) == json.loads(json.dumps(summary))
    rerun_out, rerun_err = capsys.readouterr()
    assert "reusing" in rerun_err and rerun_out == out
    assert json.load(open(os.path.join(workdir, "summary.json"))) == summary
    with pytest.raises(SystemExit):
        conv_vae_exp.main(["--dataset", small_npz, "--preset", "faces128", "--workdir", str(tmp_path / "f")])
    assert "--preset faces128 trains on colour images" in capsys.readouterr().err  # digits: resized, but gray


def _photos(folder, count, mode, side=200):
    """``count`` random ``side`` x ``side`` PNGs (``mode`` RGB or L) in ``folder``; returns their paths."""
    from PIL import Image

    folder.mkdir()
    rng = np.random.default_rng(21)
    shape = (side, side, 3) if mode == "RGB" else (side, side)
    paths = [str(folder / f"{i}.png") for i in range(count)]
    for path in paths:
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return paths


def test_faces128_resizes_a_folder_of_200px_photos_to_128(tmp_path, capsys):
    """The preset sets --image-size 128: 200x200 photos are resized (PIL bicubic, as computed here) and the
    model takes them; the log says so."""
    from PIL import Image

    paths = _photos(tmp_path / "photos", 5, "RGB")
    config = parse_config(
        ConvVAEConfig,
        [
            "--preset",
            "faces128",
            "--dataset",
            f"folder:{tmp_path / 'photos'}",
            "--batch-size",
            "2",
            "--workdir",
            str(tmp_path / "run"),
        ],
    ).resolved()
    assert config.image_size == 128
    dataset = runner.load_data(config)
    assert "images of 200x200 are resized to 128x128" in capsys.readouterr().err
    expected = sorted(
        np.asarray(Image.open(p).convert("RGB").resize((128, 128), Image.Resampling.BICUBIC)).tobytes() for p in paths
    )
    got = sorted(im.tobytes() for im in np.concatenate([dataset.train_pixels, dataset.test_pixels]))
    assert got == expected
    model = build_conv_vae(config, dataset.image_shape)
    params = jax.eval_shape(lambda k: init_params(model, k), jax.random.key(0))
    mean = jax.eval_shape(
        lambda p: model.apply({"params": p}, jnp.zeros((1, 128, 128, 3)), method=model.encode)[0], params
    )
    assert mean.shape == (1, 64)
    assert not os.path.exists(tmp_path / "run")
    ConvVAEConfig(preset="faces128", image_size=128).validate()  # saying what the preset says is fine


def test_faces128_refuses_a_contradicting_image_size_before_loading_and_grayscale_photos(tmp_path, capsys):
    from experiments import conv_vae as conv_vae_exp

    with pytest.raises(SystemExit) as stop:  # the folder does not exist: nothing is loaded before the error
        conv_vae_exp.main(
            [
                "--preset",
                "faces128",
                "--image-size",
                "64",
                "--dataset",
                f"folder:{tmp_path / 'none'}",
                "--workdir",
                str(tmp_path / "run"),
            ]
        )
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        "error: --image-size 64 contradicts --preset faces128, which trains on 128x128 images: leave --image-size "
        "out (the preset resizes and centre-crops the images to 128x128), or use --preset none (see --help)"
    )
    assert not os.path.exists(tmp_path / "run")
    _photos(tmp_path / "gray", 4, "L")
    spec = f"folder:{tmp_path / 'gray'}"
    with pytest.raises(SystemExit) as stop:
        conv_vae_exp.main(
            ["--preset", "faces128", "--dataset", spec, "--batch-size", "2", "--workdir", str(tmp_path / "run")]
        )
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: --preset faces128 trains on colour images; --dataset {spec} holds grayscale ones (128x128x1): use "
        "a folder of colour photos, or --preset none for grayscale images"
    )
    assert not os.path.exists(tmp_path / "run")
