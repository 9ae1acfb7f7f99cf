#!/usr/bin/env python
"""Print the command-line reference (docs/cli.md) as Markdown, generated from the argparse definitions.

    python scripts/gen-cli-docs.py > docs/cli.md

Walks `harness.cli.build_parser()`: every sub-command and sub-sub-command (sweep plan/run/emit), each with its
description, a usage line and one table of options per argument group. The page is built from the parsers' actions,
not from argparse's formatted help, so it is the same whatever the terminal width and whichever Python (3.11-3.13)
runs it. tests/test_docs.py fails when the checked-in page differs from this output.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python scripts/gen-cli-docs.py > docs/cli.md"


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each sub-command, in the order they were added."""
    out = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            out += [(name, helps.get(name, ""), sub) for name, sub in action.choices.items()]
    return out


def walk(parser: argparse.ArgumentParser) -> Iterator[tuple[argparse.ArgumentParser, str]]:
    """Every parser below `parser` (depth first, in definition order) with its one-line help."""
    for _, helptext, sub in _subcommands(parser):
        yield sub, helptext
        yield from walk(sub)


def _shown(action: argparse.Action) -> bool:
    return action.help is not argparse.SUPPRESS and not isinstance(
        action, (argparse._HelpAction, argparse._SubParsersAction))


def metavar(action: argparse.Action) -> str:
    """The value an option takes, as a user types it ('' for a flag)."""
    if action.nargs == 0:
        return ""
    if action.metavar is not None:
        names = action.metavar
    elif action.choices is not None:
        names = "{" + ",".join(map(str, action.choices)) + "}"
    else:
        names = action.dest.upper() if action.option_strings else action.dest
    if isinstance(names, tuple):
        return " ".join(names)
    n = action.nargs
    if n is None:
        return names
    if isinstance(n, int):
        return " ".join([names] * n)
    return {"?": f"[{names}]", "*": f"[{names} ...]", "+": f"{names} [{names} ...]",
            argparse.REMAINDER: names}.get(n, names)


def help_text(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%" in text:  # argparse's own expansion: %(default)s, %% ...
        params = dict(vars(action), prog=prog)
        if params.get("choices") is not None:
            params["choices"] = ", ".join(map(str, params["choices"]))
        text = text % params
    if action.required and action.option_strings:
        text = f"required; {text}" if text else "required"
    return text


_CODE = re.compile(r"(`[^`]*`)")


def md(text: str) -> str:
    """Plain text as Markdown: characters that GitHub would read as markup are escaped outside code spans."""
    parts = _CODE.split(" ".join(text.split()))
    for i, part in enumerate(parts):
        if not part.startswith("`"):
            part = part.replace("\\", "\\\\").replace("*", "\\*").replace("_", "\\_")
            parts[i] = part.replace("<", "&lt;").replace(">", "&gt;")
    return "".join(parts).replace("|", "\\|")


def code(text: str) -> str:
    """A code span in a table cell (a pipe would end the cell)."""
    return f"`{text}`".replace("|", "\\|")


def usage(parser: argparse.ArgumentParser) -> str:
    """`prog POSITIONAL --required VALUE [options] [-- CMD]`: what must be typed, then the rest."""
    words, last = [parser.prog], []
    optional = False
    for action in parser._actions:
        if not _shown(action):
            continue
        if not action.option_strings:
            (last if action.nargs == argparse.REMAINDER else words).append(metavar(action))
        elif action.required:
            words.append(f"{action.option_strings[-1]} {metavar(action)}".strip())
        else:
            optional = True
    subs = _subcommands(parser)
    if subs:
        words.append("{" + ",".join(name for name, _, _ in subs) + "} ...")
    if optional:
        words.append("[options]")
    return " ".join(words + last)


def section(parser: argparse.ArgumentParser, helptext: str) -> list[str]:
    lines = [f"## `{parser.prog}`", ""]
    if helptext:
        lines += [md(helptext[0].upper() + helptext[1:]) + ".", ""]
    lines += ["```text", usage(parser), "```", ""]
    if parser.description:
        paragraphs = [p for p in re.split(r"\n\s*\n", parser.description.strip()) if p.strip()]
        for p in paragraphs:
            lines += [md(p), ""]
    for group in parser._action_groups:
        actions = [a for a in group._group_actions if _shown(a)]
        if not actions:
            continue
        lines += [f"**{group.title}**", "", "| option | value | meaning |", "|---|---|---|"]
        for action in actions:
            names = ", ".join(action.option_strings) or metavar(action)
            value = metavar(action) if action.option_strings else ""
            lines.append(f"| {code(names)} | {code(value) if value else ''} | {md(help_text(action, parser.prog))} |")
        lines.append("")
    subs = _subcommands(parser)
    if subs:
        lines += ["Steps: " + ", ".join(f"[`{name}`](#{slug(f'{parser.prog} {name}')})" for name, _, _ in subs) + ".", ""]
    return lines


def slug(heading: str) -> str:
    """GitHub's anchor of a heading's text (lower case, punctuation dropped, spaces to hyphens)."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def render() -> str:
    sys.path.insert(0, str(ROOT))
    from harness.cli import build_parser

    top = build_parser()
    lines = [
        "# Command-line reference",
        "",
        "<!-- Generated by scripts/gen-cli-docs.py from the argparse definitions: do not edit by hand. -->",
        f"Generated from the argparse definitions; after changing an option run `{REGENERATE}` "
        "(`tests/test_docs.py` fails while this page is stale). Every command also takes `-h`/`--help`; "
        "`bratsbench --version` prints the version. Bad input is one line, `bratsbench: error: ...`, with exit "
        "status 2 before any work starts (see [troubleshooting](troubleshooting.md)).",
        "",
        "| command | what it does |",
        "|---|---|",
    ]
    parsers = list(walk(top))
    for parser, helptext in parsers:
        lines.append(f"| [`{parser.prog}`](#{slug(parser.prog)}) | {md(helptext)} |")
    lines.append("")
    for parser, helptext in parsers:
        lines += section(parser, helptext)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
