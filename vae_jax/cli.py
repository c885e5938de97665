"""Config dataclasses <-> command-line flags, and one-line errors for users.

Every field of a config dataclass becomes a flag (``latent_dim`` -> ``--latent-dim``) typed from its
annotation, with its default and its ``metadata``'s ``help`` and ``choices``. ``bool`` (and ``bool | None``)
fields get ``--flag/--no-flag``; ``tuple[int | float | str, ...]`` fields take comma-separated values.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import os
import sys
import textwrap
import typing

from vae_jax.errors import USER_ERRORS, ConfigError, RunStopped, flag

_TUPLE_ITEMS = {int: ("integers", "N,N,..."), float: ("numbers", "X,X,..."), str: ("names", "NAME,NAME,...")}


def _tuple_parser(name: str, item_type=int):
    """Parses comma-separated ``item_type`` values (``int``, ``float`` or ``str``) into a tuple."""

    def parse(text: str) -> tuple:
        try:
            values = tuple(item_type(v.strip()) for v in text.split(",") if v.strip() != "")
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{flag(name)} takes comma-separated {_TUPLE_ITEMS[item_type][0]}, got {text!r}"
            ) from None
        return values

    return parse


def _is_optional_bool(kind) -> bool:
    return set(typing.get_args(kind)) == {bool, type(None)}


def default_text(value) -> str | None:
    """How a default reads in ``--help``: ``400,200`` for tuples, ``yes``/``no`` for flags, None for no default."""
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, tuple):
        return ",".join(map(str, value))
    return str(value)


class _HelpFormatter(argparse.HelpFormatter):
    """Wraps help text at spaces only, so flags and paths like ``--no-resume`` stay whole."""

    def _split_lines(self, text, width):
        return textwrap.wrap(" ".join(text.split()), width, break_on_hyphens=False)


class DefaultsHelpFormatter(_HelpFormatter):
    """Adds ``(default: X)`` to a flag's help unless the help already names its default or there is none."""

    def _get_help_string(self, action):
        help_text = action.help or ""
        if "(default" in help_text or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return help_text
        return f"{help_text} (default: %(default)s)"


