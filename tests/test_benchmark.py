"""The benchmark's profile section: own time of nested XLA ops, and op kinds read from a compiled module."""

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import profiling, timing


def test_op_self_times_subtract_nested_ops_per_thread_and_module():
    def op(ts, dur, name, tid=1, module="jit_epoch"):
        return {
            "ph": "X",
            "pid": 7,
            "tid": tid,
            "ts": ts,
            "dur": dur,
            "name": name,
            "args": {"hlo_module": module, "hlo_op": name},
        }

    events = [
        op(0, 100, "while.1"),
        op(10, 30, "add_fusion"),
        op(50, 40, "dot.2"),  # the loop body inside the while
        op(60, 5, "dot.2", tid=2),  # another thread: not nested in the while
        op(200, 20, "add_fusion"),  # after the while: counted again
        op(300, 8, "copy.1", module="jit_init"),  # another program, later
        {"ph": "X", "pid": 7, "tid": 1, "ts": 12, "dur": 1, "name": "end: add_fusion", "args": {}},  # no hlo_op
        {"ph": "M", "pid": 7, "name": "process_name", "args": {"name": "/host:CPU"}},
    ]
    totals = profiling.op_self_times(events)
    assert totals == {"jit_epoch": {"while.1": 30.0, "add_fusion": 50.0, "dot.2": 45.0}, "jit_init": {"copy.1": 8.0}}


def test_op_kinds_come_from_the_opcodes_inside_each_compiled_fusion():
    def f(a, b, c):
        h = jax.nn.relu(a @ b + 1.0)
        return jnp.sum(h * c, axis=1), jnp.exp(c) * 2.0

    args = [jnp.ones((64, 32)), jnp.ones((32, 16)), jnp.ones((64, 16))]
    text = jax.jit(f).lower(*args).compile().as_text()
    opcodes = profiling.hlo_opcodes(text)
    kinds = {name: profiling.op_kind(ops) for name, ops in opcodes.items()}
    dots = [name for name, ops in opcodes.items() if "dot" in ops]
    assert dots and all(kinds[name] == "matrix multiplies (with fused epilogues)" for name in dots)
    assert "elementwise (fused)" in kinds.values()  # exp(c) * 2 has no dot and no reduce
    assert profiling.op_kind({"reduce", "add", "parameter"}) == "reductions (fused)"
    assert profiling.op_kind({"copy", "parameter"}) == "copies, slices, gathers"
    assert profiling.op_kind({"while"}) == "control flow (own time)"


def test_profile_epoch_reports_the_matrix_multiplies_of_a_scan_of_matmuls():
    def epoch(w, xs):
        def step(w, x):
            return w - 1e-3 * (x.T @ jnp.tanh(x @ w)), None

        return jax.lax.scan(step, w, xs)[0]

    fn = jax.jit(epoch)
    w, xs = jnp.ones((128, 128)) * 0.01, jnp.ones((20, 64, 128))
    timed = timing.SteadyEpochs(lambda: w, lambda w, i: fn(w, xs))
    result = profiling.profile_epoch(timed, "scan", profiling.hlo_opcodes(fn.lower(w, xs).compile().as_text()))
    assert "error" not in result, result
    assert result["ms_by_kind"].get("matrix multiplies (with fused epilogues)", 0.0) > 0.0
    np.testing.assert_allclose(sum(result["ms_by_kind"].values()), result["op_ms"], rtol=1e-6)
    assert result["top_ops_ms"] and result["wall_seconds"] > 0


def test_steady_epochs_continue_one_training_and_time_each_epoch():
    starts, seen = [], []

    def start():
        starts.append(1)
        return jnp.zeros(())

    def epoch(carry, i):
        seen.append((float(carry), i))
        return carry + i + 1

    timed = timing.SteadyEpochs(start, epoch)
    seconds = [timed() for _ in range(3)]
    assert starts == [1] and seen == [(0.0, 0), (1.0, 1), (3.0, 2)] and float(timed.carry) == 6.0
    assert all(s >= 0 for s in seconds)
