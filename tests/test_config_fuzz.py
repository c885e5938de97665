"""Every experiment's command line, fuzzed: a bad flag is one line and exit code 2, before anything compiles.

The experiments are found by listing the ``experiments`` package, and each
one's flags are read from its own parser, so a new experiment is covered
without editing this file. A Hypothesis property draws command lines from
those flags (good values, wrong types, negative sizes, NaN, unknown choices,
missing data files) and runs ``main``; the first JAX trace or compilation
stops the run (a listener on JAX's compile events raises). Each command line
must either exit with code 2 and a single ``error: ...`` line on stderr
before that point, or reach it; no other exception and no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import pkgutil

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import experiments

EXPERIMENTS = sorted(m.name for m in pkgutil.iter_modules(experiments.__path__))


class CompilationStarted(Exception):
    """Raised by the compile-event listener once armed: the command line got past every check."""


_armed = [False]


def _on_compile_event(event: str, duration: float, **kwargs) -> None:
    if _armed[0] and event.startswith("/jax/core/compile"):
        _armed[0] = False
        raise CompilationStarted(event)


jax.monitoring.register_event_duration_secs_listener(_on_compile_event)


class ParserCaptured(Exception):
    pass


def experiment_parser(name: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``experiments.NAME.main`` builds (captured when it parses)."""
    module = importlib.import_module(f"experiments.{name}")
    captured = []

    def capture(self, args=None, namespace=None):
        captured.append(self)
        raise ParserCaptured

    with monkeypatch.context() as patch:
        patch.setattr(argparse.ArgumentParser, "parse_args", capture)
        with pytest.raises(ParserCaptured):
            module.main([])
    return captured[0]


def run_main(name: str, argv: list[str], capsys):
    """Runs ``main(argv)`` until it exits or starts compiling; returns ``("exit", code, stderr)`` or ``("compiled", ...)``.

    A ``main`` that returns its exit code (for ``sys.exit(main())``) counts as exiting with it.
    """
    module = importlib.import_module(f"experiments.{name}")
    capsys.readouterr()
    jax.clear_caches()  # so that the first jitted call traces again (and is seen) instead of hitting a cache
    _armed[0] = True
    try:
        returned = module.main(argv)
        if isinstance(returned, int) and not isinstance(returned, bool) and returned != 0:
            return "exit", returned, capsys.readouterr().err
    except SystemExit as exit_info:
        return "exit", exit_info.code, capsys.readouterr().err
    except CompilationStarted:
        return "compiled", None, capsys.readouterr().err
    finally:
        _armed[0] = False
    return "returned", None, capsys.readouterr().err


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_experiment_has_help_and_one_line_errors_for_unknown_flags(name, capsys, tmp_path):
    module = importlib.import_module(f"experiments.{name}")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("usage:")
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--workdir", str(tmp_path), "--no-such-flag", "3"])
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith("error: unrecognized arguments: ") and line.endswith("--no-such-flag 3 (see --help)")


@pytest.fixture(scope="module")
def digits_npz(tmp_path_factory):
    """1,024 train / 32 test embedded MNIST digits as an ``npz:`` spec (the default batch sizes fit)."""
    from vae_jax import data

    x_train, y_train, x_test, y_test = data.embedded_mnist()
    path = tmp_path_factory.mktemp("fuzz") / "digits.npz"
    np.savez(path, x_train=x_train[:1024], y_train=y_train[:1024], x_test=x_test[:32], y_test=y_test[:32])
    return f"npz:{path}"


_INT_TEXT = st.one_of(st.integers(-3, 6).map(str), st.sampled_from(["10000000", "1.5", "x", "", "-0"]))
_FLOAT_TEXT = st.one_of(
    st.floats(-2, 2, allow_nan=False).map(repr),
    st.sampled_from(["0", "-1", "nan", "inf", "-inf", "1e9", "abc", ""]),
)
_TUPLE_TEXT = st.sampled_from(["16", "16,8", "0", "-4", "4,x", "", ",", "8,0"])
_TEXT = st.text(st.characters(codec="ascii", exclude_categories=("Cc",)), max_size=8)


def _value_strategy(action: argparse.Action, digits_npz: str, workdir: str):
    dest = action.dest
    if dest == "dataset":
        return st.sampled_from([digits_npz, "npz:/no/such/file.npz", "npz:", "tfds:", "bogus:thing", ""])
    if dest in ("workdir", "out") or dest.endswith("_dir"):
        return st.sampled_from([workdir, os.path.join(workdir, "sub"), os.devnull + "/x"])
    if action.choices is not None:
        return st.one_of(st.sampled_from(list(action.choices)), _TEXT)
    if action.type is int:
        return _INT_TEXT
    if action.type is float:
        return _FLOAT_TEXT
    if action.type is None or action.type is str:
        return _TEXT
    return _TUPLE_TEXT  # comma-separated integers


def _plausible_value(action: argparse.Action, digits_npz: str, workdir: str):
    """A value a user would likely type, or None for flags without an obvious one (left out then)."""
    if action.dest == "dataset":
        return st.just(digits_npz)
    if action.dest in ("workdir", "out"):
        return st.just(workdir)
    if action.choices is not None:
        return st.sampled_from(list(action.choices))
    if action.type is int:
        return st.sampled_from(["1", "2", "3"])
    if action.type is float:
        return st.sampled_from(["0.5", "0.1", "1.0"])
    if action.type is None or action.type is str:
        return None
    return st.sampled_from(["16", "16,8"])


