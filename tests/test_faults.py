"""Fault injection: NaNs, corrupted checkpoints, failing saves, a second process, SIGTERM and SIGKILL.

The in-process tests inject the fault into a real (tiny) run; the ones marked
``slow`` start ``python -m experiments.vae`` as a user would and signal or
kill it. Every test checks the outcome against an independent computation: a
hand-rolled Optax loop that leaves out the poisoned batches, or an
uninterrupted run of the same command.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vae_jax import checkpoint, errors, faults, runner, tasks, train
from vae_jax import workdir as workdir_lib
from vae_jax.protocol import Task, TrainConfig

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers -------------------------------------------------------------------------------


def mean_task():
    """loss = mean over the batch of (w - x)^2: a NaN pixel poisons exactly the batches that hold it."""

    def loss_fn(params, batch, key, step):
        loss = jnp.mean(jnp.square(params["w"] - batch["x"].reshape(batch["x"].shape[0], -1)))
        return loss, {"loss": loss}

    return Task(
        init_params=lambda key: {"w": jnp.zeros((4,))},
        loss_fn=loss_fn,
        eval_fn=lambda params, batch, key: {"w0": jnp.broadcast_to(params["w"][0], batch["x"].shape[:1])},
        headline="w0",
    )


def log_task():
    """loss = log(w): Adam drives w down until w <= 0, where the loss is no longer finite."""
    return Task(
        init_params=lambda key: {"w": jnp.ones(())},
        loss_fn=lambda params, batch, key, step: (jnp.log(params["w"]), {"loss": jnp.log(params["w"])}),
        eval_fn=lambda params, batch, key: {"w": jnp.broadcast_to(params["w"], batch["x"].shape[:1])},
        headline="w",
    )


def tiny_vae_config(workdir, **overrides) -> tasks.VAEConfig:
    values = dict(
        hidden=(16,), latent_dim=2, batch_size=64, epochs=3, checkpoint_every=1, workdir=str(workdir), progress=False
    )
    values.update(overrides)
    return tasks.VAEConfig(**values)


def restored_leaves(config, task) -> tuple[int, list[np.ndarray]]:
    epoch, state = runner.restore_state(config, task)
    return epoch, [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(state)]


def assert_same_leaves(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)


# --- non-finite steps ----------------------------------------------------------------------


def test_nan_batches_are_skipped_and_the_rest_matches_a_plain_optax_loop(tmp_path):
    x = np.random.default_rng(0).normal(size=(32, 2, 2, 1)).astype(np.float32)
    x[5, 0, 1, 0] = np.nan  # example 5 poisons the one batch per epoch that holds it
    ds = runner.data_lib.Dataset(x, None, x[:4], None, "with a NaN")
    config = TrainConfig(batch_size=8, epochs=3, learning_rate=0.1, workdir=str(tmp_path), progress=False)
    result = runner.train(config, mean_task(), ds)

    # Reference: the same permutations, a plain Optax loop that leaves out every batch holding example 5.
    keys = train.run_keys(0)
    params = {"w": jnp.zeros((4,))}
    optimizer = optax.adam(0.1)
    opt_state = optimizer.init(params)
    grad = jax.grad(lambda p, xb: jnp.mean(jnp.square(p["w"] - xb.reshape(xb.shape[0], -1))))
    skipped_per_epoch = []
    for epoch in range(3):
        batches = np.asarray(train.epoch_batches(keys.data, jnp.int32(epoch), 32, 8))
        skipped_per_epoch.append(sum(5 in idx for idx in batches))
        for idx in batches:
            if 5 in idx:
                continue
            updates, opt_state = optimizer.update(grad(params, jnp.asarray(x[idx])), opt_state, params)
            params = optax.apply_updates(params, updates)
    assert skipped_per_epoch == [1, 1, 1]
    np.testing.assert_allclose(result.params(0)["w"], params["w"], rtol=1e-6, atol=1e-7)
    assert [line["train_skipped_steps"] for line in result.history] == [1.0, 1.0, 1.0]
    counts = result.state.opt_state  # optax.apply_if_finite's state
    assert int(counts.total_notfinite[0]) == 3 and int(result.state.step[0]) == 12
    assert int(counts.inner_state[0].count[0]) == 9  # Adam saw only the 9 applied steps
    for name in ("mu", "nu"):
        np.testing.assert_allclose(
            getattr(counts.inner_state[0], name)["w"][0], getattr(opt_state[0], name)["w"], rtol=1e-6, atol=1e-7
        )
    assert all(np.isfinite(line["train_loss"]) for line in result.history)  # the mean over applied steps


@pytest.mark.parametrize("poison", [None, np.nan, np.inf, 1e34])
def test_each_kind_of_non_finite_step_is_skipped_in_the_scan_fused_epoch(poison):
    # 1e34 is finite, but its square (the loss) overflows while its gradient stays finite: the loss decides.
    x = np.random.default_rng(2).normal(size=(24, 2, 2, 1)).astype(np.float32)
    if poison is not None:
        x[7, 1, 0, 0] = poison
    data, task, optimizer, keys = {"x": jnp.asarray(x)}, mean_task(), optax.adam(0.05), train.run_keys(0)
    epoch_fn = jax.jit(train.make_epoch_fn(train.make_train_step(task.loss_fn, optimizer, max_consecutive_skips=5), 4))
    state = train.init_train_state(task.init_params(keys.init), optimizer)
    # Reference: a plain Optax loop over the same batches that leaves out the one holding example 7.
    params = {"w": jnp.zeros((4,))}
    opt_state = optimizer.init(params)
    grad = jax.grad(lambda p, xb: jnp.mean(jnp.square(p["w"] - xb.reshape(xb.shape[0], -1))))
    for epoch in range(2):
        state, metrics = epoch_fn(state, data, keys.data, keys.sample, jnp.int32(epoch))
        for idx in np.asarray(train.epoch_batches(keys.data, jnp.int32(epoch), 24, 4)):
            if poison is not None and 7 in idx:
                continue
            updates, opt_state = optimizer.update(grad(params, jnp.asarray(x[idx])), opt_state, params)
            params = optax.apply_updates(params, updates)
        assert float(metrics["skipped_steps"]) == (0.0 if poison is None else 1.0)
    np.testing.assert_allclose(state.params["w"], params["w"], rtol=1e-6, atol=1e-7)
    assert int(state.opt_state.total_notfinite) == (0 if poison is None else 2)
    assert int(state.opt_state.inner_state[0].count) == int(opt_state[0].count) == (12 if poison is None else 10)


def test_scan_and_loop_epochs_agree_when_steps_are_skipped():
    x = np.random.default_rng(1).normal(size=(16, 2, 2, 1)).astype(np.float32)
    x[3, 0, 0, 0] = np.inf
    data = {"x": jnp.asarray(x)}
    task = mean_task()
    optimizer = optax.adam(0.05)
    step_fn = train.make_train_step(task.loss_fn, optimizer, max_consecutive_skips=5)
    keys = train.run_keys(0)
    state = train.init_train_state(task.init_params(keys.init), optimizer)
    fused, fused_metrics = jax.jit(train.make_epoch_fn(step_fn, 4))(state, data, keys.data, keys.sample, 0)
    state = train.init_train_state(task.init_params(keys.init), optimizer)
    looped, looped_metrics = train.loop_epoch(step_fn, state, data, keys.data, keys.sample, 0, 4)
    np.testing.assert_allclose(fused.params["w"], looped.params["w"], rtol=1e-6)
    assert float(fused_metrics["skipped_steps"]) == float(looped_metrics["skipped_steps"]) == 1.0
    np.testing.assert_allclose(fused_metrics["loss"], looped_metrics["loss"], rtol=1e-6)


def test_consecutive_skips_stop_the_run_naming_the_step_and_the_workdir_resumes(tmp_path, capsys):
    # One step per epoch: steps 1-3 are finite (w falls below 0 in step 3), every later one is NaN.
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
        max_consecutive_skips=2,
    )
    with pytest.raises(errors.TrainingDiverged, match=r"2 optimizer steps in a row .*\(steps 4-5, seed 0, epoch 5"):
        runner.train(config, log_task(), ds)
    # The epoch in which the limit was reached is not checkpointed; the frozen state of epoch 4 is.
    assert workdir_lib.checkpoint_epochs(str(tmp_path)) == [2, 3, 4]
    epoch, state = runner.restore_state(config, log_task())
    assert epoch == 4 and np.isfinite(float(state.params["w"][0])) and int(state.opt_state.total_notfinite[0]) == 1
    assert not os.path.exists(os.path.join(tmp_path, faults.LOCK_NAME))  # released: the workdir is usable
    # Resuming with a larger limit continues from checkpoint 4 (and skips on, since the loss stays NaN).
    resumed = runner.train(dataclasses.replace(config, max_consecutive_skips=100, epochs=6), log_task(), ds)
    assert resumed.summary["resumed_from_epoch"] == 4 and int(resumed.state.opt_state.total_notfinite[0]) == 3


def test_without_the_guard_the_epoch_level_stop_keeps_the_last_checkpoint(tmp_path):
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
    )
    with pytest.raises(errors.TrainingDiverged, match="non-finite training loss in epoch 4"):
        runner.train(config, log_task(), ds)
    epoch, state = runner.restore_state(config, log_task())
    assert epoch == 3 and np.isfinite(float(state.params["w"][0]))


def test_an_unstable_learning_rate_is_caught_at_the_step(tmp_path, mnist_small):
    config = tiny_vae_config(tmp_path, learning_rate=1e7, epochs=4, max_consecutive_skips=3)
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    try:
        result = runner.train(config, task, mnist_small)
    except errors.TrainingDiverged as err:
        assert "optimizer steps in a row had a non-finite loss or gradient" in str(err)
    else:  # every applied step was finite, so whatever was not skipped is finite
        assert all(np.all(np.isfinite(np.asarray(leaf))) for leaf in jax.tree_util.tree_leaves(result.state.params))
    if workdir_lib.checkpoint_epochs(str(tmp_path)):  # the checkpoint left behind holds no NaN
        _, leaves = restored_leaves(config, task)
        assert all(np.all(np.isfinite(leaf)) for leaf in leaves if leaf.dtype.kind == "f")


# --- signals and kills, in process -----------------------------------------------------------


def signalling_task(signum: int, at_step: int, sent: list):
    """:func:`mean_task` whose compiled step sends ``signum`` to this process once, at step ``at_step``."""
    task = mean_task()
    pid = os.getpid()

    def send(step):
        if not sent and np.any(np.asarray(step) == at_step):
            sent.append(signum)
            os.kill(pid, signum)

    def loss_fn(params, batch, key, step):
        jax.debug.callback(send, step)
        return task.loss_fn(params, batch, key, step)

    return dataclasses.replace(task, loss_fn=loss_fn)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_mid_epoch_finishes_the_epoch_saves_and_resumes_bit_identical(tmp_path, signum):
    x = np.random.default_rng(2).normal(size=(32, 2, 2, 1)).astype(np.float32)
    ds = runner.data_lib.Dataset(x, None, x[:4], None, "normal")
    config = TrainConfig(
        batch_size=8,
        epochs=4,
        learning_rate=0.05,
        workdir=str(tmp_path / "signalled"),
        progress=False,
        checkpoint_every=100,
    )
    handler_before = signal.getsignal(signum)
    sent = []
    with pytest.raises(errors.Interrupted) as stopped:  # step 5 is the second step of epoch 2
        runner.train(config, signalling_task(signum, 5, sent), ds)
    assert sent == [signum] and stopped.value.exit_code == 128 + signum
    assert str(stopped.value) == (
        f"stopped by {signal.Signals(signum).name} after epoch 2; checkpoint 2 is saved in "
        f"{config.workdir}; run the same command again to resume"
    )
    assert signal.getsignal(signum) is handler_before  # the handlers are put back
    assert workdir_lib.checkpoint_epochs(config.workdir) == [2]
    resumed = runner.train(config, mean_task(), ds)
    straight = runner.train(dataclasses.replace(config, workdir=str(tmp_path / "straight")), mean_task(), ds)
    assert resumed.summary["resumed_from_epoch"] == 2
    np.testing.assert_array_equal(resumed.params(0)["w"], straight.params(0)["w"])
    assert [line["train_loss"] for line in resumed.history] == [line["train_loss"] for line in straight.history]


def test_a_torn_last_metrics_line_from_a_kill_is_dropped_on_resume(tmp_path):
    x = np.random.default_rng(3).normal(size=(16, 2, 2, 1)).astype(np.float32)
    ds = runner.data_lib.Dataset(x, None, x[:4], None, "normal")
    config = TrainConfig(batch_size=8, epochs=2, workdir=str(tmp_path), progress=False, checkpoint_every=1)
    runner.train(config, mean_task(), ds)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 3, "seconds": 0.0, "train_lo')  # killed while appending epoch 3's line
    resumed = runner.train(dataclasses.replace(config, epochs=3), mean_task(), ds)
    with open(tmp_path / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == [1, 2, 3]
    assert [line["epoch"] for line in resumed.history] == [1, 2, 3]


# --- checkpoints on disk ---------------------------------------------------------------------


def _corrupt(step_dir: str, how: str) -> None:
    files = sorted(
        (os.path.getsize(os.path.join(d, f)), os.path.join(d, f)) for d, _, names in os.walk(step_dir) for f in names
    )
    biggest = files[-1][1]
    if how == "truncate":
        with open(biggest, "r+b") as f:
            f.truncate(os.path.getsize(biggest) // 2)
    elif how == "garble":
        data = bytearray(open(biggest, "rb").read())
        for i in range(100, len(data), 997):
            data[i] ^= 0x5A
        open(biggest, "wb").write(bytes(data))
    elif how == "delete":
        os.remove(biggest)
    elif how == "metadata":
        meta = [path for _, path in files if os.path.basename(path) == "_METADATA"][0]
        open(meta, "w").write('{"tree_met')


@pytest.fixture(scope="module")
def three_checkpoints(tmp_path_factory, mnist_small):
    """A 3-epoch run with checkpoints 1, 2, 3: ``(workdir, config, task, final state leaves)``."""
    workdir = tmp_path_factory.mktemp("three") / "run"
    config = tiny_vae_config(workdir, epochs=3)
    _, task = tasks.vae_task(config, mnist_small.image_shape)
    result = runner.train(config, task, mnist_small)
    assert workdir_lib.checkpoint_epochs(str(workdir)) == [1, 2, 3]
    return workdir, config, task, [np.asarray(a) for a in jax.tree_util.tree_leaves(result.state)]


@pytest.mark.parametrize(
    "how",
    [
        "truncate",
        "delete",
        "metadata",
        "garble",  # flipped bytes: caught by the SHA-256 digests of the array data files
    ],
)
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_good_one(
    tmp_path, mnist_small, capsys, three_checkpoints, how
):
    straight_dir, config, task, straight = three_checkpoints
    workdir = tmp_path / "damaged"
    shutil.copytree(straight_dir, workdir)
    _corrupt(str(workdir / "checkpoints" / "3"), how)  # damaged on disk after it was written
    capsys.readouterr()
    resumed = runner.train(dataclasses.replace(config, workdir=str(workdir)), task, mnist_small)
    err = capsys.readouterr().err
    assert f"warning: checkpoint 3 in {workdir / 'checkpoints'} cannot be restored" in err
    assert "resuming from checkpoint 2, the newest good one; bad: 3" in err
    assert resumed.summary["resumed_from_epoch"] == 2
    # Epoch 3 was trained again from checkpoint 2: the same state as the uninterrupted run.
    assert_same_leaves([np.asarray(a) for a in jax.tree_util.tree_leaves(resumed.state)], straight)
    assert os.path.isdir(workdir / "bad_checkpoints" / "3")  # kept for inspection, out of the way
    assert workdir_lib.checkpoint_epochs(str(workdir)) == [1, 2, 3]


def test_no_restorable_checkpoint_is_a_one_line_error_that_says_what_to_do(tmp_path, mnist_small, three_checkpoints):
    straight_dir, config, task, _ = three_checkpoints
    workdir = tmp_path / "all_bad"
    shutil.copytree(straight_dir, workdir)
    for epoch in (1, 2, 3):
        _corrupt(str(workdir / "checkpoints" / str(epoch)), "truncate")
    with pytest.raises(
        errors.CheckpointError,
        match=r"no checkpoint in .* can be restored \(tried 3, 2, 1\).*"
        r"use another --workdir, or add --overwrite",
    ):
        runner.train(dataclasses.replace(config, workdir=str(workdir), epochs=4), task, mnist_small)
    assert workdir_lib.checkpoint_epochs(str(workdir)) == [1, 2, 3]  # nothing moved or deleted


def test_a_checkpoint_of_the_older_optimizer_state_layout_is_a_one_line_error(tmp_path, mnist_small, three_checkpoints):
    straight_dir, config, task, _ = three_checkpoints
    workdir = tmp_path / "older"
    shutil.copytree(straight_dir, workdir)
    config = dataclasses.replace(config, workdir=str(workdir), epochs=4)
    _, state = runner.restore_state(config, task)
    # The train state as it was saved before optax.apply_if_finite held the counts: Adam's own state, and the
    # two counters beside it.
    zeros = np.zeros_like(np.asarray(state.step))
    older = {
        "step": state.step,
        "params": state.params,
        "opt_state": state.opt_state.inner_state,
        "model_state": state.model_state,
        "skipped_steps": zeros,
        "consecutive_skips": zeros,
    }
    shutil.rmtree(workdir / "checkpoints")
    manager = checkpoint.make_manager(str(workdir))
    checkpoint.save(manager, 3, older)
    checkpoint.close(manager)
    expected = rf"--workdir {workdir}: checkpoint 3 was written with an older optimizer-state layout .*--overwrite"
    for restore in (lambda: runner.train(config, task, mnist_small), lambda: runner.restore_state(config, task)):
        with pytest.raises(errors.CheckpointError, match=expected) as info:
            restore()
        assert "\n" not in str(info.value)
    assert workdir_lib.checkpoint_epochs(str(workdir)) == [3] and not os.path.exists(workdir / "bad_checkpoints")


def without_room_for_large_files(argv: list[str], limit_bytes: int) -> list[str]:
    """``argv`` (a ``python -m MODULE ...`` command) run with files limited to ``limit_bytes`` (RLIMIT_FSIZE).

    A write past the limit fails with EFBIG, as a write to a full disk fails
    with ENOSPC (SIGXFSZ is ignored so that the write returns the error).
    """
    assert argv[1] == "-m"
    program = (
        "import resource, runpy, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
        f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit_bytes}, {limit_bytes})); "
        f"sys.argv = {[argv[2]] + argv[3:]!r}; runpy.run_module({argv[2]!r}, run_name='__main__', alter_sys=True)"
    )
    return [argv[0], "-c", program]


# --- processes: the commands a user runs -----------------------------------------------------


def vae_command(npz_spec: str, workdir, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "experiments.vae",
        "--dataset",
        npz_spec,
        "--hidden",
        "16",
        "--latent-dim",
        "2",
        "--batch-size",
        "64",
        "--workdir",
        str(workdir),
        "--no-progress",
        *extra,
    ]


@pytest.fixture(scope="module")
def subprocess_env(tmp_path_factory):
    """The environment of the training subprocesses: this checkout first, a shared compilation cache."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    env["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def run_command(argv, env, timeout=300, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, **kwargs)


