"""The profile section: where one epoch's time goes, by XLA's own op timings under ``jax.profiler.trace``."""

from __future__ import annotations

import glob
import gzip
import json
import os
import re
import statistics
import sys
import tempfile

import jax
import numpy as np

from benchmarks.epoch import JaxVariants

DATA_MOVEMENT = {
    "copy",
    "slice",
    "dynamic-slice",
    "dynamic-update-slice",
    "gather",
    "scatter",
    "transpose",
    "concatenate",
    "pad",
    "bitcast",
    "broadcast",
    "reshape",
    "iota",
    "parameter",
    "constant",
    "tuple",
    "get-tuple-element",
    "convert",
}


def hlo_opcodes(hlo_text: str) -> dict[str, set[str]]:
    """For each instruction of a compiled module (``compiled.as_text()``), the HLO opcodes it runs: its own, or
    for a fusion those of the computation it calls."""
    instruction = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = .*? ([a-z][\w\-]*)\((.*)$")
    computations: dict[str, set[str]] = {}
    calls: dict[str, tuple[str, str | None]] = {}
    current = None
    for line in hlo_text.splitlines():
        header = re.match(r"^(?:ENTRY )?%?([\w.\-]+) .*\{$", line)
        if header and " = " not in line:
            current = computations.setdefault(header.group(1), set())
            continue
        match = instruction.match(line)
        if match and current is not None:
            name, opcode, rest = match.groups()
            current.add(opcode)
            called = re.search(r"calls=%?([\w.\-]+)", rest)
            calls[name] = (opcode, called.group(1) if called else None)
    return {
        name: (computations.get(called, {opcode}) if opcode == "fusion" and called else {opcode})
        for name, (opcode, called) in calls.items()
    }


def op_kind(opcodes: set[str]) -> str:
    """What an executed op does, from the HLO opcodes it runs (see :func:`hlo_opcodes`)."""
    if opcodes & {"dot", "convolution"}:
        return "matrix multiplies (with fused epilogues)"
    if opcodes & {"while", "conditional", "call"}:
        return "control flow (own time)"
    if "reduce" in opcodes:
        return "reductions (fused)"
    if opcodes <= DATA_MOVEMENT:
        return "copies, slices, gathers"
    return "elementwise (fused)"


def op_self_times(trace_events: list[dict]) -> dict[str, dict[str, float]]:
    """Microseconds of own time (nested ops subtracted) per HLO op, per compiled module, from a profiler trace.

    ``trace_events``: the ``traceEvents`` of the Perfetto JSON that ``jax.profiler.trace(...,
    create_perfetto_trace=True)`` writes; XLA:CPU records each executed op with ``args.hlo_module``
    and ``args.hlo_op``. A ``while`` op's events enclose those of its body on the same thread.
    """
    by_thread: dict = {}
    for event in trace_events:
        args = event.get("args") or {}
        if event.get("ph") == "X" and "hlo_op" in args and "dur" in event:
            by_thread.setdefault((event.get("pid"), event.get("tid")), []).append(
                {
                    "ts": float(event["ts"]),
                    "dur": float(event["dur"]),
                    "module": args.get("hlo_module", "?"),
                    "op": args["hlo_op"],
                }
            )
    totals: dict[str, dict[str, float]] = {}
    for events in by_thread.values():
        events.sort(key=lambda e: (e["ts"], -e["dur"]))
        stack: list[dict] = []
        for event in events:
            while stack and stack[-1]["ts"] + stack[-1]["dur"] <= event["ts"]:
                stack.pop()
            event["own"] = event["dur"]
            if stack:
                stack[-1]["own"] -= event["dur"]
            stack.append(event)
        for event in events:
            ops = totals.setdefault(event["module"], {})
            ops[event["op"]] = ops.get(event["op"], 0.0) + max(event["own"], 0.0)
    return totals


def profile_epoch(fn, name: str, opcodes: dict[str, set[str]], epochs: int = 3) -> dict:
    """``epochs`` calls of ``fn`` (an epoch) under XLA's profiler, per epoch: op time by kind (``opcodes`` of its
    compiled module, :func:`hlo_opcodes`) and the top ops; the wall time is the median epoch's."""
    fn()
    with tempfile.TemporaryDirectory() as tmp:
        with jax.profiler.trace(tmp, create_perfetto_trace=True):
            seconds = statistics.median(fn() for _ in range(epochs))
        paths = glob.glob(os.path.join(tmp, "**", "perfetto_trace.json.gz"), recursive=True)
        if not paths:
            return {"error": "the profiler wrote no perfetto_trace.json.gz"}
        with gzip.open(paths[0]) as f:
            trace = json.load(f)
    modules = op_self_times(trace["traceEvents"] if isinstance(trace, dict) else trace)
    if not modules:
        return {"error": "the trace holds no XLA op events"}
    module = max(modules, key=lambda m: sum(modules[m].values()))  # the epoch program
    ops = {op: us / epochs for op, us in modules[module].items()}
    total = sum(ops.values())
    kinds: dict[str, float] = {}
    for op, us in ops.items():
        kind = op_kind(opcodes.get(op, {op.split(".")[0]}))
        kinds[kind] = kinds.get(kind, 0.0) + us
    top = sorted(ops.items(), key=lambda item: -item[1])[:12]
    print(
        f"profile {name}: {seconds:.3f}s wall, {total / 1e3:.1f} ms in ops of {module}: "
        + ", ".join(f"{k} {100 * v / total:.0f}%" for k, v in sorted(kinds.items(), key=lambda item: -item[1])),
        file=sys.stderr,
    )
    return {
        "wall_seconds": seconds,
        "module": module,
        "op_ms": total / 1e3,
        "ms_by_kind": {k: v / 1e3 for k, v in sorted(kinds.items(), key=lambda item: -item[1])},
        "top_ops_ms": {op: us / 1e3 for op, us in top},
    }


def profile_section(x: np.ndarray, pixels: np.ndarray, batch_size: int) -> dict:
    """Where one epoch's time goes, by XLA's own op timings: the runner path beside the minimal scan loop."""
    jv = JaxVariants(x, pixels, batch_size)
    runner_hlo = jv.runner.program.lower(*jv.runner.epoch_args()).compile().as_text()
    minimal_hlo = jv.minimal_epoch.lower(*jv.minimal_args()).compile().as_text()
    result = {
        "batch_size": batch_size,
        "runner_path": profile_epoch(jv.time_runner_path, "runner_path", hlo_opcodes(runner_hlo)),
        "minimal_scan_loop": profile_epoch(jv.time_minimal_scan_loop, "minimal_scan_loop", hlo_opcodes(minimal_hlo)),
    }
    runner_kinds = result["runner_path"].get("ms_by_kind", {})
    minimal_kinds = result["minimal_scan_loop"].get("ms_by_kind", {})
    result["runner_minus_minimal_ms_by_kind"] = {
        k: runner_kinds.get(k, 0.0) - minimal_kinds.get(k, 0.0) for k in sorted(set(runner_kinds) | set(minimal_kinds))
    }
    return result
