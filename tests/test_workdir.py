"""Workdirs never lose or misdescribe a run: refusals, --overwrite, records left alone, truthful messages,
results on stdout and logs on stderr, and the help text.

One small run is trained once per module; each test works on a copy of it.
"""

import dataclasses
import json
import os
import shutil

import jax.numpy as jnp
import numpy as np
import pytest

from experiments import evaluate as evaluate_exp
from experiments import vae as vae_exp
from vae_jax import data, errors, parallel, protocol, runner, tasks
from vae_jax import train as train_lib
from vae_jax import workdir as workdir_lib
from vae_jax.protocol import Task

SMALL = ["--hidden", "16", "--latent-dim", "2", "--batch-size", "64", "--checkpoint-every", "1"]


def run_vae(capsys, dataset, workdir, *flags):
    """Runs experiments.vae; returns (exit code, stdout, stderr)."""
    try:
        vae_exp.main(["--dataset", dataset, "--workdir", str(workdir), *SMALL, *flags])
        code = 0
    except SystemExit as exit_info:
        code = exit_info.code
    out, err = capsys.readouterr()
    return code, out, err


def snapshot(workdir):
    """Every file under ``workdir`` (relative path -> bytes)."""
    files = {}
    for root, _, names in os.walk(workdir):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, workdir)] = f.read()
    return files


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, mnist_small):
    """A finished 2-epoch run in a workdir, with an ``eval.json`` beside it; returns (npz spec, workdir)."""
    import numpy as np

    base = tmp_path_factory.mktemp("workdir")
    spec_path = base / "digits.npz"
    np.savez(
        spec_path,
        x_train=mnist_small.x_train,
        y_train=mnist_small.y_train,
        x_test=mnist_small.x_test,
        y_test=mnist_small.y_test,
    )
    workdir = base / "run"
    vae_exp.main(["--dataset", f"npz:{spec_path}", "--workdir", str(workdir), *SMALL, "--epochs", "2"])
    with open(workdir / "eval.json", "w") as f:
        json.dump({"checkpoint_epoch": 2, "neg_elbo": 123.0}, f)
    return f"npz:{spec_path}", workdir


@pytest.fixture()
def run_copy(trained_run, tmp_path):
    spec, workdir = trained_run
    copy = tmp_path / "run"
    shutil.copytree(workdir, copy)
    return spec, copy


def test_no_resume_on_a_run_is_refused_and_nothing_changes(capsys, run_copy):
    spec, workdir = run_copy
    before = snapshot(workdir)
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "2", "--no-resume")
    assert code == 2 and out == ""
    message = err.strip().splitlines()[-1]
    assert message.startswith(f"error: --no-resume: --workdir {workdir} holds a run trained for 2 epochs")
    # The safe path comes first, the destructive one names what it does.
    assert message.index("use another --workdir") < message.index("--overwrite")
    assert "replaced-" in message
    assert snapshot(workdir) == before


def test_overwrite_moves_the_old_run_aside_with_its_derived_files(capsys, run_copy):
    spec, workdir = run_copy
    before = snapshot(workdir)
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "1", "--no-resume", "--overwrite")
    assert code == 0, err
    assert "--overwrite: moved the previous run" in err
    (aside,) = [name for name in os.listdir(workdir) if name.startswith(workdir_lib.REPLACED_PREFIX)]
    assert snapshot(workdir / aside) == before  # every file of the old run, unchanged
    # Nothing of the old run is left beside the new one: no eval.json describing a model that is gone.
    assert not os.path.exists(workdir / "eval.json")
    assert workdir_lib.checkpoint_epochs(workdir) == [1]
    with open(workdir / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1]
    assert json.load(open(workdir / "summary.json"))["epochs"] == 1


def test_other_settings_are_refused_before_any_data_is_loaded(capsys, run_copy):
    _, workdir = run_copy
    # The dataset spec names a missing file: the workdir check must come first.
    code, out, err = run_vae(capsys, "npz:/no/such/file.npz", workdir, "--epochs", "2", "--latent-dim", "3")
    assert code == 2 and out == ""
    message = err.strip().splitlines()[-1]
    assert "holds a run with other settings" in message
    assert "--dataset npz:" in message and "--latent-dim 2 there, 3 here" in message
    assert message.index("use another --workdir") < message.index("--overwrite")


def test_fewer_epochs_than_the_checkpoint_is_refused_and_records_are_kept(capsys, run_copy):
    spec, workdir = run_copy
    before = snapshot(workdir)
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "1")
    assert code == 2 and out == ""
    assert "--epochs 1: --workdir" in err and "holds a run trained for 2 epochs" in err and "--epochs 2" in err
    assert snapshot(workdir) == before


