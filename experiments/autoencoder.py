"""Train a plain, denoising, masked or contractive autoencoder and write metrics, checkpoints and figures.

    python -m experiments.autoencoder --variant plain --arch mlp --epochs 20 --workdir runs/ae-plain
    python -m experiments.autoencoder --variant denoising --noise salt_and_pepper --noise-rate 0.3 --workdir runs/ae-dn
    python -m experiments.autoencoder --variant masked --mask-ratio 0.5 --patch-size 4 --workdir runs/ae-mask
    python -m experiments.autoencoder --variant contractive --contractive-weight 0.01 --workdir runs/ae-cae
    python -m experiments.autoencoder --arch conv --channels 16,32 --upsampling unpool --workdir runs/ae-conv
    python -m experiments.autoencoder --epochs 2 --hidden 128 --workdir /tmp/ae-local  # smoke test

Test metrics (per example, averaged, in metrics.jsonl and summary.json): ``loss``, ``recon`` and
``mse``/``psnr`` of the clean input's reconstruction, plus each variant's own (``noisy_psnr``,
``inpaint_psnr``, ``jacobian_fro2``, ...; ``metric_descriptions`` in summary.json says what each
PSNR compares). Test corruptions use a fixed evaluation key, so repeated evaluations agree.
Outputs (docs/experiments/autoencoder.md): config.json, metrics.jsonl, summary.json, checkpoints/,
reconstructions.png, loss_curves.png, psnr_curves.png. Results go to stdout, logs to stderr.
"""

from __future__ import annotations

import os

import numpy as np

from vae_jax import corruption, evaluate, plots, runner, tasks
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors

NUM_SHOWN = 10
VARIANT_LOSS_KEYS = {"masked": ("test_masked_recon", "test_all_recon"), "contractive": ("test_penalty",)}


def corrupted_inputs(config: tasks.AEConfig, x: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """(the model's input for ``x``, the patch mask or None), drawn from the fixed evaluation key."""
    key = evaluate.eval_key()
    if config.variant == "denoising":
        noise_fn = corruption.make_noise_fn(config.noise, config.noise_std, config.noise_rate)
        return np.asarray(noise_fn(key, x)), None
    if config.variant == "masked":
        mask = corruption.random_patch_mask(key, x.shape[:1], x.shape[1:3], config.mask_ratio, config.patch_size)
        return np.asarray(corruption.apply_mask(x, mask)), np.asarray(mask)
    return x, None


def write_figures(config: tasks.AEConfig, model, result: runner.TrainResult) -> list[str]:
    params = result.params(0)
    x = result.dataset.x_test[:NUM_SHOWN]
    x_in, mask = corrupted_inputs(config, x)
    output = tasks.ae_reconstruct(model, params, x_in, config.output)
    if config.variant == "denoising":
        rows, labels = [x, x_in, output], ["original", f"noisy ({config.noise})", "denoised"]
    elif config.variant == "masked":
        inpainted = np.where(mask > 0, output, x)
        rows, labels = [x, x_in, output, inpainted], ["original", "masked input", "output", "inpainted"]
    else:
        rows, labels = [x, output], ["original", "reconstruction"]
    arch = config.arch if config.arch == "mlp" else f"conv, {config.upsampling}"
    workdir = config.workdir
    title = f"{config.variant} autoencoder ({arch}): test digits (seed {result.seeds[0]})"
    paths = [plots.save_image_rows(rows, labels, os.path.join(workdir, "reconstructions.png"), title)]
    loss_keys = ["train_loss", "test_loss", "test_recon", *VARIANT_LOSS_KEYS.get(config.variant, ())]
    unit = "nats" if config.loss == "bce" else "squared error"
    paths.append(plots.save_loss_curves(result.history, workdir, loss_keys, ylabel=f"{unit} per example"))
    psnr_keys = ["test_psnr", "test_noisy_psnr", "test_denoised_psnr", "test_inpaint_psnr", "test_masked_input_psnr"]
    legend = {f"test_{k}": text for k, text in metric_labels(config).items()}
    path, title = os.path.join(workdir, "psnr_curves.png"), "Test PSNR (higher is better)"
    paths.append(plots.save_curves(result.history, psnr_keys, path, title, ylabel="dB", labels=legend))
    return paths


def metric_labels(config: tasks.AEConfig) -> dict[str, str]:
    """What each PSNR metric compares, for the figure legend and ``summary.json``."""
    clean = (
        "psnr: output for the clean input vs clean"
        if config.variant in ("denoising", "masked")
        else "psnr: reconstruction vs input"
    )
    return {
        "psnr": clean,
        "noisy_psnr": "noisy_psnr: noisy input vs clean",
        "denoised_psnr": "denoised_psnr: output for the noisy input vs clean",
        "inpaint_psnr": "inpaint_psnr: output for the masked input vs clean, masked pixels",
        "masked_input_psnr": "masked_input_psnr: blank masked input vs clean, masked pixels",
    }


def result_line(config: tasks.AEConfig, summary: dict) -> str:
    test = {name: stats["mean"] for name, stats in summary["test"].items()}
    clean = " (clean input)" if config.variant in ("denoising", "masked") else ""
    parts = [f"test MSE {test['mse']:.4f}, PSNR {test['psnr']:.2f} dB{clean}"]
    if config.variant == "denoising":
        parts.append(
            f"noisy input {test['noisy_psnr']:.2f} dB -> output for the noisy input (denoised) "
            f"{test['denoised_psnr']:.2f} dB"
        )
    elif config.variant == "masked":
        parts.append(
            f"inpainting PSNR on the masked region {test['inpaint_psnr']:.2f} dB "
            f"(blank input {test['masked_input_psnr']:.2f} dB)"
        )
    elif config.variant == "contractive":
        parts.append(f"||dz/dx||_F^2 {test['jacobian_fro2']:.3f}")
    return "; ".join(parts)


@user_errors()
def main(argv=None) -> dict:
    """Runs the job; returns the summary (also in ``WORKDIR/summary.json``)."""
    config = parse_config(tasks.AEConfig, argv, description=__doc__.split("\n\n")[0])
    return runner.train_and_report(config, tasks.ae_task, report)


def report(config: tasks.AEConfig, model, result: runner.TrainResult) -> dict:
    """Figures, ``summary.json`` and the result line (process 0 alone); returns the summary."""
    figures = write_figures(config, model, result)
    labels = metric_labels(config)
    result.summary["metric_descriptions"] = {
        k: labels[k].split(": ", 1)[1] for k in result.summary["test"] if k in labels
    }
    workdir_lib.write_summary(config.workdir, result.summary, figures)
    print(f"{config.variant} autoencoder: {result_line(config, result.summary)}; outputs in {config.workdir}")
    return result.summary


if __name__ == "__main__":
    main()
