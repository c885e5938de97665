"""Two processes on loopback train one run (jax.distributed + Gloo on CPU): same result as one process, one writer,
sharded resume, a resident training split decoded once by process 0, of which each process holds (and,
memory-mapped, reads) half the rows,
streamed batches of which each process reads only its half; and how they stop when one fails or is killed."""

import json
import os
import socket
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from vae_jax import data as data_lib

pytestmark = pytest.mark.slow  # every test here starts two training processes

TRAIN_SOURCE = textwrap.dedent("""
    import os, signal
    import jax, numpy as np
    from vae_jax import data, parallel, runner, tasks

    placed_rows = []  # rows of the resident training split on this process's devices, and of the whole split
    place_examples = parallel.Plan.place_examples

    def recording_place_examples(self, arrays):
        placed = place_examples(self, arrays)
        placed_rows.append([[s.data.shape[0] for s in placed["x"].addressable_shards], placed["x"].shape[0]])
        return placed

    parallel.Plan.place_examples = recording_place_examples

    class CountingArray(np.ndarray):  # counts the training rows this process reads
        rows_read = 0
        # A test kills process 1 (SIGKILL) when it has read this many rows: in the middle of a streamed epoch.
        die_at = int(os.environ.get("DIE_AT_ROWS", "0")) if os.environ.get("JAX_PROCESS_ID") == "1" else 0

        # Or sends it a SIGTERM, once, when it has read this many rows.
        term_at = int(os.environ.get("TERM_AT_ROWS", "0")) if os.environ.get("JAX_PROCESS_ID") == "1" else 0

        def __getitem__(self, index):
            if isinstance(index, np.ndarray):
                CountingArray.rows_read += len(index)
                if CountingArray.die_at and CountingArray.rows_read >= CountingArray.die_at:
                    os.kill(os.getpid(), signal.SIGKILL)
                if CountingArray.term_at and CountingArray.rows_read >= CountingArray.term_at:
                    CountingArray.term_at = 0
                    os.kill(os.getpid(), signal.SIGTERM)
            return np.asarray(self)[index]

    if os.environ.get("JAX_PROCESS_ID") == "1" and os.environ.get("DIE_AT_SAVE"):  # a test kills process 1 (SIGKILL)
        from vae_jax import checkpoint  # on its way to save this checkpoint: between epochs, not in a collective
        save = checkpoint.save

        def dying_save(manager, epoch, state):
            if epoch == int(os.environ["DIE_AT_SAVE"]):
                os.kill(os.getpid(), signal.SIGKILL)
            return save(manager, epoch, state)

        checkpoint.save = dying_save

    def mapped_kib(path):  # this process's resident pages of its memory maps of the file at path (/proc/self/smaps)
        total, inside = 0, False
        with open("/proc/self/smaps") as f:
            for line in f:
                fields = line.split()
                if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
                    inside = len(fields) >= 6 and fields[5] == path
                elif inside and fields[0] == "Rss:":
                    total += int(fields[1])
        return total

    def train(workdir, epochs, distributed, seeds, stream, spec=""):
        config = tasks.VAEConfig(latent_dim=4, hidden=(32,), batch_size=64, epochs=epochs, workdir=workdir,
                                 progress=False, eval_batch_size=64, devices="all",
                                 checkpoint_every=int(os.environ.get("CHECKPOINT_EVERY", "1")),
                                 distributed=distributed, seeds=seeds, stream=stream, dataset=spec or "npz:")
        # runner.load_data: when distributed, process 0 decodes a folder into the workdir, every process maps that
        mapped = os.path.join(workdir, data.DECODED_DATA)
        if spec:
            ds = runner.load_data(config)
        else:
            x_train, y_train, x_test, y_test = data.embedded_mnist()
            ds = data.Dataset((x_train[:256, ..., None] / np.float32(255)).view(CountingArray), y_train[:256],
                              x_test[:64, ..., None] / np.float32(255), y_test[:64], "slice")
        _, task = tasks.vae_task(config, ds.image_shape)
        result = runner.train(config, task, ds)
        return {"process": jax.process_index(), "processes": jax.process_count(), "mesh": result.summary["mesh"],
                "resumed_from": result.summary["resumed_from_epoch"], "streamed": result.summary["streamed"],
                "rows_read": CountingArray.rows_read, "placed_rows": placed_rows,
                "memory_mapped": ds.memory_mapped, "mapped_kib": mapped_kib(mapped) if spec else 0,
                "source": ds.source,
                "params": [np.asarray(a).tolist() for a in jax.tree_util.tree_leaves(result.state.params)]}
""")
RUN_SCRIPT = TRAIN_SOURCE + textwrap.dedent("""
    import json, sys
    import os
    from vae_jax import checkpoint, cli, errors, faults
    workdir, epochs, distributed, seeds, stream = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1", sys.argv[4], sys.argv[5] == "1"
    spec = sys.argv[6]
    workdir = workdir.replace("PROCESS", os.environ.get("JAX_PROCESS_ID", "0"))  # a workdir per process (tests)
    main = cli.user_errors(errors.ConfigError, data.DataError, errors.CheckpointError)(
        lambda: print("RESULT" + json.dumps(train(workdir, epochs, distributed, seeds, stream, spec))))
    main()
""")


