#!/usr/bin/env python3
"""Write docs/cli.md, the command-line reference, from the click commands themselves.

    .venv/bin/python scripts/cli_reference.py          # rewrite docs/cli.md
    .venv/bin/python scripts/cli_reference.py --check  # exit 1 if docs/cli.md is out of date

A test runs the check, so the reference cannot drift from the commands.
"""

from __future__ import annotations

import sys
from pathlib import Path

import click

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "cli.md"


def _kind(p: click.Parameter) -> str:
    t = p.type
    if isinstance(p, click.Option) and p.is_flag:
        return "flag"
    if isinstance(t, click.Choice):
        return " \\| ".join(f"`{c}`" for c in t.choices)
    name = getattr(t, "name", str(t)).replace("_", " ")
    if isinstance(t, (click.IntRange, click.FloatRange)):
        lo, hi = t.min, t.max
        bounds = f"{'' if lo is None else lo}..{'' if hi is None else hi}"
        return f"{name} {bounds}".replace("integer range", "integer").replace("finite float", "number")
    return name


def _default(p: click.Parameter) -> str:
    if p.required:
        return "required"
    if isinstance(p, click.Option) and (p.is_flag and not p.secondary_opts):
        return ""
    unset = type(p.default).__name__ == "Sentinel"  # click's "no default"
    if unset or p.default is None or p.default in ((), ""):
        return ""
    if isinstance(p, click.Option) and p.secondary_opts:
        return f"`{p.opts[0] if p.default else p.secondary_opts[0]}`"
    return f"`{p.default}`"


def render() -> str:
    from streamtrain.cli import cli

    lines = ["# Command-line reference", "",
             "Generated from the commands by `scripts/cli_reference.py` (a test checks it is current).",
             "Every command takes `-h`/`--help`; `streamtrain --debug COMMAND ...` shows tracebacks;",
             "errors in the input print one line and exit with code 2, a training failure exits with 1,",
             "SIGINT / SIGTERM with 130 / 143.", ""]
    for name in sorted(cli.commands):
        command = cli.commands[name]
        ctx = click.Context(command, info_name=name, parent=click.Context(cli, info_name="streamtrain"))
        lines += [f"## streamtrain {name}", "", "```", command.get_usage(ctx).removeprefix("Usage: "), "```", ""]
        lines += [" ".join(command.help.split("\n\n")[0].split()), ""]
        for para in command.help.split("\n\n")[1:]:
            text = " ".join(para.split())
            lines += [f"`{text.removeprefix('Example: ')}`" if text.startswith("Example:") else text, ""]
        options = [p for p in command.params if isinstance(p, click.Option) and not p.hidden]
        if options:
            lines += ["| option | takes | default | what it does |", "|---|---|---|---|"]
            for p in options:
                names = ", ".join(f"`{o}`" for o in [*p.opts, *p.secondary_opts])
                help_text = " ".join((p.help or "").split()).replace("|", "\\|")
                lines.append(f"| {names} | {_kind(p)} | {_default(p)} | {help_text} |")
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    text = render()
    if "--check" in sys.argv[1:]:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is out of date: run scripts/cli_reference.py", file=sys.stderr)
            return 1
        return 0
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
