"""The options reference, docs/options.md, made from the command line's parser and the record's defaults, so that
it says what `resnets COMMAND --help` says: `make docs` writes it, tests/test_docs.py checks it is current."""

from __future__ import annotations

import argparse
from dataclasses import fields

from .cli import parser
from .config import Experiment

__all__ = ["reference"]


def _flag_text(a: argparse.Action) -> str:
    shown = [o for o in a.option_strings if o not in getattr(a, "old", ())]  # not a renamed option's earlier flags
    flags = ", ".join(f"`{o}`" for o in shown) or f"`{a.metavar or a.dest}`"
    if a.choices and not a.option_strings:
        return flags
    if a.choices:
        return f"{flags} {{{','.join(map(str, a.choices))}}}"
    return f"{flags} {a.metavar}" if a.metavar and a.nargs != 0 else flags


def _cell(text) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def reference() -> str:
    """The options reference (docs/options.md), made from the command line's parser and the record's defaults, so
    that it says what `resnets COMMAND --help` says; `make docs` writes it and a test checks it is current."""
    record = {f.name: f for f in fields(Experiment) if f.metadata.get("option")}
    top = parser()
    sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
    out = ["# Options reference", "",
           "Generated from the command line's parser and the `Experiment` record (`resnets/config.py`) by `make docs`;",
           "`tests/test_docs.py` fails when it is out of date. Every *setting* is also a keyword of `run`, `build` and",
           "`configure` in Python (the name in the second column); its default here is the record's, and each",
           "experiment (`resnets list`) sets its own values for some of them.", ""]
    for name, p in sub.choices.items():
        out += [f"## resnets {name}", "", _cell(p.description or next(
            (c.help for c in sub._choices_actions if c.dest == name), "")), ""]
        for group in p._action_groups:
            actions = [a for a in group._group_actions if not isinstance(a, argparse._HelpAction)]
            if not actions:
                continue
            settings = all(a.dest in record for a in actions)
            out += [f"### {group.title}", ""]
            out += ["| option | Python | default | what it does |", "|---|---|---|---|"] if settings else \
                ["| argument | what it does |", "|---|---|"]
            for a in actions:
                if settings:
                    default = record[a.dest].default
                    shown = ",".join(map(str, default)) if isinstance(default, tuple) and default else default
                    out.append(f"| {_flag_text(a)} | `{a.dest}` | {_default(shown)} | {_cell(a.help)} |")
                else:
                    out.append(f"| {_flag_text(a)} | {_cell(a.help)} |")
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def _default(v) -> str:
    return "-" if v is None or v == () else f"`{v}`"