class ArgumentParser(argparse.ArgumentParser):
    """An ``argparse`` parser whose errors are one line, ``error: ...``, with exit code 2 (no usage dump), and
    whose usage line says ``python -m experiments.vae`` when run so (argparse alone would say ``vae.py``)."""

    def __init__(self, *args, **kwargs):
        if not args:
            kwargs.setdefault("prog", _module_prog())
        super().__init__(*args, **kwargs)

    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def _module_prog() -> str | None:
    """``python -m NAME`` when the program runs as a module (``__main__`` has a spec), else None (argparse's
    default, the script's file name)."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    name = getattr(spec, "name", "") or ""
    name = name.removesuffix(".__main__")
    return f"python -m {name}" if name and name != "__main__" else None


def build_parser(config_cls, description: str) -> argparse.ArgumentParser:
    """One flag per field. A help text that says ``(default: ...)`` itself is left as it is;
    otherwise a non-empty default is appended as a user would type it."""
    parser = ArgumentParser(description=description, formatter_class=_HelpFormatter)
    hints = typing.get_type_hints(config_cls)
    for f in dataclasses.fields(config_cls):
        kind = hints[f.name]
        help_text = f.metadata.get("help", "")
        default = default_text(f.default)
        if default is not None and "(default" not in help_text:
            help_text = f"{help_text} (default: {default})"
        kwargs = {"default": f.default, "help": help_text.replace("%", "%%").strip() or " "}
        if "choices" in f.metadata:
            kwargs["choices"] = f.metadata["choices"]
        if kind is bool or _is_optional_bool(kind):
            kwargs["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(kind) is tuple:
            item_type = typing.get_args(kind)[0]
            if item_type not in _TUPLE_ITEMS:
                raise TypeError(f"unsupported config field type {kind} for {f.name}")
            kwargs["type"] = _tuple_parser(f.name, item_type)
            kwargs["metavar"] = _TUPLE_ITEMS[item_type][1]
        elif kind in (int, float, str):
            kwargs["type"] = kind
        else:
            raise TypeError(f"unsupported config field type {kind} for {f.name}")
        parser.add_argument(flag(f.name), dest=f.name, **kwargs)
    return parser


def parse_config(config_cls, argv=None, description: str = ""):
    """Parses ``argv`` into ``config_cls``; bad values exit with a one-line error.

    With ``--distributed`` it starts ``jax.distributed`` at once, before anything touches JAX; a training
    config's workdir and devices are then checked (:func:`vae_jax.runner.check_setup`) before any data loads.
    """
    parser = build_parser(config_cls, description)
    args = parser.parse_args(argv)
    config = config_cls(**vars(args))
    try:
        config.validate()
    except ConfigError as err:
        parser.error(str(err))
    if getattr(config, "distributed", False):
        from vae_jax import distributed  # imports jax: only here

        distributed.initialize()
    from vae_jax.protocol import TrainConfig

    if isinstance(config, TrainConfig):  # the checks that read the file system and the devices (no data)
        from vae_jax import runner  # the driver: imported once a training experiment's flags are parsed

        try:
            runner.check_setup(config)
        except ConfigError as err:
            parser.error(str(err))
    return config


def int_list(name: str):
    """An argparse ``type`` for comma-separated integers like ``3,7`` (a one-line error naming ``--name``)."""
    return _tuple_parser(name, int)


def add_run_flags(parser: argparse.ArgumentParser) -> None:
    """``--workdir`` (a run's workdir or an exported file), ``--seed`` and ``--epoch``: which trained model."""
    parser.add_argument(
        "--workdir",
        required=True,
        default=argparse.SUPPRESS,
        help="a training run's workdir (any family), or a file vae_jax.export_run wrote",
    )
    parser.add_argument("--seed", type=int, default=None, help="which seed of a --seeds N run (default: the first)")
    parser.add_argument(
        "--epoch", type=int, default=None, help="the checkpoint of this epoch (default: the newest one that restores)"
    )


def add_image_flags(parser: argparse.ArgumentParser, splits: tuple[str, ...]) -> None:
    """``--dataset``, ``--data-dir``, ``--split`` and ``--skip-unreadable``: which images a trained model is
    applied to."""
    parser.add_argument("--dataset", default="", help="dataset spec, e.g. mnist or folder:PATH (default: the run's)")
    parser.add_argument("--data-dir", default="", help="TFDS data directory (default: the run's)")
    parser.add_argument("--split", default="test", choices=splits, help="which images")
    add_skip_unreadable_flag(parser)


def add_skip_unreadable_flag(parser: argparse.ArgumentParser) -> None:
    """``--skip-unreadable`` / ``--no-skip-unreadable`` of the tools that use a trained run (default: as it trained)."""
    parser.add_argument(
        "--skip-unreadable",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="leave out the image files of a folder: dataset that cannot be decoded (default: as the run trained)",
    )


def check_out(parser: argparse.ArgumentParser, path: str, suffix: str) -> None:
    """Exits with a one-line error unless ``--out`` is a ``suffix`` file path (not a directory)."""
    if not path.lower().endswith(suffix) or os.path.isdir(path):
        parser.error(f"--out must be a {suffix} file path, got {path!r}")


def user_errors(*error_types):
    """Decorator for ``main``: the listed errors (default :data:`vae_jax.errors.USER_ERRORS`) print
    ``error: ...`` and exit 2; a :class:`vae_jax.errors.RunStopped` prints its line and exits with its own code,
    listed or not."""
    error_types = error_types or USER_ERRORS

    def decorate(main):
        @functools.wraps(main)
        def wrapped(*args, **kwargs):
            try:
                return main(*args, **kwargs)
            except RunStopped as err:
                print(f"error: {err}", file=sys.stderr)
                if getattr(err, "exit_immediately", False):  # vae_jax.errors.PeerLost: skip JAX's shutdown barrier
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(err.exit_code)
                raise SystemExit(err.exit_code) from None
            except error_types as err:
                print(f"error: {err}", file=sys.stderr)
                raise SystemExit(2) from None

        return wrapped

    return decorate
