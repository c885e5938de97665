"""The hierarchical VAE beside a one-level VAE of about the same parameter count (``experiments.hvae``).

:func:`matched_vae_config` picks the one-level VAE; :func:`compare` evaluates both on the test split and
draws the figures; :func:`print_results` writes the result lines.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import dataclasses
import functools
import os

import jax
import numpy as np

from vae_jax import diagnostics, distributed, evaluate, parallel, plots, runner
from vae_jax import workdir as workdir_lib
from vae_jax.models import init_params
from vae_jax.tasks import hvae
from vae_jax.tasks import vae as vae_tasks

EVAL_IWAE_K = 500


def matched_vae_config(config: hvae.HVAEConfig, image_shape) -> tuple[vae_tasks.VAEConfig, int, int]:
    """A one-level VAEConfig with z of size D1 whose parameter count is the closest to the HVAE's.

    Its hidden widths are the HVAE's scaled by a common factor (on a grid). Returns (config, VAE params,
    HVAE params)."""
    shared = {f.name: getattr(config, f.name) for f in dataclasses.fields(vae_tasks.VAEObjectiveConfig)}
    shared["workdir"] = os.path.join(config.workdir, "vae")

    def count(model):  # one init_params initializes the HVAE and the one-level VAE
        return evaluate.count_params(jax.eval_shape(lambda: init_params(model, jax.random.key(0))))

    target = count(hvae.build_hvae(config, image_shape))
    candidates = [  # each distinct width once; the parameter count grows strictly along the list
        vae_tasks.VAEConfig(**shared, latent_dim=config.latent_dim, hidden=hidden)
        for hidden in dict.fromkeys(
            tuple(max(1, int(round(w * scale))) for w in config.hidden) for scale in np.linspace(0.8, 1.5, 71)
        )
    ]

    @functools.cache
    def count_at(i: int) -> int:
        return count(vae_tasks.build_vae(candidates[i], image_shape))

    # the closest count is beside the first one >= target (bisection: a few counts instead of all 71)
    above = bisect.bisect_left(range(len(candidates)), target, key=count_at)
    best = min((i for i in (above - 1, above) if 0 <= i < len(candidates)), key=lambda i: abs(count_at(i) - target))
    return candidates[best], count_at(best), target


def evaluate_model(parts, result: runner.TrainResult, config, collapse: dict, iwae_examples: int) -> dict:
    """Test metrics of the first seed of ``result`` and its collapse diagnostics.

    The IWAE bound (with ``iwae_nll_per_example``) is computed on ``iwae_examples`` of the images
    (:func:`iwae_subset`; 0: all). On a subset, the single-sample terms are the run's own last test
    evaluation (``summary.json``, the numbers :func:`vae_jax.evaluate.evaluate_runs` would give) and the
    active units those of the collapse diagnostics (the same means and threshold).
    """
    first = jax.tree_util.tree_map(lambda a: a[:1], result.state.params)
    # --devices: the devices share each batch (in a --distributed run each process evaluates on its own device)
    sharding = parallel.eval_batch_sharding(config.devices) if jax.process_count() == 1 else None
    pixels = result.dataset.test_pixels
    subset = pixels[iwae_subset(len(pixels), iwae_examples)]
    bound_only = len(subset) < len(pixels)
    metrics = evaluate.evaluate_runs(
        parts,
        first,
        {"x": subset},
        iwae_k=EVAL_IWAE_K,
        eval_batch_size=config.eval_batch_size,
        batch_sharding=sharding,
        per_example=True,
        bound_only=bound_only,
    )[0]
    if bound_only:  # the single-sample terms and active units on every image, from the run and the diagnostics
        test = {name: terms["per_seed"][0] for name, terms in result.summary["test"].items()}
        units = {layer: d["active_units"] for layer, d in collapse.items()}
        dims = {layer: d["latent_dim"] for layer, d in collapse.items()}
        metrics.update(test, n=len(pixels), **evaluate.unit_entries(units, dims))
    metrics["iwae_examples"] = len(subset)
    # summary.json's collapse ``diagnostics``: per layer for the HVAE, one dict for the one-level VAE
    result.summary["diagnostics"] = collapse if len(collapse) > 1 else collapse["z"]
    workdir_lib.write_summary(config.workdir, result.summary)
    return {
        **metrics,
        "mutual_information": {k: v["mutual_information"] for k, v in collapse.items()},
        "mean_kl_per_dim": {k: v["mean_kl_per_dim"] for k, v in collapse.items()},
    }


def iwae_subset(num_test: int, iwae_examples: int) -> np.ndarray:
    """Indices of the test images the IWAE bound uses: a fixed random subset (NumPy seed 0), in order.

    Random, not the first N: a test split may be ordered (MNIST's first 5,000 test digits are the cleaner
    ones). ``iwae_examples`` 0 or at least ``num_test``: every image.
    """
    if not iwae_examples or iwae_examples >= num_test:
        return np.arange(num_test)
    return np.sort(np.random.default_rng(0).permutation(num_test)[:iwae_examples])


def paired_difference(vae_nll: np.ndarray, hvae_nll: np.ndarray) -> dict:
    """The VAE's IWAE NLL minus the HVAE's on the same test images: mean and standard error of the mean."""
    d = np.asarray(vae_nll, np.float64) - np.asarray(hvae_nll, np.float64)
    return {
        "vae_minus_hvae": float(d.mean()),
        "standard_error": float(d.std(ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None,
        "examples": len(d),
    }


def compare(config, vae_config, top_workdir: str, dataset, trained: dict, iwae_examples: int) -> dict:
    """Evaluates both models on the test split and draws the figures; returns the comparison. ``trained`` maps
    ``hvae`` and ``vae`` to ``(model, task, TrainResult, parameter count)``.

    The two models are evaluated in two threads at once: each one's programs compile while the other's compile
    or run (same keys and programs as one after the other, so the same numbers).
    """
    (h_model, h_task, h_result, hvae_params), (v_model, v_task, v_result, vae_params) = trained["hvae"], trained["vae"]
    key = jax.random.key(config.seed)

    def evaluate_hvae() -> dict:
        collapse = hvae.collapse_diagnostics(h_model, h_result.params(0), dataset.x_test, key)
        parts = hvae.hvae_eval_parts(h_model, h_task, config)
        return evaluate_model(parts, h_result, config, collapse, iwae_examples)

    def evaluate_vae() -> dict:
        collapse = {"z": diagnostics.vae_collapse_diagnostics(v_model, v_result.params(0), dataset.x_test, key)}
        parts = vae_tasks.gaussian_eval_parts(v_model, v_task, vae_config)
        return evaluate_model(parts, v_result, vae_config, collapse, iwae_examples)

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        h_metrics, v_metrics = pool.submit(evaluate_hvae), pool.submit(evaluate_vae)
        h_metrics, v_metrics = h_metrics.result(), v_metrics.result()
    comparison = {
        "hvae": {
            "params": hvae_params,
            "latent_dims": {"z1": config.latent_dim, "z2": config.top_latent_dim},
            "hidden": list(config.hidden),
            "top_hidden": list(config.top_hidden),
            **h_metrics,
        },
        "vae": {
            "params": vae_params,
            "latent_dims": {"z": vae_config.latent_dim},
            "hidden": list(vae_config.hidden),
            **v_metrics,
        },
        "epochs": config.epochs,
        "seed": h_result.seeds[0],
        "dataset": dataset.summary(),
        "measure": evaluate.likelihood_measure(config.likelihood, dataset.x_test),
        # summed over metrics.jsonl, so a resumed run reports the training its checkpoints hold
        "train_seconds": {name: sum(line["seconds"] for line in r.history) for name, (_, _, r, _) in trained.items()},
    }
    comparison["iwae_difference"] = paired_difference(
        comparison["vae"].pop("iwae_nll_per_example"), comparison["hvae"].pop("iwae_nll_per_example")
    )
    figures = draw_figures(comparison, top_workdir, dataset.x_test[:10], key, trained)
    comparison["figures"] = [os.path.basename(p) for p in figures]
    return comparison


def draw_figures(comparison: dict, top_workdir: str, x_test: np.ndarray, key: jax.Array, trained: dict) -> list[str]:
    """kl_per_dim.png, samples.png (ancestral samples of both) and reconstructions.png of ``x_test``."""
    (h_model, _, h_result, _), (v_model, _, v_result, _) = trained["hvae"], trained["vae"]
    h_params, v_params = h_result.params(0), v_result.params(0)
    return [
        plots.save_kl_per_dim(
            {
                **{f"HVAE {k}": v for k, v in comparison["hvae"]["mean_kl_per_dim"].items()},
                "VAE z": comparison["vae"]["mean_kl_per_dim"]["z"],
            },
            os.path.join(top_workdir, "kl_per_dim.png"),
            "Test mean KL term per latent dimension (near 0: collapsed to the prior)",
        ),
        plots.save_image_rows(
            [hvae.sample(h_model, h_params, key, 20), vae_tasks.sample_prior(v_model, v_params, key, 20)],
            ["HVAE", "VAE"],
            os.path.join(top_workdir, "samples.png"),
            "Ancestral samples: z2 ~ N(0, I), z1 ~ p(z1|z2) (HVAE); z ~ N(0, I) (VAE)",
        ),
        plots.save_image_rows(
            [
                x_test,
                vae_tasks.reconstruct(h_model, h_params, x_test),
                vae_tasks.reconstruct(v_model, v_params, x_test),
            ],
            ["test", "HVAE", "VAE"],
            os.path.join(top_workdir, "reconstructions.png"),
            "Test images and reconstructions",
        ),
    ]


def print_results(comparison: dict, dataset, top_workdir: str) -> None:
    distributed.log(f"data: {dataset.describe()}; {comparison['measure']}")
    for name in ("hvae", "vae"):
        m = comparison[name]
        # The test split's KL per layer (comparison.json's kl_z1, kl_z2; the one-level VAE's kl).
        kl_layers = ", ".join(f"KL {k} {m['kl_' + k]:.2f}" for k in m["mean_kl_per_dim"] if f"kl_{k}" in m)
        kl_layers = kl_layers or f"KL {m['kl']:.2f}"
        mi = ", ".join(f"I(x;{k}) {v:.2f}" for k, v in m["mutual_information"].items())
        units = ", ".join(f"{k} {m['active_units_per_layer'][k]}/{m['latent_dims'][k]}" for k in m["latent_dims"])
        print(
            f"{name}: {m['params']} params; test neg-ELBO {m['neg_elbo']:.2f}, IWAE-{EVAL_IWAE_K} NLL "
            f"{m['iwae_nll']:.2f} nats ({m['iwae_examples']} test images); {kl_layers}; "
            f"active units {units}; {mi} nats"
        )
    d = comparison["iwae_difference"]
    se = "" if d["standard_error"] is None else f" ± {d['standard_error']:.2f}"
    print(
        f"IWAE-{EVAL_IWAE_K} NLL, VAE minus HVAE on the same {d['examples']} test images: {d['vae_minus_hvae']:.2f}{se}"
    )
    print(f"outputs in {top_workdir}")
