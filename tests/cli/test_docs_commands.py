"""Every `pipeline COMMAND ... --option` written in README.md and docs/*.md exists (the docs cannot drift)."""
from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest

from pipeline.cli import cli

ROOT = Path(__file__).resolve().parents[2]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
DOCS = [p for p in DOCS if p.name != "cli.md"]  # generated from --help (tests/cli/test_help.py checks it)


def command_lines(text: str) -> list[str]:
    """`pipeline ...` invocations: lines of code blocks and inline `code` spans, comments dropped."""
    out = []
    for block in re.findall(r"```[a-z]*\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)  # shell line continuations
        out += [line for line in joined.splitlines()]
    out += re.findall(r"`([^`\n]*pipeline [^`\n]*)`", text)
    found = []
    for line in out:
        for part in re.split(r"&&|\|\||;|\|", line.split("  #")[0].split(" # ")[0]):
            m = re.search(r"(?:^|\s)pipeline\s+(.*)$", part.strip())
            if m:
                found.append("pipeline " + m.group(1).strip())
    return found


def resolve(words: list[str]) -> tuple[click.Command, list[str]]:
    """The (sub)command named by the first words, and the rest."""
    cmd, rest = cli, list(words)
    while isinstance(cmd, click.Group) and rest and not rest[0].startswith("-"):
        sub = cmd.get_command(None, rest[0])
        if sub is None:
            raise LookupError(f"no command {rest[0]!r}")
        cmd, rest = sub, rest[1:]
    return cmd, rest


def option_names(cmd: click.Command) -> set[str]:
    return {o for p in cmd.params for o in (*p.opts, *p.secondary_opts)} | {"--help"}


def problems(path: Path) -> list[str]:
    out = []
    for line in command_lines(path.read_text()):
        try:
            words = shlex.split(line)[1:]
        except ValueError:
            words = line.split()[1:]
        words = [w for w in words if not re.fullmatch(r"[A-Z_]+=.*", w)]
        if not words or words[0].startswith(("<", "[", "...")):
            continue
        try:
            cmd, rest = resolve(words)
        except LookupError as exc:
            out.append(f"{path.name}: `{line}`: {exc}")
            continue
        names = option_names(cmd)
        for w in rest:
            opt = w.split("=")[0]
            if re.fullmatch(r"--?[a-zA-Z][\w-]*", opt) and opt not in names:
                out.append(f"{path.name}: `{line}`: {cmd.name} has no option {opt}")
    return out


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_every_command_and_option_in_the_docs_exists(path):
    assert problems(path) == []


def test_the_checker_catches_a_made_up_option_and_command(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("Run `pipeline faithfulness --rescore lazsl` and\n```bash\npipeline explane img.png\n"
                   "pipeline explain img.png --maps plan-dense   # fine\n```\n")
    assert problems(doc) == ["x.md: `pipeline explane img.png`: no command 'explane'",
                             "x.md: `pipeline faithfulness --rescore lazsl`: faithfulness has no option --rescore"]


def test_no_help_text_says_a_thing_twice():
    from pipeline.cli.docs import DOC

    text = DOC.read_text()
    assert "(0 = all) (0 = all)" not in text and "(0 = all). (0 = all)" not in text


def test_presets_lists_whole_descriptions():
    from click.testing import CliRunner

    from pipeline.config import list_presets

    out = CliRunner().invoke(cli, ["presets"]).output
    for p in list_presets():
        assert p.description in out, p.name  # never cut mid-word
