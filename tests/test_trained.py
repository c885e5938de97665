"""vae_jax.trained (load_run, export_run, TrainedModel) and the generate / reconstruct / encode commands.

Tiny runs of every family are trained once for the session (conftest's ``tiny_runs``: 1 epoch on 512
embedded digits). Each verb is compared with an independent computation: the model applied directly
(reconstructions), a NumPy nearest-code search (VQ-VAE codes), experiments.evaluate's numbers for the same
key, the classifier rate experiments.cvae stored in summary.json.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings

import jax
import numpy as np
import pytest
from scipy.special import expit

from experiments import cvae as cvae_exp
from experiments import encode as encode_exp
from experiments import evaluate as evaluate_exp
from experiments import generate as generate_exp
from experiments import reconstruct as reconstruct_exp
from vae_jax import classifier as classifier_lib
from vae_jax import data as data_lib
from vae_jax import evaluate, export_run, load_run
from vae_jax import workdir as workdir_lib
from vae_jax.errors import ConfigError
from vae_jax.tasks import cvae, vae
from vae_jax.tasks import prior as prior_lib
from vae_jax.tasks import vqvae as vq

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture()
def runs(tiny_runs):
    """conftest's ``tiny_runs``: ``(root of the workdirs, npz: spec, Dataset)``, trained once for the session."""
    return tiny_runs


def _workdir(runs, kind):
    return os.path.join(runs[0], kind)


def _labels_for(kind, dataset):
    return dataset.y_test if kind == "cvae" else None


def _one_line_error(excinfo, *words):
    message = str(excinfo.value)
    assert "\n" not in message
    for word in words:
        assert word in message


# --- import weight ------------------------------------------------------------------------------


