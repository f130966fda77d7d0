"""docs/options.md: every option of the four commands and every Config field, generated from the parsers.

Why generated: a hand-written list of options drifts from the parsers (docs/sweeps.md once said "every option"
and missed ten). The parsers' help texts and the Config fields' metadata (ouvae/config.py) are the one source;
``make docs`` rewrites the page and tests/test_docs.py fails when the committed page differs from it.

    python -m sweeps.options_doc > docs/options.md
"""

from __future__ import annotations

import argparse
from typing import Callable

from analysis.__main__ import build_parser as analysis_parser
from ouvae.config import FIELDS, Config, field_values, format_latent_dims
from ouvae.train import build_parser as train_parser
from sweeps.anneal import build_parser as anneal_parser
from sweeps.rho_sweep import build_parser as rho_parser

# (command, its parser, what it does): the order of the page.
COMMANDS: tuple[tuple[str, Callable[[], argparse.ArgumentParser], str], ...] = (
    ("python sweeps/critical_rho.py", rho_parser, "the critical-rho sweep (docs/sweeps.md)"),
    ("python sweeps/anneal_search.py", anneal_parser, "the KL-annealing search (docs/sweeps.md)"),
    ("python -m ouvae.train", train_parser, "one training run (docs/method.md)"),
    ("python -m analysis", analysis_parser, "the analysis of a results table (docs/analysis.md)"),
)
CONFIG_GROUP = "config overrides (any Config field)"  # ouvae.config.add_config_arguments: one option per field


def _value(action: argparse.Action) -> str:
    """What follows the option on the command line: its metavar as argparse's usage line writes it."""
    if action.nargs == 0 or not action.option_strings:  # a flag, or a positional argument named in its own cell
        return ""
    meta = action.metavar or action.dest.upper()
    if isinstance(meta, tuple):
        return " ".join(meta)
    if action.choices and not action.metavar:
        meta = "{" + ",".join(map(str, action.choices)) + "}"
    return {None: meta, "?": f"[{meta}]", "*": f"[{meta} ...]", "+": f"{meta} [{meta} ...]"}.get(
        action.nargs, " ".join([meta] * action.nargs) if isinstance(action.nargs, int) else meta)


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion of %(default)s and the like
        text = text % {**vars(action), "prog": prog}
    return " ".join(text.split()).replace("|", "\\|")


def _cell(text: str) -> str:
    return f"`{text}`" if text else ""


def command_section(name: str, parser: argparse.ArgumentParser, what: str, seen: dict[tuple, str]) -> list[str]:
    """One command's options, one table per argument group (argparse keeps the groups in ``_action_groups``); a
    group an earlier command has word for word (`seen`: its rows -> that command) is referred to, not repeated."""
    lines = [f"## `{name}`", "", f"{what[0].upper()}{what[1:]}.", ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if a.help != argparse.SUPPRESS]
        if not actions:
            continue
        lines += [f"### {group.title}", ""]
        if group.title == CONFIG_GROUP:
            config_fields = ", ".join(f"`--{n.replace('_', '-')}`" for n in FIELDS if n != "preset")
            lines += ["`--set KEY=VALUE` (repeatable) or the field's own option names any Config field "
                      f"([below](#config-fields)): {config_fields}.", ""]
            continue
        rows = tuple(f"| {_cell(', '.join(a.option_strings) or a.dest)} | {_cell(_value(a))} | "
                     f"{_help(a, parser.prog)} |" for a in actions)
        if len(rows) > 1 and (group.title, rows) in seen:
            lines += [f"As for `{seen[group.title, rows]}` above.", ""]
            continue
        seen.setdefault((group.title, rows), name)
        lines += ["| option | value | meaning |", "|---|---|---|", *rows, ""]
    return lines


def config_section() -> list[str]:
    """Every Config field with its default (the `base` configuration's), values, role and help."""
    base = Config()
    lines = ["## Config fields", "",
             "Every trainer setting is one field of `ouvae.config.Config`; each command takes any of them as "
             "`--set KEY=VALUE` (dashes or underscores), and `python -m ouvae.train` also as `--field-name VALUE`. "
             "A preset sets many at once (`--preset`); the default below is the `base` configuration's. "
             "The role says what a population shares and what a configuration is (docs/architecture.md, "
             "section 3).", "",
             "| field | values | default | role | meaning |", "|---|---|---|---|---|"]
    for name, f in FIELDS.items():
        default = getattr(base, name)
        shown = format_latent_dims(default) if isinstance(default, tuple) else str(default)
        lines.append(f"| `{name}` | {field_values(name)} | `{shown}` | {f.metadata['role']} | "
                     f"{' '.join(f.metadata['help'].split()).replace('|', '/')} |")
    return lines


def markdown() -> str:
    lines = ["# Options (generated by `python -m sweeps.options_doc`: do not edit; `make docs`)", "",
             "Every option of the four commands, from their parsers' help, and every `Config` field. What the "
             "commands do and why: [sweeps.md](sweeps.md), [method.md](method.md), [analysis.md](analysis.md).", ""]
    seen: dict[tuple, str] = {}
    for name, build, what in COMMANDS:
        lines += command_section(name, build(), what, seen)
    lines += config_section()
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(markdown(), end="")
