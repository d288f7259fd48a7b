"""Generate ``docs/cli.md`` from every command's ``--help`` (as llm keeps its docs with cog).

    python -m pipeline.cli.docs            # rewrite docs/cli.md
    python -m pipeline.cli.docs --check    # exit 1 if docs/cli.md is out of date

``tests/cli/test_help.py`` runs the check, so the reference cannot drift from the code.
"""
from __future__ import annotations

import sys
from pathlib import Path

import click
from click.testing import CliRunner

from . import cli

DOC = Path(__file__).resolve().parents[2] / "docs" / "cli.md"
HEADER = """# Command-line reference

Generated from `--help` by `python -m pipeline.cli.docs`; do not edit by hand (a test checks it
is up to date). Every command also takes `-q/--quiet` (alias `--no-progress`); the same option
means the same thing in every command: `--store`, `--method`, `--preset`, `-o/--output`,
`--limit`, `--format table|csv|json|jsonl`.
"""


def iter_commands(group: click.Group, prefix: tuple[str, ...] = ()):
    """(path, command) of every command and group below ``group``, in name order."""
    ctx = click.Context(group, info_name=prefix[-1] if prefix else "pipeline")
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield prefix + (name,), cmd
        if isinstance(cmd, click.Group):
            yield from iter_commands(cmd, prefix + (name,))


def help_text(path: tuple[str, ...]) -> str:
    res = CliRunner().invoke(cli, [*path, "--help"], prog_name="pipeline", terminal_width=100)
    return res.output


def render() -> str:
    parts = [HEADER, "## pipeline\n\n```\n" + help_text(()) + "```\n"]
    for path, _ in iter_commands(cli):
        parts.append(f"## pipeline {' '.join(path)}\n\n```\n{help_text(path)}```\n")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    text = render()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is out of date: run `python -m pipeline.cli.docs`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
