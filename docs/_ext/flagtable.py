"""``flag-table`` directive: the flags of a config dataclass, read from its ``field(help=...)``.

The table is built by :func:`vae_jax.cli.build_parser`, the same parser ``--help`` prints, so the
docs and ``python -m experiments.X --help`` cannot disagree::

    ```{flag-table} vae_jax.tasks.VAEConfig
    :exclude: vae_jax.tasks.vae.VAEObjectiveConfig
    ```

The argument is a config dataclass or a function returning an ``argparse`` parser;
``:exclude:`` leaves out the flags of another (a base config documented on its own page).
"""

from __future__ import annotations

import argparse
import importlib

from docutils import nodes
from sphinx.util.docutils import SphinxDirective


def _resolve(dotted: str):
    module_name, _, name = dotted.rpartition(".")
    return getattr(importlib.import_module(module_name), name)


def _parser(source) -> argparse.ArgumentParser:
    """The parser of a config dataclass (as ``parse_config`` builds it), or of a parser factory."""
    import dataclasses

    from vae_jax.cli import build_parser

    return build_parser(source, "") if dataclasses.is_dataclass(source) else source()


def flag_rows(source, exclude=None) -> list[tuple[str, str]]:
    """(flag, help) for every flag of ``source`` not also a flag of ``exclude``, as ``--help`` shows them."""
    skip = set() if exclude is None else {a.dest for a in _parser(exclude)._actions}
    rows = []
    for action in _parser(source)._actions:
        if action.dest in skip:
            continue
        if isinstance(action, argparse._HelpAction):
            continue
        names = " / ".join(action.option_strings)
        if action.choices:
            names += " {" + ",".join(map(str, action.choices)) + "}"
        rows.append((names, action.help.replace("%%", "%").strip()))
    return rows


def _row(cells: list[nodes.Node]) -> nodes.row:
    row = nodes.row()
    for cell in cells:
        entry = nodes.entry()
        entry += cell
        row += entry
    return row


class FlagTable(SphinxDirective):
    required_arguments = 1
    has_content = False
    option_spec = {"exclude": str}

    def run(self):
        source = _resolve(self.arguments[0])
        exclude = _resolve(self.options["exclude"]) if "exclude" in self.options else None
        table = nodes.table(classes=["flag-table"])
        group = nodes.tgroup(cols=2)
        table += group
        group += nodes.colspec(colwidth=30)
        group += nodes.colspec(colwidth=70)
        head = nodes.thead()
        head += _row([nodes.paragraph(text="flag"), nodes.paragraph(text="what it does (default)")])
        group += head
        body = nodes.tbody()
        for names, help_text in flag_rows(source, exclude):
            flag_cell = nodes.paragraph()
            flag_cell += nodes.literal(text=names)
            body += _row([flag_cell, nodes.paragraph(text=help_text)])
        group += body
        return [table]


def setup(app):
    app.add_directive("flag-table", FlagTable)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