def test_the_same_epochs_trains_nothing_and_keeps_the_records(capsys, run_copy):
    spec, workdir = run_copy
    records = {name: open(workdir / name).read() for name in ["config.json", "metrics.jsonl"]}
    summary = json.load(open(workdir / "summary.json"))
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "2")
    assert code == 0, err
    assert "nothing to train" in err
    assert "after 2 epochs" in out
    assert {name: open(workdir / name).read() for name in records} == records
    rerun = json.load(open(workdir / "summary.json"))
    assert set(rerun.pop("phases")) >= {"startup", "training", "evaluation"}  # this command's time, rewritten
    assert rerun == {k: v for k, v in summary.items() if k != "phases"}
    assert os.path.isfile(workdir / "eval.json")  # still describes the checkpoint on disk


def test_a_finished_run_without_its_summary_is_evaluated_again(capsys, run_copy):
    """A rerun reads summary.json instead of evaluating; without it, the restored checkpoint is evaluated and
    gives the test metrics the training run recorded for its last epoch. A reproducibility check (same
    checkpoint, same evaluation key), not a maths one: test_evaluate*.py check the metrics themselves."""
    spec, workdir = run_copy
    summary = json.load(open(workdir / "summary.json"))
    os.remove(workdir / "summary.json")
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "2")
    assert code == 0, err
    assert "nothing to train" in err and "evaluating that checkpoint" in err
    rerun = json.load(open(workdir / "summary.json"))
    for name, value in summary["test"].items():
        np.testing.assert_allclose(rerun["test"][name]["mean"], value["mean"], rtol=1e-6, err_msg=name)


def test_an_old_config_with_a_seed_layout_loads_and_a_finished_run_sets_up_nothing(run_copy, monkeypatch):
    """A config.json written before ``--seed-layout`` was removed still loads (the key is dropped) and its run
    resumes; with nothing to train and summary.json reused, no initial state is built, no data placed and no
    program built or traced.
    Without summary.json the same refusals stop the run: they do catch the set-up of an evaluation."""
    _, workdir = run_copy
    saved = json.load(open(workdir / "config.json"))
    with open(workdir / "config.json", "w") as f:
        json.dump({**saved, "seed_layout": "loop"}, f)
    config = workdir_lib.load_run_config(str(workdir), tasks.VAEConfig)
    assert json.loads(json.dumps(dataclasses.asdict(config))) == {k: v for k, v in saved.items() if k != "kind"}
    config = dataclasses.replace(config, workdir=str(workdir))  # the copy, not the run it was copied from

    def refuse(*args, **kwargs):
        raise AssertionError("set up for a finished run")

    for name in ("make_epoch_program", "make_eval_program", "choose_epoch_loop", "has_convolution"):
        monkeypatch.setattr(parallel, name, refuse)
    monkeypatch.setattr(parallel.Plan, "place_examples", refuse)
    monkeypatch.setattr(train_lib, "init_replicated_state", refuse)  # the checkpoint restores into its shapes
    _, task = tasks.vae_task(config, (28, 28, 1))
    result = runner.train(config, task)
    assert result.test_metrics is None and result.summary == json.load(open(workdir / "summary.json"))
    os.remove(workdir / "summary.json")
    with pytest.raises(AssertionError, match="set up for a finished run"):
        runner.train(config, task)


def test_training_further_retires_the_old_eval_record_and_splits_stdout_from_stderr(capsys, run_copy):
    spec, workdir = run_copy
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "3")
    assert code == 0, err
    assert "resuming" in err and "eval-epoch2.json" in err
    assert not os.path.exists(workdir / "eval.json")
    assert json.load(open(workdir / "eval-epoch2.json"))["checkpoint_epoch"] == 2
    summary = json.load(open(workdir / "summary.json"))
    assert summary["epochs"] == 3 and summary["resumed_from_epoch"] == 2
    assert json.load(open(workdir / "config.json"))["epochs"] == 3
    # stdout: the result line, stated from the summary, and the data the run trained on.
    test = summary["test"]
    assert out.splitlines() == [
        f"test neg-ELBO {test['neg_elbo']['mean']:.2f} nats (recon {test['recon']['mean']:.2f}, "
        f"KL {test['kl']['mean']:.2f}) after 3 epochs; active units {summary['diagnostics']['active_units']}/2, "
        f"I(x;z) {summary['diagnostics']['mutual_information']:.2f} nats; outputs in {workdir}",
        f"data: {data.describe_record(summary['dataset'] | {'source': spec})}",
    ]
    # stderr is not a terminal here: no progress bar, one plain line per trained epoch.
    assert err.startswith("data: ")
    assert "\r" not in err
    assert [line[:11] for line in err.splitlines() if line.startswith("epoch ")] == ["epoch 3/3: "]


