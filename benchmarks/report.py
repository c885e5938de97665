"""The benchmark's report on stdout: one line of machine, then a table or line per section run."""


def print_table(results: dict) -> None:
    """Every section in ``results`` (the JSON the benchmark writes), then the sections that failed."""
    print_machine(results["machine"], results["matmul_gflops"])
    for name, print_section in PRINTERS.items():
        if name in results and "error" not in results[name]:
            print_section(results[name])
    for name in ("devices", "startup"):
        if "error" in results.get(name, {}):
            print(f"{name}: failed ({results[name]['error']})")


def print_machine(machine: dict, matmul_gflops: float) -> None:
    """The machine, and the float32 matrix-multiply rate measured in the same run."""
    print(
        f"machine: {machine['processor']}, {machine['cpu_count']} cores, "
        f"{machine['device']}; matrix multiply {matmul_gflops:.1f} GFLOP/s (float32, 1024x1024)"
    )


def print_epoch(rows: dict) -> None:
    """The epoch section: one line per batch size, every variant's seconds per epoch."""
    print(
        "batch | runner path s/epoch (layout) | minimal scan s/epoch | runner/minimal (paired) | runner unguarded "
        "(/minimal) | vmapped R=1 | jit step loop | torch eager | runner GFLOP/s (% of matmul)"
    )
    for bs, row in rows.items():
        torch_s = row.get("torch_eager", {}).get("seconds_per_epoch")
        print(
            f"{bs:>5} | {row['runner_path']['seconds_per_epoch']:.3f} ({row['runner_path_layout']}) | "
            f"{row['minimal_scan_loop']['seconds_per_epoch']:.3f} | {row['runner_path_vs_minimal']:.2f} "
            f"({row['runner_path_vs_minimal_paired']:.3f}) | "
            f"{row['runner_path_unguarded']['seconds_per_epoch']:.3f} "
            f"({row['runner_path_unguarded_vs_minimal']:.2f}) | "
            f"{row['vmapped_one_seed']['seconds_per_epoch']:.3f} | {row['jit_step_loop']['seconds_per_epoch']:.3f} | "
            f"{'n/a' if torch_s is None else f'{torch_s:.3f}'} | {row['runner_path']['gflops']:.1f} "
            f"({row['runner_path']['percent_of_matmul']:.0f}%)"
        )


def print_conv(c: dict) -> None:
    """The conv section: the runner path, the scan-fused epoch and PyTorch eager."""
    torch_s = c.get("torch_eager", {}).get("seconds_per_epoch")
    scan_s = c.get("runner_path_scan", {}).get("seconds_per_epoch")
    print(
        f"conv VAE, batch {c['batch_size']}: runner path {c['runner_path']['seconds_per_epoch']:.3f} s/epoch "
        f"({c['runner_path_epoch_loop']})"
        + ("" if scan_s is None else f", scan-fused {scan_s:.3f} s")
        + (
            ", torch eager n/a"
            if torch_s is None
            else f", torch eager {torch_s:.3f} s ({c['runner_path_speedup_over_torch']:.2f}x)"
        )
    )


def print_seeds(rows: dict) -> None:
    """The seeds section: N seeds vmapped in one run against N x one seed, per batch size and N."""
    print("seeds: batch | N | vmap s/epoch | N x one seed s | speed-up over N single runs")
    for bs, row in rows.items():
        for n, entry in row.items():
            if n == "one_seed":
                continue
            print(
                f"{bs:>5} | {n:>3} | {entry['vmap']['seconds_per_epoch']:.3f} | "
                f"{entry['n_single_runs_seconds']:.3f} | {entry['vmap']['speedup_over_n_single_runs']:.2f}x"
            )


def print_profile(profile: dict) -> None:
    """The profile section: XLA's op time by kind for the runner path and the minimal loop."""
    for name in ("runner_path", "minimal_scan_loop"):
        p = profile[name]
        if "error" in p:
            print(f"profile {name}: failed ({p['error']})")
            continue
        print(
            f"profile, batch {profile['batch_size']}, {name}: {p['wall_seconds']:.3f} s wall, "
            f"{p['op_ms']:.1f} ms in XLA ops: " + ", ".join(f"{k} {v:.1f} ms" for k, v in p["ms_by_kind"].items())
        )


def print_target(t: dict) -> None:
    """The target section: training seconds to reach the test neg-ELBO."""
    print(
        f"time to test neg-ELBO <= {t['target_neg_elbo']}: "
        + (f"{t['seconds']:.1f} s of training, {t['epochs']} epochs" if t["reached"] else "not reached")
    )


def print_devices(devices: dict) -> None:
    """The devices section: seconds per epoch on each simulated device count."""
    for n, v in devices.items():
        if isinstance(v, dict):
            print(
                f"{n} simulated CPU device(s), batch {devices['batch_size']}: "
                f"{v['seconds_per_epoch']:.3f} s/epoch, {v['examples_per_second']:.0f} examples/s, mesh {v['mesh']}"
            )


def print_startup(s: dict) -> None:
    """The startup section: whole-process seconds with cold and warm caches, and PyTorch's."""
    torch_run = s.get("torch_eager")
    print(
        f"experiments.vae --epochs {s['epochs']} whole process: cold caches {s['cold_caches']['seconds']:.1f} s, "
        f"cold compilation cache {s['cold_compilation_cache']['seconds']:.1f} s, warm {s['warm_caches']['seconds']:.1f} s "
        f"(test neg-ELBO {s['warm_caches']['test_neg_elbo']:.2f}); benchmarks.torch_vae: "
        + (
            "n/a"
            if torch_run is None
            else f"{torch_run['seconds']:.1f} s (test neg-ELBO {torch_run['test_neg_elbo']:.2f})"
        )
    )


def print_commands(results: dict) -> None:
    """The commands section as a table: whole process, after training, rerun."""
    print("| command | whole process | start-up | compilation | training | after training | rerun |")
    print("|---|---|---|---|---|---|---|")
    for name, row in results.items():
        if "error" in row:
            print(f"| `experiments.{name} {row['flags']}` | failed: {row['error']} | | | | | |")
            continue
        p = row["fresh_phases"]
        after = p.get("after_training", sum(p.get(k, 0.0) for k in ("analyses", "figures")))
        print(
            f"| `experiments.{name} {row['flags']}` | {row['fresh_seconds']:.1f} s | {p.get('startup', 0):.1f} s "
            f"| {p.get('compilation', 0):.1f} s | {p.get('training', 0):.1f} s | {after:.1f} s "
            f"| {row['rerun_seconds']:.1f} s |"
        )


# The sections' printers, in the order the report prints them.
PRINTERS = {
    "epoch": print_epoch,
    "conv": print_conv,
    "seeds": print_seeds,
    "profile": print_profile,
    "target": print_target,
    "devices": print_devices,
    "startup": print_startup,
    "commands": print_commands,
}