def _run_here(workdir, epochs: int, seeds: str = "0,1", spec: str = "") -> dict:
    """TRAIN_SOURCE's run in this process (one device, not distributed)."""
    namespace = {}
    exec(TRAIN_SOURCE, namespace)
    return namespace["train"](str(workdir), epochs, False, seeds, False, spec)


@pytest.fixture(scope="module")
def single(tmp_path_factory, _session_cache) -> dict:
    """The parameters of the one-process run (seeds 0 and 1: replica k is seed k, 2 epochs) that two-process runs
    are compared with. It parses the digits into the session's cache (``_session_cache``), never the user's."""
    return _run_here(tmp_path_factory.mktemp("single"), 2)["params"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(
    workdir,
    epochs: int,
    processes: int,
    seeds: str = "0,1",
    stream: bool = False,
    expect_failure: bool = False,
    spec: str = "",
    die_at_rows: int = 0,
    env: dict | None = None,
) -> list:
    """Runs RUN_SCRIPT in ``processes`` processes; their outputs go to files (a full pipe would block a process
    that its peers wait for at the shutdown barrier). Returns each one's result, or with ``expect_failure``
    each one's ``(exit code, stderr)``."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "DIE_AT_ROWS": str(die_at_rows), **(env or {})}
    env["XLA_FLAGS"] = " ".join(
        flag
        for flag in env.get("XLA_FLAGS", "").split()  # one device per process
        if not flag.startswith("--xla_force_host_platform_device_count")
    )
    distributed = "1" if processes > 1 else "0"
    if processes > 1:
        env.update(JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{_free_port()}", JAX_NUM_PROCESSES=str(processes))
    logs, procs = [], []
    base = str(workdir).replace("PROCESS", "")  # the logs' place when each process has a workdir of its own
    os.makedirs(os.path.dirname(base), exist_ok=True)
    for i in range(processes):
        out, err = open(f"{base}.{epochs}.{i}.out", "w+"), open(f"{base}.{epochs}.{i}.err", "w+")
        logs.append((out, err))
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-c",
                    RUN_SCRIPT,
                    str(workdir),
                    str(epochs),
                    distributed,
                    seeds,
                    "1" if stream else "0",
                    spec,
                ],
                env={**env, "JAX_PROCESS_ID": str(i)},
                stdout=out,
                stderr=err,
                text=True,
            )
        )
    results = []
    for proc, (out, err) in zip(procs, logs, strict=True):
        proc.wait(timeout=600)
        out.seek(0)
        err.seek(0)
        stderr = "\n".join(
            line for line in err.read().splitlines() if not line.startswith(("[Gloo]", "E1", "W1", "I1", "    @"))
        )
        if expect_failure:
            results.append((proc.returncode, stderr))
            continue
        assert proc.returncode == 0, stderr[-3000:]
        results.append(json.loads(out.read().split("RESULT", 1)[1]))
        out.close()
        err.close()
    return results


def test_two_processes_train_what_one_process_trains_resume_and_hold_their_halves(tmp_path, single):
    pair = _run(tmp_path / "pair", 2, processes=2)
    assert [o["process"] for o in pair] == [0, 1] and all(o["processes"] == 2 for o in pair)
    assert pair[0]["mesh"] == {"replica": 2, "data": 1}  # seed 0 on process 0's device, seed 1 on process 1's
    for out in pair:  # every process gets the gathered replicas; replica k = seed k of the one-process run
        for a, b in zip(single, out["params"], strict=True):
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-5)
    lines = (tmp_path / "pair" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]  # one writer: no line twice
    # Checkpoint 2 damaged on the shared disk: both processes find it bad, resume (the sharded restore) from
    # checkpoint 1, and process 0 alone moves it aside (the others wait for it, then reload).
    step_dir = tmp_path / "pair" / "checkpoints" / "2"
    biggest = max(
        (p for p in step_dir.rglob("*") if p.is_file() and p.name != "vae_jax_sha256.json"),
        key=lambda p: p.stat().st_size,
    )
    data = bytearray(biggest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    biggest.write_bytes(bytes(data))
    recovered = _run(tmp_path / "pair", 3, processes=2)
    assert all(o["resumed_from"] == 1 for o in recovered)
    assert (tmp_path / "pair" / "bad_checkpoints" / "2").is_dir()  # (checkpoints/2 is epoch 2 trained again)
    lines = (tmp_path / "pair" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2, 3]

    # Resident, one seed, from a folder of PNG files: process 0 alone decodes it into the workdir, and each process
    # memory-maps that file. The splits' rows are split along the data axis, which spans the two processes: each
    # puts only its 2048 of the 4096 training rows and 32 of the 64 test rows on its device, has read from the file
    # only about that half (the pages of its maps that it touched: the kernel maps whole page-cache folios, measured
    # up to 2 MiB beyond the rows read), and they train the one-process model, which read the folder itself. The
    # digits are tiled 3 x 3 (84 x 84, 28 MiB of images) to make the file large against the folios.
    x_train, y_train, x_test, y_test = (np.tile(a, (1, 3, 3)) if a.ndim == 3 else a for a in data_lib.embedded_mnist())
    for split, images, labels, count in (("train", x_train, y_train, 4096), ("test", x_test, y_test, 64)):
        for i in range(count):
            os.makedirs(tmp_path / "digits" / split / str(labels[i]), exist_ok=True)
            Image.fromarray(images[i]).save(tmp_path / "digits" / split / str(labels[i]) / f"{i}.png")
    spec = f"folder:{tmp_path / 'digits'}"
    images_kib = (4096 + 64) * 84 * 84 / 1024
    single_folder = _run_here(tmp_path / "single_folder", 2, seeds="1", spec=spec)
    assert not single_folder["memory_mapped"]  # one process: the folder read into memory
    resident = _run(tmp_path / "resident", 2, processes=2, seeds="1", spec=spec)
    decoded = tmp_path / "resident" / ".decoded-data.npz"
    assert data_lib.read_npz_notes(str(decoded))["source"] == spec
    for out in resident:
        assert out["memory_mapped"] and not out["streamed"] and out["mesh"] == {"replica": 1, "data": 2}
        assert out["source"] == spec
        assert sorted(out["placed_rows"]) == [[[32], 64], [[2048], 4096]]  # test split, training split
        assert 0.45 * images_kib < out["mapped_kib"] < 0.65 * images_kib, (out["mapped_kib"], images_kib)  # not all
        for a, b in zip(single_folder["params"], out["params"], strict=True):
            # The all-reduce's order of float sums can flip Adam's sign(g) on near-zero gradients: a few of the
            # 225,792 weights moved by up to 1e-4 (measured), well below a step (learning rate 1e-3).
            a, b = np.asarray(a)[0], np.asarray(b)[0]
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=3e-4)
            assert np.mean(np.abs(a - b) > 1e-5) < 1e-3


def test_one_process_stopping_with_an_error_stops_the_others_at_their_next_barrier(tmp_path):
    """Process 1's workdir cannot be written: it stops with the one-line error, and process 0, waiting for it at
    the workdir barrier, stops at once naming it (instead of waiting out the coordination service's timeouts)."""
    import time

    (tmp_path / "file1").write_text("")  # process 1's workdir lies under a file
    (tmp_path / "file0").mkdir()
    start = time.monotonic()
    (code0, err0), (code1, err1) = _run(str(tmp_path / "filePROCESS" / "run"), 1, processes=2, expect_failure=True)
    seconds = time.monotonic() - start
    assert code1 == 2 and "error: --workdir" in err1 and "not a writable directory" in err1
    assert code0 == 1, err0[-2000:]
    assert "error: --distributed: process 1 stopped (--workdir" in err0 and "process 0 stops too" in err0
    assert seconds < 120  # the barrier timeout is 600 s, the coordination service's shutdown barrier's 300 s


def test_a_dataset_that_process_0_cannot_decode_stops_the_process_waiting_for_it(tmp_path):
    """Process 0 alone decodes a folder dataset; one of its files is broken: process 0 stops with the data error,
    and process 1, waiting for the decoded file, stops at once naming it (not after the 4-hour wait)."""
    import time

    for i in range(4):
        Image.fromarray(np.full((8, 8), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "4.png").write_bytes(b"not a png")
    start = time.monotonic()
    (code0, err0), (code1, err1) = _run(
        tmp_path / "run", 1, processes=2, expect_failure=True, spec=f"folder:{tmp_path}"
    )
    assert code0 == 2 and "error: --dataset folder:" in err0 and "4.png is not a readable image" in err0
    assert code1 == 1, err1[-2000:]
    assert "error: --distributed: process 0 stopped (--dataset folder:" in err1 and "process 1 stops too" in err1
    assert time.monotonic() - start < 120
    assert not (tmp_path / "run" / ".decoded-data.npz").exists()


def test_a_process_killed_between_epochs_stops_the_one_waiting_for_it_within_the_peer_timeout(tmp_path):
    """Process 1 is killed (SIGKILL) on its way to saving checkpoint 2, while process 0 saves it. Process 0's save
    fails (one line), and JAX's shutdown barrier then waits for process 1 until JAX's heartbeat timeout
    (``heartbeat_timeout_seconds`` = VAE_JAX_PEER_TIMEOUT_S, 5 s here; JAX's default is 100 s) ends process 0
    (SIGABRT, with JAX's own message naming the silent process). Checkpoint 1 is what is left to resume from."""
    import time

    start = time.monotonic()
    (code0, err0), (code1, _) = _run(
        tmp_path / "run",
        3,
        processes=2,
        seeds="1",
        expect_failure=True,
        env={"DIE_AT_SAVE": "2", "VAE_JAX_PEER_TIMEOUT_S": "5"},
    )
    seconds = time.monotonic() - start
    assert code1 == -9
    assert code0 == -6, err0[-2000:]  # JAX ends a process whose peer stopped sending heartbeats with abort()
    # Orbax's save fails in a collective with the dead process, and process 0 says so; then, at exit, JAX's
    # shutdown barrier waits for process 1 until the heartbeat timeout.
    (saving,) = [line for line in err0.splitlines() if line.startswith("error:")]
    assert saving.startswith("error: could not save checkpoint 2 in ")  # the collective's reason varies with timing
    assert "or did another process of this --distributed run stop?); checkpoint 1 is intact" in saving
    assert "Terminating process because the JAX distributed service detected fatal errors" in err0
    assert "Task 1 heartbeat timeout" in err0
    assert seconds < 60  # two start-ups, two epochs and the 5 s; JAX's default heartbeat timeout alone is 100 s
    # What a restart resumes from (restarting after a kill is the test above's).
    assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir() if p.name.isdigit()) == ["1"]


def test_a_streamed_run_stopped_by_sigterm_then_by_a_killed_process_resumes_to_the_one_process_result(tmp_path, single):
    """One streamed run of seed 0 (the mesh's data axis spans the two processes), 2 epochs, checkpoints every 10
    epochs (so only a stop saves one), started three times:

    1. Process 1 alone gets a SIGTERM in the middle of epoch 1: both processes finish epoch 1, save checkpoint 1
       together and exit 143.
    2. Started again, it resumes from epoch 1, and process 1 is killed (SIGKILL) in the middle of epoch 2.
       Process 0's next all-reduce fails; it stops within seconds with a one-line error naming the checkpoint
       kept (before, JAX's shutdown barrier held it for the 100 s heartbeat timeout and then aborted it).
    3. Started again, it resumes from epoch 1 and finishes: each process has read only its half of each batch of
       epoch 2, and the model is replica 0 of the one-process run (the gradient all-reduce only reorders float
       sums)."""
    import time

    run = tmp_path / "run"
    flags = dict(processes=2, seeds="1", stream=True, env={"CHECKPOINT_EVERY": "10"})

    def epochs_logged():
        return [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]

    def checkpoints():
        return sorted(p.name for p in (run / "checkpoints").iterdir() if p.name.isdigit())

    # 4 steps an epoch of 32 rows each per process: on reading step 3 of 8 (Grain reads ahead a little).
    term = {**flags, "env": {**flags["env"], "TERM_AT_ROWS": str(2 * 32 + 1)}}
    (code0, err0), (code1, err1) = _run(run, 2, expect_failure=True, **term)
    assert (code0, code1) == (143, 143), (err0[-2000:], err1[-2000:])
    assert "SIGTERM: stopping after this epoch" in err1 and "SIGTERM" not in err0.split("error:")[0]  # 1 alone
    for err in (err0, err1):
        (line,) = [line for line in err.splitlines() if line.startswith("error:")]
        assert line.startswith("error: stopped by SIGTERM after epoch 1; checkpoint 1 is saved in "), line
    assert checkpoints() == ["1"] and epochs_logged() == [1]

    start = time.monotonic()  # on reading step 3 of epoch 2 (the restarted process reads from epoch 2 on)
    (code0, err0), (code1, _) = _run(run, 2, expect_failure=True, die_at_rows=2 * 32 + 1, **flags)
    seconds = time.monotonic() - start
    assert code1 == -9
    assert code0 == 1, err0[-2000:]
    (line,) = [line for line in err0.splitlines() if line.startswith("error:")]
    assert line.startswith("error: --distributed: process 0 stops: ") and "Gloo" in line
    assert "the checkpoint of epoch 1 (saved before that) is kept in" in line and "start every process again" in line
    assert seconds < 60  # two start-ups and a few steps; the heartbeat timeout alone is 100 s
    assert checkpoints() == ["1"] and epochs_logged() == [1]

    resumed = _run(run, 2, **flags)
    assert epochs_logged() == [1, 2]
    for out in resumed:
        assert out["resumed_from"] == 1 and out["streamed"] and out["mesh"] == {"replica": 1, "data": 2}
        assert out["rows_read"] == (256 // 64) * 64 // 2  # its half of each batch of epoch 2, nothing more
        for a, b in zip(single, out["params"], strict=True):
            np.testing.assert_allclose(np.asarray(a)[0], np.asarray(b)[0], rtol=1e-4, atol=1e-5)


def test_jax_preemption_service_swallows_a_sigterm_for_the_whole_process():
    """Why a stop is agreed with a collective (vae_jax.distributed.agreed_stop) rather than with
    ``multihost_utils.reached_preemption_sync_point``: with ``jax_enable_preemption_service`` JAX catches SIGTERM
    in C++ from ``jax.distributed.initialize`` on, so a SIGTERM outside the training loop (loading data, drawing
    figures) no longer ends the process; it only marks the next sync point."""
    code = textwrap.dedent(f"""
        import os, signal, time, jax
        jax.config.update("jax_enable_preemption_service", True)
        jax.distributed.initialize("127.0.0.1:{_free_port()}", num_processes=1, process_id=0)
        from jax.experimental import multihost_utils
        before = multihost_utils.reached_preemption_sync_point(0)  # no notice yet: not a sync point
        os.kill(os.getpid(), signal.SIGTERM)
        for step in range(1, 101):  # the notice, once it arrives, makes a later step the sync point
            if multihost_utils.reached_preemption_sync_point(step):
                break
            time.sleep(0.05)
        print("alive", before, step < 100, flush=True)
        # End here: JAX's exit-time shutdown of the preemption service hung once in ~100 runs under load,
        # after everything this test checks had happened. The shutdown is not what the test is about.
        os._exit(0)
    """)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]  # a SIGTERM with Python's default handling exits -15
    # JAX's notifier took it (its log line may not reach stderr before the exit; the sync point is the API's word)
    assert proc.stdout.strip() == "alive False True", (proc.stdout, proc.stderr[-2000:])