def test_progress_mode():
    assert runner.progress_mode(True) == (True, False)
    assert runner.progress_mode(False) == (False, False)
    # pytest captures stderr: not a terminal, so no bar and a line per epoch.
    assert runner.progress_mode(None) == (False, True)


def test_divergence_message_says_no_checkpoint_when_there_is_none(tmp_path, mnist_small):
    settings = dict(
        batch_size=64, epochs=2, workdir=str(tmp_path / "run"), progress=False, checkpoint_every=5, eval_batch_size=64
    )
    if "max_consecutive_skips" in {f.name for f in dataclasses.fields(protocol.TrainConfig)}:
        settings["max_consecutive_skips"] = 0  # stop at the end of the epoch, with no step-level guard
    config = protocol.TrainConfig(**settings)

    def nan_loss(params, batch, key, step):  # a one-parameter model whose loss is NaN from the start
        loss = jnp.mean(batch["x"]) * params["w"] * jnp.nan
        return loss, {"loss": loss}

    def eval_fn(params, batch, key):
        return {"loss": jnp.zeros(batch["x"].shape[0])}

    task = Task(lambda key: {"w": jnp.ones(())}, nan_loss, eval_fn, headline="loss")
    with pytest.raises(errors.TrainingDiverged) as info:
        runner.train(config, task, mnist_small)
    assert workdir_lib.checkpoint_epochs(tmp_path / "run") == []
    assert "no checkpoint was saved" in str(info.value)
    assert "is kept" not in str(info.value)


def test_help_text_reads_cleanly(capsys):
    with pytest.raises(SystemExit):
        vae_exp.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())  # undo argparse's line wrapping
    assert "(default: )" not in text and "(default: (400,))" not in text
    assert "(default: TFDS's own) (default" not in text
    assert "--hidden N,N,... encoder hidden widths (the decoder mirrors them) (default: 400)" in text
    assert "(default: one replica, --seed)" in text
    assert "WORKDIR/replaced-YYYYmmdd-HHMMSS/" in text and "nothing is deleted" in text
    assert "mnist:embedded" in text


def _write_json(path, obj):
    with open(path, "w") as f:
        json.dump(obj, f)


def _npz_fingerprint(path):
    """sha256 of the documented subsample of an npz's splits, computed here from the file (data_fingerprint's
    definition: per split its shape and dtype as text, its first 32 and last 32 images, then all labels as int64)."""
    import hashlib

    import numpy as np

    digest = hashlib.sha256()
    with np.load(path) as archive:
        for x_name, y_name in (("x_train", "y_train"), ("x_test", "y_test")):
            x = archive[x_name]
            x = x[..., None] if x.ndim == 3 else x
            n = len(x)
            digest.update(f"({n}, {x.shape[1]}, {x.shape[2]}, {x.shape[3]}) {x.dtype}".encode())
            for i in sorted(set(range(min(n, 32))) | set(range(max(n - 32, 0), n))):
                digest.update(x[i].tobytes())
            digest.update(archive[y_name].astype("<i8").tobytes())
    return "sha256:" + digest.hexdigest()


def test_the_data_a_run_used_is_recorded_and_a_resume_on_the_same_data_works(capsys, run_copy):
    spec, workdir = run_copy
    record = json.load(open(workdir / "data.json"))
    assert record == {
        "source": spec,
        "n_train": 512,
        "n_test": 128,
        "image_shape": [28, 28, 1],
        "fingerprint": _npz_fingerprint(spec[len("npz:") :]),
    }
    assert json.load(open(workdir / "summary.json"))["dataset"]["fingerprint"] == record["fingerprint"]
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "3")
    assert code == 0, err
    assert "resuming" in err
    assert out.splitlines()[-1] == (
        f"data: {spec} (512 train, 128 test, 28x28x1, fingerprint {record['fingerprint'][7:19]})"
    )