def _argv_strategy(parser: argparse.ArgumentParser, digits_npz: str, workdir: str):
    """Command lines: half of them with plausible values only (which mostly run), half with any values."""
    actions = [a for a in parser._actions if a.option_strings and a.dest != "help"]

    @st.composite
    def command_line(draw):
        argv = []
        plausible = draw(st.booleans())
        candidates = [
            a for a in actions if not plausible or a.nargs == 0 or _plausible_value(a, digits_npz, workdir) is not None
        ]
        chosen = draw(st.lists(st.sampled_from(candidates), max_size=5, unique_by=lambda a: a.dest))
        required = [a for a in actions if a.required and a not in chosen]
        for action in chosen + required:
            if isinstance(action, argparse.BooleanOptionalAction):
                argv.append(draw(st.sampled_from(action.option_strings)))
            elif action.nargs == 0:
                argv.append(action.option_strings[0])
            else:
                values = _plausible_value(action, digits_npz, workdir) if plausible else None
                argv += [
                    action.option_strings[0],
                    draw(values if values is not None else _value_strategy(action, digits_npz, workdir)),
                ]
        if not any(a.dest == "dataset" for a in chosen) and any(a.dest == "dataset" for a in actions):
            argv += ["--dataset", digits_npz]  # never the network-backed default
        if not any(a.dest == "workdir" for a in chosen + required) and any(a.dest == "workdir" for a in actions):
            argv += ["--workdir", workdir]
        return argv

    return command_line()


@pytest.mark.slow
@pytest.mark.parametrize("name", EXPERIMENTS)
def test_fuzzed_command_lines_fail_with_one_line_before_compiling(
    name, capsys, monkeypatch, tmp_path_factory, digits_npz
):
    parser = experiment_parser(name, monkeypatch)
    workdir = str(tmp_path_factory.mktemp(f"fuzz_{name}"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")

    @settings(
        max_examples=10,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )
    @given(argv=_argv_strategy(parser, digits_npz, workdir))
    def check(argv):
        outcome, code, err = run_main(name, argv, capsys)
        event(outcome)  # pytest --hypothesis-show-statistics shows how often each outcome was drawn
        if outcome == "exit":
            lines = err.strip().splitlines()
            assert code == 2, (argv, code, err)
            assert len(lines) >= 1 and "error: " in lines[-1], (argv, err)
            assert "Traceback" not in err, (argv, err)
        else:
            assert outcome == "compiled", (argv, outcome, err)

    check()


def test_the_reporting_of_a_flag_error_names_the_flag_and_what_is_accepted(capsys, tmp_path):
    for argv, expected in [
        (["--batch-size", "0"], "error: --batch-size must be a positive integer, got 0"),
        (["--beta", "-1"], "error: --beta must be a non-negative number, got -1.0"),
        (["--latent-dim", "0"], "error: --latent-dim must be a positive integer, got 0"),
        (["--max-consecutive-skips", "-1"], "error: --max-consecutive-skips must be a non-negative integer, got -1"),
        (["--learning-rate", "nan"], "error: --learning-rate must be a positive number, got nan"),
        (["--epochs", "x"], "error: argument --epochs: invalid int value: 'x' (see --help)"),
    ]:
        outcome, code, err = run_main("vae", argv + ["--workdir", str(tmp_path)], capsys)
        assert (outcome, code) == ("exit", 2), (argv, outcome, err)
        assert err.splitlines()[0].startswith(expected), (argv, err)
        assert len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "name, argv, expected",
    [
        (
            "vae",
            ["--hidden", "32,-1"],
            "--hidden must be comma-separated positive widths like 400 or 512,256, got '32,-1'",
        ),
        (
            "latent_sweep",
            ["--hidden", "0"],
            "--hidden must be comma-separated positive widths like 400 or 512,256, got '0'",
        ),
        (
            "latent_sweep",
            ["--latent-sizes", "2,-3"],
            "--latent-sizes must be comma-separated positive sizes like 1,2,10,20, got '2,-3'",
        ),
        (
            "conv_vae",
            ["--channels", "0"],
            "--channels must be comma-separated positive channel counts like 16,32, got '0'",
        ),
        (
            "vqvae",
            ["--dead-code-steps", "0,-5"],
            "--dead-code-steps must be non-negative step counts like 0 or 0,100, got '0,-5'",
        ),
        (
            "beta_vae",
            ["--betas", "1,nan"],
            "--betas must be comma-separated non-negative numbers like 1,4, got '1.0,nan'",
        ),
        (
            "beta_vae",
            ["--free-bits-values", "0,-0.5"],
            "--free-bits-values must be comma-separated non-negative numbers like 0,0.5, got '0.0,-0.5'",
        ),
        (
            "beta_vae",
            ["--schedules", "constant,cosine"],
            "--schedules must be comma-separated names from constant,linear,cyclical, got 'constant,cosine'",
        ),
    ],
)
def test_a_list_flag_with_a_bad_item_names_the_flag_and_shows_the_list(name, argv, expected, capsys, tmp_path):
    outcome, code, err = run_main(name, argv + ["--workdir", str(tmp_path / "w")], capsys)
    assert (outcome, code) == ("exit", 2), (argv, outcome, err)
    assert err.splitlines() == [f"error: {expected} (see --help)"]
    assert not (tmp_path / "w").exists()


def test_the_usage_line_names_the_command_a_user_typed():
    """``python -m experiments.X --help`` shows ``usage: python -m experiments.X``, not argparse's ``X.py``."""
    import subprocess
    import sys

    for name in ("vae", "generate"):  # a config-built parser and a hand-built one
        out = subprocess.run(
            [sys.executable, "-m", f"experiments.{name}", "--help"], capture_output=True, text=True, check=True
        ).stdout
        assert out.startswith(f"usage: python -m experiments.{name} [-h]"), out[:80]
