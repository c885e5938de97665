"""Monitoring of a run: TensorBoard events equal metrics.jsonl, seeds statistics, per-seed curves, determinism."""

import glob
import json
import struct

import jax
import numpy as np
import pytest

from vae_jax import runner, tasks
from vae_jax import workdir as workdir_lib


def small_config(workdir, **overrides):
    base = dict(
        latent_dim=4,
        hidden=(32,),
        batch_size=64,
        epochs=2,
        workdir=str(workdir),
        progress=False,
        checkpoint_every=10,
        eval_batch_size=64,
    )
    return tasks.VAEConfig(**{**base, **overrides})


def read_events(workdir):
    """Every event of the workdir's event files, parsed from the TFRecord framing by hand."""
    from tensorboardX.proto import event_pb2

    events = []
    for path in sorted(glob.glob(f"{workdir}/events.out.tfevents.*")):
        blob = open(path, "rb").read()
        offset = 0
        while offset < len(blob):
            (length,) = struct.unpack("<Q", blob[offset : offset + 8])
            event = event_pb2.Event()
            event.ParseFromString(blob[offset + 12 : offset + 12 + length])  # skip the length's crc32
            events.append(event)
            offset += 12 + length + 4
    return events


@pytest.fixture(scope="module")
def two_seed_run(tmp_path_factory, mnist_small):
    workdir = tmp_path_factory.mktemp("two_seeds")
    config = small_config(workdir, seeds="3,4")
    model, task = tasks.vae_task(config, mnist_small.image_shape)
    result = runner.train(config, task, mnist_small)
    workdir_lib.write_summary(str(workdir), result.summary, [])
    return workdir, result


def test_tensorboard_scalars_are_the_metrics_jsonl_values(two_seed_run):
    workdir, result = two_seed_run
    scalars = {}
    images = set()
    for event in read_events(workdir):
        for value in event.summary.value:
            if value.HasField("image"):
                images.add(value.tag)
            else:
                scalars[(value.tag, event.step)] = value.simple_value
    lines = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
    assert len(lines) == 2
    for line in lines:
        e = line["epoch"]
        np.testing.assert_allclose(scalars[("train/loss", e)], line["train_loss"], rtol=1e-6)
        np.testing.assert_allclose(scalars[("test/neg_elbo", e)], line["test_neg_elbo"], rtol=1e-6)
        for seed, value in zip([3, 4], line["per_seed"]["test_neg_elbo"], strict=True):
            np.testing.assert_allclose(scalars[(f"test/neg_elbo/seed_{seed}", e)], value, rtol=1e-6)
    assert images == {"figures/seed_curves"}


def test_summary_holds_the_student_t_interval_and_the_seed_curves(two_seed_run):
    workdir, result = two_seed_run
    test = json.load(open(workdir / "summary.json"))["test"]["neg_elbo"]
    a, b = test["per_seed"]
    # Two seeds: t_{0.975, 1} = 12.706, s = |a - b| / sqrt(2), half-width = t s / sqrt(2) = t |a - b| / 2.
    half = 12.7062047 * abs(a - b) / 2
    np.testing.assert_allclose(test["ci95"], [(a + b) / 2 - half, (a + b) / 2 + half], rtol=1e-6)
    assert (workdir / "seed_curves.png").stat().st_size > 0
    assert "seed_curves.png" in json.load(open(workdir / "summary.json"))["figures"]
    assert runner.mean_std([1.0])["ci95"] is None


def test_two_runs_give_identical_losses_and_parameters(tmp_path, mnist_small):
    config_a, config_b = (
        small_config(tmp_path / "a", tensorboard=False),
        small_config(tmp_path / "b", tensorboard=False),
    )
    _, task = tasks.vae_task(config_a, mnist_small.image_shape)
    a = runner.train(config_a, task, mnist_small)
    b = runner.train(config_b, task, mnist_small)
    losses_a = [json.loads(line)["train_loss"] for line in open(tmp_path / "a" / "metrics.jsonl")]
    losses_b = [json.loads(line)["train_loss"] for line in open(tmp_path / "b" / "metrics.jsonl")]
    assert losses_a == losses_b
    for x, y in zip(jax.tree_util.tree_leaves(a.state), jax.tree_util.tree_leaves(b.state), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    assert not list((tmp_path / "a").glob("events.out.tfevents.*"))  # --no-tensorboard writes none