def wait_for_epochs(workdir, count: int, process: subprocess.Popen, timeout: float = 240) -> int:
    """Waits until metrics.jsonl holds ``count`` epochs (or the process ends); returns the number seen."""
    path = os.path.join(workdir, "metrics.jsonl")
    deadline = time.monotonic() + timeout
    seen = 0
    while time.monotonic() < deadline and process.poll() is None:
        if os.path.exists(path):
            with open(path) as f:
                seen = sum(1 for line in f if line.endswith("\n"))
            if seen >= count:
                return seen
        time.sleep(0.02)
    return seen


def final_leaves(workdir, epochs: int, mnist_shape=(28, 28, 1)) -> list[np.ndarray]:
    config = tiny_vae_config(workdir, epochs=epochs)
    _, task = tasks.vae_task(config, mnist_shape)
    epoch, leaves = restored_leaves(config, task)
    assert epoch == epochs
    return leaves


FAULT_EPOCHS = 12


def write_digits_npz(path) -> str:
    """256 train / 64 test embedded MNIST digits as a Keras-layout ``.npz``; returns its ``npz:`` spec."""
    x_train, y_train, x_test, y_test = runner.data_lib.embedded_mnist()
    np.savez(path, x_train=x_train[:256], y_train=y_train[:256], x_test=x_test[:64], y_test=y_test[:64])
    return f"npz:{path}"


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, subprocess_env):
    """An uninterrupted run of the command the fault tests interrupt: ``(npz spec, final leaves, workdir)``."""
    root = tmp_path_factory.mktemp("uninterrupted")
    spec = write_digits_npz(root / "digits.npz")
    workdir = root / "run"
    done = run_command(
        vae_command(spec, workdir, "--epochs", str(FAULT_EPOCHS), "--checkpoint-every", "1"), subprocess_env
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return spec, final_leaves(workdir, FAULT_EPOCHS), workdir


@pytest.mark.slow
def test_sigkill_at_random_moments_then_resume_ends_bit_identical(tmp_path, subprocess_env, uninterrupted):
    spec, reference, _ = uninterrupted
    workdir = tmp_path / "killed"
    argv = vae_command(spec, workdir, "--epochs", str(FAULT_EPOCHS), "--checkpoint-every", "1")
    rng = random.Random(0)
    kills = 0
    for attempt in range(3):  # bounded: three kills at random moments of epochs and saves
        process = subprocess.Popen(
            argv, env=subprocess_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        seen = wait_for_epochs(workdir, (attempt + 1) * 3, process)
        time.sleep(rng.uniform(0.0, 0.3))
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            kills += 1
        process.wait(timeout=60)
        assert seen > 0
    assert kills >= 1
    done = run_command(argv, subprocess_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert_same_leaves(final_leaves(workdir, FAULT_EPOCHS), reference)
    with open(workdir / "metrics.jsonl") as f:
        assert [json.loads(line)["epoch"] for line in f] == list(range(1, FAULT_EPOCHS + 1))


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_exits_143_and_the_resumed_run_is_bit_identical(
    tmp_path, subprocess_env, uninterrupted
):
    spec, reference, _ = uninterrupted
    workdir = tmp_path / "terminated"
    # --checkpoint-every 1000: without the handler nothing would be saved before the end.
    argv = vae_command(spec, workdir, "--epochs", str(FAULT_EPOCHS), "--checkpoint-every", "1000")
    process = subprocess.Popen(
        argv, env=subprocess_env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert wait_for_epochs(workdir, 3, process) >= 3
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: stopped by SIGTERM after epoch ") and "run the same command again to resume" in last
    epoch = int(last.split("after epoch ")[1].split(";")[0])
    assert workdir_lib.checkpoint_epochs(str(workdir)) == [epoch] and 3 <= epoch < FAULT_EPOCHS
    assert not os.path.exists(workdir / faults.LOCK_NAME)
    done = run_command(argv, subprocess_env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"resuming {workdir} from its epoch-{epoch} checkpoint" in done.stderr
    assert_same_leaves(final_leaves(workdir, FAULT_EPOCHS), reference)


@pytest.mark.slow
def test_a_second_process_on_the_workdir_is_refused_and_a_stale_lock_taken_over(
    tmp_path, subprocess_env, uninterrupted
):
    spec, _, _ = uninterrupted
    workdir = tmp_path / "shared"
    argv = vae_command(spec, workdir, "--epochs", "400", "--checkpoint-every", "100")
    first = subprocess.Popen(argv, env=subprocess_env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_for_epochs(workdir, 1, first) >= 1
        second = run_command(argv, subprocess_env)
        assert second.returncode == 2
        lines = second.stderr.strip().splitlines()
        assert lines[-1].startswith(
            f"error: --workdir {workdir} is in use by pid {first.pid} on {socket.gethostname()}"
        ), second.stderr[-2000:]
        assert "Traceback" not in second.stderr
    finally:
        first.send_signal(signal.SIGKILL)  # leaves its lock behind, as a crashed process would
        first.wait(timeout=60)
    owner = json.loads((workdir / faults.LOCK_NAME).read_text())
    assert owner["pid"] == first.pid
    with faults.WorkdirLock(str(workdir)) as lock:  # the dead owner's lock is stale: taken over
        assert json.loads((workdir / faults.LOCK_NAME).read_text())["pid"] == os.getpid() and lock.held
    assert not (workdir / faults.LOCK_NAME).exists()


def test_a_live_owner_holds_the_lock_and_its_death_releases_it(tmp_path):
    """The lock of a live process (here another Python holding it) is refused with its pid; once the kernel
    has ended that process (SIGKILL: no clean-up ran), the lock is free without any stale-lock repair."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from vae_jax import faults; lock = faults.WorkdirLock(sys.argv[1]); lock.acquire(); "
            "print('held', flush=True); time.sleep(60)",
            str(tmp_path),
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(errors.WorkdirBusy, match=f"in use by pid {holder.pid} on {socket.gethostname()}"):
            faults.WorkdirLock(str(tmp_path)).acquire()
    finally:
        holder.kill()
        holder.wait()
    assert json.loads((tmp_path / faults.LOCK_NAME).read_text())["pid"] == holder.pid  # the dead owner's file
    with faults.WorkdirLock(str(tmp_path)) as lock:
        assert lock.held and json.loads((tmp_path / faults.LOCK_NAME).read_text())["pid"] == os.getpid()
        with pytest.raises(errors.WorkdirBusy, match=f"in use by pid {os.getpid()}"):  # flock is per open file
            faults.WorkdirLock(str(tmp_path)).acquire()
    assert not (tmp_path / faults.LOCK_NAME).exists()


@pytest.mark.slow
def test_a_save_that_runs_out_of_space_says_so_and_keeps_the_previous_checkpoint(
    tmp_path, subprocess_env, uninterrupted
):
    spec, reference, finished = uninterrupted
    workdir = tmp_path / "full"
    shutil.copytree(finished, workdir)
    more = FAULT_EPOCHS + 1
    argv = vae_command(spec, workdir, "--epochs", str(more), "--checkpoint-every", "1")
    # Files may not grow past 50 kB (as on a full disk, a write fails): the array data (~200 kB) cannot be saved.
    full = run_command(without_room_for_large_files(argv, 50_000), subprocess_env)
    assert full.returncode == 2, full.stderr[-2000:]
    # The one-line error (Orbax's abandoned writes are silenced after it, though a late one may still print).
    assert (
        f"error: could not save checkpoint {more} in {workdir / 'checkpoints'} (File too large; is the disk full "
        f"or the directory read-only?); checkpoint {FAULT_EPOCHS} is intact"
    ) in full.stderr.splitlines()
    assert workdir_lib.checkpoint_epochs(str(workdir))[-1] == FAULT_EPOCHS
    assert_same_leaves(final_leaves(workdir, FAULT_EPOCHS), reference)
    # With room again, the same command resumes from that checkpoint over the failed save's leftovers.
    again = run_command(argv, subprocess_env)
    assert again.returncode == 0, again.stderr[-2000:]
    assert workdir_lib.checkpoint_epochs(str(workdir))[-1] == more


def test_processes_probing_one_workdir_at_once_never_remove_each_others_probe(tmp_path):
    """A distributed run's processes all probe the shared workdir at start; none may fail on another's probe."""
    import threading

    failures, start = [], threading.Barrier(4)

    def probe_many():
        start.wait()
        for _ in range(300):
            try:
                workdir_lib.probe_workdir(str(tmp_path / "shared"))
            except errors.ConfigError as err:
                failures.append(str(err))
                return

    threads = [threading.Thread(target=probe_many) for _ in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert failures == [] and os.listdir(tmp_path / "shared") == []  # and no probe is left behind
    with pytest.raises(errors.ConfigError, match="--workdir .*: not a writable directory"):
        (tmp_path / "file").write_text("")
        workdir_lib.probe_workdir(str(tmp_path / "file" / "run"))