def test_load_run_imports_neither_tensorflow_nor_orbax_before_use(runs):
    code = (
        "import sys, jax, vae_jax\n"
        "from vae_jax import load_run, export_run, TrainedModel\n"
        "assert 'orbax' not in ' '.join(sys.modules), 'orbax at import'\n"
        f"run = load_run({_workdir(runs, 'vae')!r})\n"
        "assert run.sample(2, jax.random.key(0)).shape == (2, 28, 28, 1)\n"
        "assert 'tensorflow' not in sys.modules, 'tensorflow imported'\n"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "using seed 0" in result.stderr  # a run of two seeds says which one it picked


def test_models_expose_every_family():
    from vae_jax import models

    for name in ("VAE", "ConvVAE", "CVAE", "HVAE", "VQVAE", "PixelCNN", "AutoEncoder"):
        assert isinstance(getattr(models, name), type)


# --- evaluate: the numbers experiments.evaluate reports -----------------------------------------


@pytest.mark.parametrize("kind", ["vae", "conv_vae", "cvae", "hvae"])
def test_evaluate_equals_experiments_evaluate_for_the_same_key(runs, kind, tmp_path):
    """Interface consistency, not maths: ``load_run(...).evaluate`` and the ``experiments.evaluate`` command both
    end in ``vae_jax.evaluate.evaluate_runs``, so for the same key they must report identical numbers. The
    numbers themselves are checked against independent computations in test_evaluate.py (the IWAE log-weight
    against a direct ELBO) and test_evaluate_families.py (the KL against its NumPy closed form)."""
    workdir, dataset = _workdir(runs, kind), runs[2]
    reported = evaluate_exp.main(
        [
            "--workdir",
            workdir,
            "--iwae-k",
            "4",
            "--k-chunk",
            "3",
            "--batch-size",
            "64",
            "--eval-seed",
            "7",
            "--out",
            str(tmp_path / "eval.json"),
        ]
    )
    reported = reported["per_seed"][0] if "per_seed" in reported else reported
    run = load_run(workdir)
    got = run.evaluate(
        dataset.test_pixels, labels=_labels_for(kind, dataset), iwae_k=4, key=7, batch_size=64, k_chunk=3
    )
    assert got["key"] == "seed 7" and got["n"] == 128
    for name in ("neg_elbo", "recon", "kl", "iwae_nll", "bits_per_dim", "active_units", "active_units_per_layer"):
        assert got[name] == reported[name], name
    # The default key is the fixed evaluation key of summary.json's test metrics.
    default = run.evaluate(dataset.test_pixels, labels=_labels_for(kind, dataset))
    summary = json.load(open(os.path.join(workdir, "summary.json")))
    assert default["key"].startswith("vae_jax.evaluate.eval_key()") and "iwae_nll" not in default
    np.testing.assert_allclose(default["neg_elbo"], summary["test"]["neg_elbo"]["per_seed"][0], rtol=1e-5)


def test_evaluate_refuses_labels_outside_the_trained_classes_naming_the_data(runs, tmp_path, capsys):
    x = runs[2].x_test[:20]
    np.savez(tmp_path / "twelves.npz", x=x, y=np.full(len(x), 12))
    for command in (evaluate_exp, reconstruct_exp):
        with pytest.raises(SystemExit) as stop:
            command.main(["--workdir", _workdir(runs, "cvae"), "--dataset", f"npz:{tmp_path / 'twelves.npz'}"])
        (line,) = capsys.readouterr().err.splitlines()
        assert stop.value.code == 2 and line.startswith(f"error: --dataset npz:{tmp_path / 'twelves.npz'}: ")
        assert "labels run from 12 to 12; the conditional VAE was trained on classes 0 to 9" in line
    assert os.listdir(tmp_path) == ["twelves.npz"]


def test_experiments_evaluate_reads_an_exported_file_as_the_workdir_seed_it_holds(runs, tmp_path, capsys):
    """The exported file's one seed gets the numbers its workdir's evaluation gives that seed (read through
    Orbax's checkpoint there, through the file here); ``--iwae-k 0`` skips the bound, as ``evaluate(iwae_k=0)``."""
    workdir = _workdir(runs, "vae")
    export_run(workdir, str(tmp_path / "vae.msgpack"), seed=1)
    flags = ["--iwae-k", "3", "--eval-seed", "5"]
    whole = evaluate_exp.main(["--workdir", workdir, *flags, "--out", str(tmp_path / "whole.json")])
    single = evaluate_exp.main(["--workdir", str(tmp_path / "vae.msgpack"), *flags])
    assert single["checkpoint"]["path"] == str(tmp_path / "vae.msgpack") and "per_seed" not in single
    assert json.load(open(tmp_path / "vae.eval.json"))["neg_elbo"] == single["neg_elbo"]  # beside the file
    seed1 = whole["per_seed"][1]
    assert seed1["seed"] == 1 and single["checkpoint_epoch"] == whole["checkpoint_epoch"]
    for name in ("neg_elbo", "recon", "kl", "iwae_nll", "bits_per_dim"):  # one seed vmapped, or two: float rounding
        np.testing.assert_allclose(single[name], seed1[name], rtol=1e-6, err_msg=name)
    assert single["active_units_per_layer"] == seed1["active_units_per_layer"]
    capsys.readouterr()
    unbounded = evaluate_exp.main(["--workdir", str(tmp_path / "vae.msgpack"), "--iwae-k", "0", "--eval-seed", "5"])
    assert "iwae_nll" not in unbounded and unbounded["neg_elbo"] == single["neg_elbo"]
    assert "IWAE" not in capsys.readouterr().out


# --- reconstruct / encode / sample against independent computations ------------------------------


def _direct_reconstruction(run, x, y):
    apply = lambda *args, **kw: np.asarray(run.model.apply(run.variables, *args, **kw))  # noqa: E731
    if run.family in ("vae", "conv_vae", "hvae"):
        return expit(apply(apply(x, method=run.model.encode)[0], method=run.model.decode))
    if run.family == "cvae":
        z = apply(x, y, method=run.model.encode)[0]
        return expit(apply(z, y, method=run.model.decode))
    return expit(np.asarray(run.model.apply(run.variables, x)[0]))  # vqvae, autoencoder: the whole model


@pytest.mark.parametrize("kind", ["vae", "conv_vae", "cvae", "hvae", "vqvae", "autoencoder"])
def test_reconstruct_equals_the_model_applied_directly(runs, kind):
    run, dataset = load_run(_workdir(runs, kind)), runs[2]
    x, y = dataset.x_test[:20], _labels_for(kind, dataset)
    y = None if y is None else y[:20]
    recon = run.reconstruct(x, labels=y)
    assert recon.shape == x.shape and recon.dtype == np.float32
    np.testing.assert_allclose(recon, _direct_reconstruction(run, x, y), atol=2e-6)
    # uint8 pixels are converted as the training data is
    np.testing.assert_array_equal(
        run.reconstruct(dataset.test_pixels[:20], labels=y),
        run.reconstruct(data_lib.pixels_to_float(dataset.test_pixels[:20]), labels=y),
    )


@pytest.mark.parametrize("kind", ["vae", "conv_vae", "cvae", "hvae", "vqvae"])
def test_sample_is_a_pure_function_of_the_key(runs, kind):
    run = load_run(_workdir(runs, kind))
    labels = 3 if kind == "cvae" else None
    a = run.sample(6, jax.random.key(1), labels=labels)
    b = run.sample(6, jax.random.key(1), labels=labels)
    c = run.sample(6, jax.random.key(2), labels=labels)
    assert a.shape == (6, 28, 28, 1) and 0 <= a.min() and a.max() <= 1
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    if kind != "vqvae":  # a lower temperature draws latents nearer the prior's mean: other images
        assert not np.array_equal(a, run.sample(6, jax.random.key(1), labels=labels, temperature=0.5))


def test_encode_decode_of_the_gaussian_families(runs):
    dataset = runs[2]
    run = load_run(_workdir(runs, "hvae"))
    layers = run.encode(dataset.x_test[:5])
    assert layers["z1"].shape == (5, 3) and layers["z2"].shape == (5, 2)
    np.testing.assert_allclose(run.decode(layers), run.reconstruct(dataset.x_test[:5]), atol=1e-6)
    run = load_run(_workdir(runs, "cvae"))
    x, y = dataset.x_test[:5], dataset.y_test[:5]
    z = run.encode(x, labels=y)
    mean = np.asarray(run.model.apply(run.variables, x, y, method=run.model.encode)[0])
    np.testing.assert_allclose(z, mean, atol=1e-6)


def test_cvae_samples_get_the_class_rate_summary_reports(runs):
    workdir, dataset = _workdir(runs, "cvae"), runs[2]
    run = load_run(workdir)
    control = json.load(open(os.path.join(workdir, "summary.json")))["class_control"]
    key = jax.random.key(run.config.seed)  # experiments.cvae: samples from fold_in(key, 1), classifier fold_in(key, 2)
    labels = np.repeat(np.arange(run.model.num_classes), cvae_exp.SAMPLES_PER_CLASS)
    samples = run.sample(len(labels), jax.random.fold_in(key, 1), labels=labels)
    judge = classifier_lib.train_classifier(
        dataset.x_train,
        dataset.y_train,
        dataset.x_test,
        dataset.y_test,
        run.model.num_classes,
        jax.random.fold_in(key, 2),
    )
    measured = classifier_lib.requested_class_fraction(judge, samples, labels, run.model.num_classes)
    assert measured["overall"] == control["requested_class_fraction"]


def test_vqvae_codes_are_the_nearest_codebook_entries(runs):
    run, x = load_run(_workdir(runs, "vqvae")), runs[2].x_test[:16]
    z_e = np.asarray(run.model.apply(run.variables, x, method=run.model.encode), np.float64)  # [N, 7, 7, D]
    codebook = np.asarray(run.params["codebook"], np.float64)  # [K, D]
    distances = ((z_e[..., None, :] - codebook) ** 2).sum(-1)  # [N, 7, 7, K]
    indices = run.encode(x)
    assert indices.dtype == np.int32 and indices.shape == (16, 7, 7)
    np.testing.assert_array_equal(indices, distances.argmin(-1))
    np.testing.assert_allclose(run.decode(indices), run.reconstruct(x), atol=1e-6)


def test_vqvae_samples_through_its_prior_or_warns_without_one(runs, tmp_path, capsys):
    run = load_run(_workdir(runs, "vqvae"))
    _, prior_model, prior_params = run.prior
    key = jax.random.key(5)
    codes = prior_lib.sample_codes(prior_model, prior_params, key, 50, run.model.grid_shape)
    np.testing.assert_array_equal(run.sample(50, key), vq.decode_indices(run.model, run.params, codes))
    uniform = vq.uniform_code_grids(key, 50, run.model.grid_shape, run.model.num_codes)
    assert (
        prior_lib.code_nll(prior_model, prior_params, codes).mean()
        < prior_lib.code_nll(prior_model, prior_params, uniform).mean()
    )
    bare = tmp_path / "vq"
    shutil.copytree(_workdir(runs, "vqvae"), bare, ignore=shutil.ignore_patterns("prior"))
    with pytest.warns(UserWarning, match="no learned prior"):
        images = load_run(str(bare)).sample(4, key)
    assert images.shape == (4, 28, 28, 1)
    # The command line says it in one line, and that the temperature was not used.
    generate_exp.main(["--workdir", str(bare), "--n", "4", "--temperature", "0.5", "--out", str(tmp_path / "s.png")])
    captured = capsys.readouterr()
    (warning,) = [line for line in captured.err.splitlines() if "no learned prior" in line]
    assert (
        warning.startswith("warning: ") and "Warning" not in captured.err and "temperature 0.5 ignored" in captured.out
    )


# --- export ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["vqvae", "cvae"])
def test_export_round_trip_is_bit_exact(runs, kind, tmp_path):
    path = str(tmp_path / "model.msgpack")
    assert export_run(_workdir(runs, kind), path) == path
    original, restored = load_run(_workdir(runs, kind)), load_run(path)
    trees = [(original.params, restored.params)]
    if kind == "vqvae":
        trees += [(original.model_state, restored.model_state), (original.prior[2], restored.prior[2])]
        assert original.model_state["ema"]  # the EMA codebook statistics travel too
    for a, b in trees:
        assert jax.tree_util.tree_structure(a) == jax.tree_util.tree_structure(b)
        for leaf_a, leaf_b in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
            assert np.asarray(leaf_a).dtype == np.asarray(leaf_b).dtype
            np.testing.assert_array_equal(np.asarray(leaf_a), np.asarray(leaf_b))
    assert (restored.config, restored.family, restored.epoch, restored.seed, restored.image_shape) == (
        original.config,
        original.family,
        original.epoch,
        original.seed,
        original.image_shape,
    )
    labels = 3 if kind == "cvae" else None
    np.testing.assert_array_equal(original.sample(4, 0, labels=labels), restored.sample(4, 0, labels=labels))


def test_damaged_truncated_or_foreign_files_give_one_line(runs, tmp_path):
    path = tmp_path / "model.msgpack"
    export_run(_workdir(runs, "vae"), str(path), seed=1)
    assert load_run(str(path)).seed == 1
    blob = path.read_bytes()
    damaged = bytearray(blob)
    damaged[len(blob) // 2] ^= 0xFF
    cases = {"damaged": bytes(damaged), "truncated": blob[: len(blob) // 2], "foreign": b"\x89PNG not a model"}
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(ConfigError) as excinfo:
            load_run(str(tmp_path / name))
        _one_line_error(excinfo, str(tmp_path / name))
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ConfigError) as excinfo:
        load_run(str(tmp_path / "other.npz"))
    _one_line_error(excinfo, "export_run")


# --- bad arguments ------------------------------------------------------------------------------


def test_bad_arguments_name_themselves(runs):
    run, dataset = load_run(_workdir(runs, "cvae")), runs[2]
    key = jax.random.key(0)
    cases = [
        (lambda: run.sample(0, key, labels=3), "n must be a positive integer"),
        (lambda: run.sample(2, key, labels=3, temperature=0), "temperature"),
        (lambda: run.sample(2, key, labels=3, temperature=-1.0), "temperature"),
        (lambda: run.sample(2, key, labels=10), "[0, 10)"),
        (lambda: run.sample(2, key, labels=-1), "[0, 10)"),
        (lambda: run.sample(2, key, labels=3.5), "integers"),
        (lambda: run.sample(2, key, labels=[1, 2, 3]), "one int or 2 ints"),
        (lambda: run.sample(2, key), "needs labels"),
        (lambda: run.reconstruct(dataset.x_test[:2, :, :, 0], labels=[1, 2]), "x must be images [N, 28, 28, 1]"),
        (lambda: run.reconstruct(np.zeros((2, 32, 32, 1)), labels=[1, 2]), "x must be images"),
        (lambda: run.reconstruct(dataset.x_test[:2] * 255.0, labels=[1, 2]), "in [0, 1] (or uint8"),
        (lambda: run.evaluate(dataset.x_test - 0.5, labels=dataset.y_test), "got values in [-0.5, 0.5]"),
        (lambda: run.encode(np.full((2, 28, 28, 1), np.nan), labels=[1, 2]), "got 1568 NaN or infinite"),
        (lambda: run.encode(np.zeros((2, 28, 28, 1), np.uint16), labels=[1, 2]), "got uint16"),
        (lambda: run.decode(np.zeros((2, 5)), labels=[1, 2]), "z must be latents [N, 2]"),
        (lambda: run.evaluate(dataset.x_test, labels=dataset.y_test, iwae_k=-1), "iwae_k"),
        (lambda: load_run(_workdir(runs, "vae")).reconstruct(dataset.x_test[:2], labels=[1, 2]), "not conditional"),
        (lambda: load_run(_workdir(runs, "autoencoder")).sample(2, key), "no prior"),
        (lambda: load_run(_workdir(runs, "autoencoder")).evaluate(dataset.x_test, iwae_k=5), "no likelihood"),
        (lambda: load_run(_workdir(runs, "vae"), seed=5), "[0, 1]"),
        (lambda: load_run(_workdir(runs, "vae"), epoch=9), "--epoch 9"),
        (lambda: load_run(runs[0]), "holds no run itself"),
        (lambda: load_run(os.path.join(runs[0], "nowhere")), "no such file"),
    ]
    vq = load_run(_workdir(runs, "vqvae"))
    (h, w), k = vq.model.grid_shape, vq.model.num_codes
    cases.append((lambda: vq.decode(np.full((2, h, w), k)), f"got codes from {k} to {k}"))
    cases.append((lambda: vq.decode(np.zeros((2, h + 1, w), np.int32)), f"got shape [2, {h + 1}, {w}]"))
    for call, words in cases:
        with pytest.raises(ValueError) as excinfo:
            call()
        _one_line_error(excinfo, words)
    assert load_run(_workdir(runs, "vae"), seed=1, epoch=1).seed == 1


def test_library_traps_params_or_variables_and_class_labels(runs):
    run, x = load_run(_workdir(runs, "vae")), runs[2].x_test[:50]
    parts = evaluate.gaussian_vae_parts(run.model, run.task.eval_fn, run.config.likelihood)

    def evaluated(params):
        return evaluate.evaluate_runs(parts, jax.tree_util.tree_map(lambda a: a[None], params), {"x": x}, iwae_k=3)

    assert evaluated(run.variables) == evaluated(run.params)
    np.testing.assert_array_equal(
        vae.reconstruct(run.model, run.variables, x), vae.reconstruct(run.model, run.params, x)
    )
    model = load_run(_workdir(runs, "cvae"))
    for bad in ([10], [-1], [3.5]):
        with pytest.raises(ValueError, match="labels"):
            cvae.sample_class(model.model, model.params, jax.random.key(0), np.asarray(bad))


def test_a_linear_ae_workdir_says_why_it_cannot_be_loaded(tmp_path):
    from vae_jax import linear_ae

    with open(tmp_path / "config.json", "w") as f:
        json.dump(workdir_lib.config_record(linear_ae.LinearAEConfig(workdir=str(tmp_path))), f)
    with pytest.raises(ConfigError) as excinfo:
        load_run(str(tmp_path))
    _one_line_error(excinfo, "linear autoencoder", "mean image")


# --- the commands ---------------------------------------------------------------------------------


def test_generate_writes_the_grid_and_the_samples(runs, tmp_path, capsys):
    out = tmp_path / "threes.png"
    result = generate_exp.main(
        ["--workdir", _workdir(runs, "cvae"), "--n", "12", "--label", "3", "--key", "4", "--out", str(out)]
    )
    saved = np.load(tmp_path / "threes.npz")
    assert out.stat().st_size > 0 and saved["x"].shape == (12, 28, 28, 1) and set(saved["y"]) == {3}
    np.testing.assert_array_equal(saved["x"], load_run(_workdir(runs, "cvae")).sample(12, 4, labels=3))
    assert "12 samples" in capsys.readouterr().out
    result = generate_exp.main(
        ["--workdir", _workdir(runs, "cvae"), "--n", "5", "--labels", "3,7", "--out", str(tmp_path / "mix.png")]
    )
    assert result["y"].tolist() == [3, 3, 3, 7, 7]


def test_reconstruct_and_encode_commands(runs, tmp_path, capsys):
    spec, dataset = runs[1], runs[2]
    result = reconstruct_exp.main(
        ["--workdir", _workdir(runs, "vae"), "--dataset", spec, "--n", "4", "--out", str(tmp_path / "recon.png")]
    )
    x = dataset.x_test
    expected = np.mean((load_run(_workdir(runs, "vae")).reconstruct(x) - x) ** 2, axis=(1, 2, 3))
    np.testing.assert_allclose(result["errors"], expected, rtol=1e-6)
    line = capsys.readouterr().out
    assert "mean over the test split" in line and (tmp_path / "recon.png").stat().st_size > 0
    encode_exp.main(["--workdir", _workdir(runs, "hvae"), "--dataset", spec, "--out", str(tmp_path / "codes.npz")])
    codes = np.load(tmp_path / "codes.npz")
    assert codes["z1"].shape == (128, 3) and codes["z2"].shape == (128, 2)
    np.testing.assert_array_equal(codes["y"], dataset.y_test)


@pytest.mark.parametrize(
    "command, argv",
    [
        (generate_exp, ["--n", "0"]),
        (generate_exp, ["--temperature", "0"]),
        (generate_exp, ["--label", "3", "--labels", "3,7"]),
        (generate_exp, ["--labels", "3,x"]),
        (generate_exp, ["--out", "OUT.jpg"]),
        (generate_exp, ["--label", "10"]),
        (generate_exp, []),  # a conditional VAE needs labels
        (generate_exp, ["--seed", "3"]),
        (reconstruct_exp, ["--n", "0"]),
        (reconstruct_exp, ["--dataset", "mnist:nothing"]),
        (encode_exp, ["--out", "OUT.png"]),
    ],
)
def test_bad_command_lines_exit_2_with_one_line_and_write_nothing(runs, tmp_path, capsys, command, argv):
    argv = [a.replace("OUT", str(tmp_path / "out")) for a in argv]
    out = (
        []
        if any(a.startswith("--out") for a in argv)
        else ["--out", str(tmp_path / ("out.npz" if command is encode_exp else "out.png"))]
    )
    with pytest.raises(SystemExit) as exit_info:
        command.main(["--workdir", _workdir(runs, "cvae"), *argv, *out])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error:")
    assert not argv or argv[0] in err  # the line names the flag
    assert os.listdir(tmp_path) == []


def test_a_non_conditional_model_refuses_labels_on_the_command_line(runs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        generate_exp.main(["--workdir", _workdir(runs, "vae"), "--label", "3", "--out", str(tmp_path / "s.png")])
    assert exit_info.value.code == 2 and "not conditional" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


def test_no_warning_from_a_vqvae_with_its_prior(runs):
    """Loading a VQ-VAE with its PixelCNN prior and sampling raises no warning (warnings become errors here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run = load_run(_workdir(runs, "vqvae"))
        samples = run.sample(2, 0)
    assert samples.shape == (2, *run.image_shape) and np.all((samples >= 0) & (samples <= 1))
