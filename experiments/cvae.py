"""Train a conditional VAE and measure whether it generates the class it is asked for.

    python -m experiments.cvae --epochs 30 --workdir runs/cvae
    python -m experiments.cvae --epochs 2 --workdir /tmp/cvae-local     # smoke test

The label enters encoder and decoder as a one-hot vector (q(z|x,y), p(x|z,y),
p(z) = N(0, I)). After training, 100 samples per class are decoded from
z ~ N(0, I) with the requested label, and a classifier trained only on the
real training split (a small flax MLP; its own test accuracy is reported)
says which class each sample shows: the fraction assigned to the requested
class measures how well the label controls the output.

Outputs in the workdir, besides the shared ones: ``class_control`` and the collapse ``diagnostics``
in summary.json, the figures listed in docs/experiments/cvae.md, and cvae_samples.npz (``x``
``[K*100, H, W, C]`` in [0, 1], ``y`` the requested labels) to judge with another classifier.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from vae_jax import classifier as classifier_lib
from vae_jax import distributed, plots, runner
from vae_jax import workdir as workdir_lib
from vae_jax.cli import parse_config, user_errors
from vae_jax.tasks import cvae

SAMPLES_PER_CLASS = 100


def class_control(config, model, params, dataset) -> tuple[dict, np.ndarray, np.ndarray]:
    """Decodes SAMPLES_PER_CLASS samples per class and measures them with a classifier trained on real data."""
    key = jax.random.key(config.seed)
    labels = np.repeat(np.arange(config.num_classes), SAMPLES_PER_CLASS)
    samples = cvae.sample_class(model, params, jax.random.fold_in(key, 1), labels)
    judge = classifier_lib.train_classifier(
        dataset.x_train, dataset.y_train, dataset.x_test, dataset.y_test, config.num_classes, jax.random.fold_in(key, 2)
    )
    measured = classifier_lib.requested_class_fraction(judge, samples, labels, config.num_classes)
    record = {
        "samples_per_class": SAMPLES_PER_CLASS,
        "classifier": "MLP 256 ReLU, 10 epochs Adam on the train split",
        "classifier_test_accuracy": judge.test_accuracy,
        "requested_class_fraction": measured["overall"],
        "requested_class_fraction_per_class": measured["per_class"],
        "mean_probability_of_requested_class": measured["mean_probability"],
    }
    return record, samples, labels


def write_figures(config, model, params, result, samples, labels, control) -> list[str]:
    workdir, data = config.workdir, result.dataset
    classes, fractions = range(config.num_classes), control["requested_class_fraction_per_class"]
    paths = [
        plots.save_image_rows(
            [samples[labels == c][:10] for c in classes],
            [f"y={c} ({100 * fractions[c]:.0f}%)" for c in classes],
            os.path.join(workdir, "class_samples.png"),
            "Samples z ~ N(0, I) decoded with each requested label (% the classifier assigns to it)",
        )
    ]
    # Two test digits' codes (encoded with their own labels) give two styles; the same z path is decoded
    # under every label, so each column holds the style fixed and each row the class.
    x_test, y_test = data.x_test, data.y_test
    a = 0
    b = int(np.nonzero(y_test != y_test[a])[0][0])
    z = cvae.encode_means(model, params, x_test[[a, b]], y_test[[a, b]])
    strips = [cvae.interpolate_in_class(model, params, z[0], z[1], c, steps=10) for c in classes]
    paths.append(
        plots.save_image_rows(
            [x_test[[a, b]], *strips],
            ["style ends", *[f"y={c}" for c in classes]],
            os.path.join(workdir, "class_interpolations.png"),
            "The line between two test images' codes, decoded under each label",
        )
    )
    paths.append(plots.save_loss_curves(result.history, workdir))
    return paths


@user_errors()
def main(argv=None) -> dict:
    config = parse_config(cvae.CVAEConfig, argv, description=__doc__.split("\n\n")[0])
    dataset = runner.load_data(config)
    config = cvae.with_data_classes(config, dataset)
    model, task = cvae.cvae_task(config, dataset.image_shape)
    result = runner.train(config, task, dataset)
    return runner.report_on_main(config.workdir, lambda: report(config, model, result))


def report(config, model, result: runner.TrainResult) -> dict:
    """Class control, figures, ``summary.json`` and the result line (process 0 alone); returns the summary."""
    params, data = result.params(0), result.dataset
    control, samples, labels = class_control(config, model, params, data)
    np.savez_compressed(os.path.join(config.workdir, "cvae_samples.npz"), x=samples.astype(np.float32), y=labels)
    figures = write_figures(config, model, params, result, samples, labels, control)
    result.summary["class_control"] = control
    result.summary["diagnostics"] = cvae.collapse_diagnostics(
        model, params, data.x_test, data.y_test, jax.random.key(config.seed)
    )["z"]
    workdir_lib.write_summary(config.workdir, result.summary, figures)
    test = result.summary["test"]
    distributed.log(f"data: {data.describe()}")
    print(
        f"test neg-ELBO {test['neg_elbo']['mean']:.2f} nats (recon {test['recon']['mean']:.2f}, KL "
        f"{test['kl']['mean']:.2f}); classifier test accuracy {control['classifier_test_accuracy']:.3f}; "
        f"samples assigned to the requested class {control['requested_class_fraction']:.3f}; "
        f"outputs in {config.workdir}"
    )
    return result.summary


if __name__ == "__main__":
    main()