def test_a_resume_on_other_data_under_the_same_name_is_refused_before_training(capsys, run_copy, mnist_small, request):
    import numpy as np

    spec, workdir = run_copy
    # Other digits of the same shapes, written over the file the run trained on (the module's other tests use it
    # after this one: it is put back at the end).
    original = open(spec[len("npz:") :], "rb").read()
    request.addfinalizer(lambda: open(spec[len("npz:") :], "wb").write(original))
    np.savez(
        spec[len("npz:") :],
        x_train=np.flip(mnist_small.x_train, 0),
        y_train=mnist_small.y_train[::-1],
        x_test=mnist_small.x_test,
        y_test=mnist_small.y_test,
    )
    before = snapshot(workdir)
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "3")
    assert code == 2 and out == ""
    message = err.strip().splitlines()[-1]
    trained = json.load(open(workdir / "data.json"))["fingerprint"][7:19]
    now = _npz_fingerprint(spec[len("npz:") :])[7:19]
    assert trained != now
    assert message.startswith(
        f"error: --dataset {spec}: --workdir {workdir} was trained on {spec} (512 train, "
        f"128 test, 28x28x1, fingerprint {trained}), but this data is {spec} (512 train, "
        f"128 test, 28x28x1, fingerprint {now})"
    )
    assert snapshot(workdir) == before
    with pytest.raises(SystemExit) as stop:  # experiments.evaluate on the run's own --dataset: the same check
        evaluate_exp.main(["--workdir", str(workdir), "--iwae-k", "2"])
    assert stop.value.code == 2
    assert f"but this data is {spec} (512 train, 128 test, 28x28x1, fingerprint {now})" in capsys.readouterr().err
    assert snapshot(workdir) == before
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "3", "--overwrite")  # starting over is allowed
    assert code == 0, err
    assert json.load(open(workdir / "data.json"))["fingerprint"][7:19] == now


def test_mnist_offline_resumed_where_tfds_trained_it_is_refused(capsys, run_copy, monkeypatch):
    """``--dataset mnist`` trained on TFDS's MNIST, resumed on a machine without it: the embedded digits."""
    from vae_jax import data

    _, workdir = run_copy
    config = json.load(open(workdir / "config.json"))
    _write_json(workdir / "config.json", {**config, "dataset": "mnist"})
    _write_json(
        workdir / "data.json",
        {
            "source": "tfds:mnist",
            "n_train": 60000,
            "n_test": 10000,
            "image_shape": [28, 28, 1],
            "fingerprint": "sha256:" + "0" * 64,
        },
    )
    monkeypatch.setattr(data.tfds, "tfds_prepared_on_disk", lambda *a: False)
    monkeypatch.setattr(data.tfds, "_tfds_reachable", lambda *a: False)
    code, out, err = run_vae(capsys, "mnist", workdir, "--epochs", "3")
    assert code == 2 and out == ""
    message = err.strip().splitlines()[-1]
    assert message.startswith(
        f"error: --dataset mnist: --workdir {workdir} was trained on tfds:mnist (60000 train, "
        "10000 test, 28x28x1, fingerprint 000000000000), but this data is mnist:embedded "
        "(4500 train, 500 test, 28x28x1, fingerprint "
    )
    assert "continue it on the same data (--dataset tfds:mnist)" in message and "--overwrite" in message


def test_a_run_of_mnist_that_fell_back_continues_under_the_spec_it_resolved_to(capsys, run_copy):
    """Started as ``--dataset mnist`` offline (the embedded digits), continued as ``--dataset mnist:embedded``
    so that a machine with TFDS's MNIST does not swap the data: allowed, and the data is still checked."""
    _, workdir = run_copy
    config = json.load(open(workdir / "config.json"))
    _write_json(workdir / "config.json", {**config, "dataset": "mnist"})
    record = json.load(open(workdir / "data.json"))
    _write_json(workdir / "data.json", {**record, "source": "mnist:embedded"})
    code, _, err = run_vae(capsys, "mnist:embedded", workdir, "--epochs", "3")
    # The settings pass; the data check then finds the fixture's 512 digits are not the 4,500 loaded now.
    assert code == 2 and "was trained on mnist:embedded (512 train" in err and "other settings" not in err


def test_an_image_size_the_run_already_had_is_no_change(capsys, run_copy):
    """A run trained with --image-size 0 on 28x28 digits continues with --image-size 28 (a --preset faces128 run
    from before the preset set --image-size 128 continues likewise); another size is a change."""
    spec, workdir = run_copy
    code, out, err = run_vae(capsys, spec, workdir, "--epochs", "2", "--image-size", "14")
    assert code == 2 and "--image-size 0 there, 14 here" in err
    code, _, err = run_vae(capsys, spec, workdir, "--epochs", "3", "--image-size", "28")
    assert code == 0, err
    assert "resuming" in err and json.load(open(workdir / "config.json"))["image_size"] == 28
