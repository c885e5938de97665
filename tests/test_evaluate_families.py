"""experiments.evaluate end to end on a tiny run of every VAE family, and what it says about other workdirs."""

import json
import os

import jax
import numpy as np
import pytest

from experiments import evaluate as evaluate_exp
from vae_jax import data as data_lib
from vae_jax import runner
from vae_jax import workdir as workdir_lib
from vae_jax.tasks import autoencoder, conv_vae, cvae, vae


@pytest.fixture()
def family_runs(tiny_runs):
    """conftest's ``tiny_runs`` (trained once for the session): the root of the workdirs and the VAE families'
    training summaries (their summary.json)."""
    root = tiny_runs[0]
    return root, {
        kind: json.load(open(os.path.join(root, kind, "summary.json"))) for kind in ("vae", "conv_vae", "cvae", "hvae")
    }


@pytest.mark.parametrize("kind", ["vae", "conv_vae", "cvae", "hvae"])
def test_every_family_evaluates_to_the_closed_form_kl_and_reproduces_its_training_summary(family_runs, kind):
    """experiments.evaluate on each family's checkpoint. The maths is checked against independent computations:
    the KL term against its closed form in NumPy from the restored encoder (one-level Gaussian families; the
    HVAE's KL(q(z1|x) || p(z1|z2)) has none, so its two terms are checked to add up), neg-ELBO = recon + KL, and
    the IWAE bound below the ELBO. The comparison with summary.json is a reproducibility check, not a maths one:
    the command restores the checkpoint and evaluates it with the training run's fixed evaluation key, so it must
    give the numbers the training run recorded (a drift there means the restore or the config round trip broke)."""
    root, summaries = family_runs
    workdir = os.path.join(root, kind)
    result = evaluate_exp.main(["--workdir", workdir, "--iwae-k", "8", "--k-chunk", "3", "--batch-size", "64"])
    assert json.load(open(os.path.join(workdir, "eval.json"))) == json.loads(json.dumps(result))
    assert result["kind"] == kind and result["n"] == 128 and result["iwae_k"] == 8
    assert result["checkpoint"]["epoch"] == 1 and os.path.isdir(result["checkpoint"]["path"])
    # Same checkpoint, same evaluation key as the training run's last test evaluation: the same numbers.
    for name in ("neg_elbo", "recon", "kl"):
        np.testing.assert_allclose(result[name], summaries[kind]["test"][name]["mean"], rtol=1e-5)
    np.testing.assert_allclose(result["neg_elbo"], result["recon"] + result["kl"], rtol=1e-5)
    if kind != "hvae":  # the KL term against its closed form in NumPy, from the checkpoint's encoder
        np.testing.assert_allclose(result["kl"], _numpy_kl(workdir, kind), rtol=1e-4)
    assert result["iwae_nll"] < result["neg_elbo"]
    assert result["measure"].startswith("cross-entropy")  # gray-level digits under a Bernoulli decoder
    np.testing.assert_allclose(result["bits_per_dim"], result["iwae_nll"] / (784 * np.log(2)), rtol=1e-6)
    if kind == "hvae":
        assert set(result["latent_dims"]) == {"z1", "z2"}
        np.testing.assert_allclose(result["kl"], result["kl_z1"] + result["kl_z2"], rtol=1e-5)
    if kind == "vae":  # a run of seeds 0 and 1: each seed's numbers, and their mean
        assert [s["seed"] for s in result["per_seed"]] == [0, 1]
        for name in ("neg_elbo", "kl", "iwae_nll", "active_units"):
            np.testing.assert_allclose(result[name], np.mean([s[name] for s in result["per_seed"]]), rtol=1e-12)
    for seed_result in result.get("per_seed", [result]):
        assert seed_result["active_units"] == sum(seed_result["active_units_per_layer"].values())


def _numpy_kl(workdir, kind):
    """Mean over the test split of KL(N(mean, exp(logvar)) || N(0, I)) = sum_d (exp(lv) + mean^2 - 1 - lv) / 2,
    in float64 from the restored encoder's outputs; the mean over the seeds of a run of several (as
    experiments.evaluate reports them)."""
    from vae_jax import diagnostics

    config_cls, make_task = {
        "vae": (vae.VAEConfig, vae.vae_task),
        "conv_vae": (conv_vae.ConvVAEConfig, conv_vae.conv_vae_task),
        "cvae": (cvae.CVAEConfig, cvae.cvae_task),
    }[kind]
    config = workdir_lib.load_run_config(workdir, config_cls)
    dataset = data_lib.load_dataset(config.dataset)
    model, task = make_task(config, dataset.image_shape)
    _, state = runner.restore_state(config, task)
    kl = []
    for seed in range(len(config.seed_list())):
        params = jax.tree_util.tree_map(lambda a: np.asarray(a)[seed], state.params)  # noqa: B023
        if kind == "cvae":  # q(z|x, y): the encoder sees each test image's label
            moments = model.apply({"params": params}, dataset.x_test, dataset.y_test, method=model.encode)
        else:
            moments = diagnostics.encode_posteriors(model, params, dataset.x_test)
        mean, logvar = (np.asarray(a, np.float64) for a in moments)
        kl.append(np.mean(np.sum(0.5 * (np.exp(logvar) + mean**2 - 1.0 - logvar), axis=-1)))
    return np.mean(kl)


def test_a_parent_directory_lists_its_runs(family_runs, capsys):
    root, _ = family_runs
    with pytest.raises(SystemExit) as exit_info:
        evaluate_exp.main(["--workdir", root])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "holds no run itself" in err
    for kind in ("vae", "conv_vae", "cvae", "hvae"):
        assert f"{os.path.join(root, kind)} ({kind})" in err


def test_an_autoencoder_workdir_is_named_with_the_command_that_fits(tmp_path, capsys):
    config = autoencoder.AEConfig(workdir=str(tmp_path))
    with open(tmp_path / "config.json", "w") as f:
        json.dump(workdir_lib.config_record(config), f)
    with pytest.raises(SystemExit) as exit_info:
        evaluate_exp.main(["--workdir", str(tmp_path)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds an autoencoder run" in err and "python -m experiments.autoencoder" in err
    assert err.count("\n") == 1
