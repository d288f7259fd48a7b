"""The command line documents itself and speaks one vocabulary (sqlite-utils' and llm's checks)."""
import click
import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.cli.docs import iter_commands, main as docs_main
from pipeline.cli.options import FORMATS

COMMANDS = [(path, cmd) for path, cmd in iter_commands(cli)]
LEAVES = [(path, cmd) for path, cmd in COMMANDS if not isinstance(cmd, click.Group)]


def test_every_command_and_option_has_help():
    assert len(LEAVES) >= 13
    for path, cmd in COMMANDS:
        assert (cmd.help or "").strip(), f"pipeline {' '.join(path)} has no help"
        for p in cmd.params:
            if isinstance(p, click.Option):
                assert (p.help or "").strip(), f"pipeline {' '.join(path)} {p.opts[0]} has no help"


def test_docs_cli_md_is_generated_from_help_and_up_to_date():
    assert docs_main(["--check"]) == 0, "docs/cli.md is stale: run `python -m pipeline.cli.docs`"


def _option(cmd, name):
    return next((p for p in cmd.params if isinstance(p, click.Option) and name in p.opts), None)


@pytest.mark.parametrize("path,cmd", LEAVES, ids=[" ".join(p) for p, _ in LEAVES])
def test_one_vocabulary(path, cmd):
    quiet = _option(cmd, "--quiet")
    assert quiet is not None and "--no-progress" in quiet.opts and "-q" in quiet.opts
    fmt = _option(cmd, "--format")
    if fmt is not None:  # --format is always how results are printed, never a file schema
        assert tuple(fmt.type.choices) == FORMATS
    out = _option(cmd, "--output")
    if out is not None:  # -o/--output is always the file or folder written, and says which
        assert "-o" in out.opts and out.help.split(":")[0] in ("File to write", "Folder to write")
    assert _option(cmd, "--out") is None and _option(cmd, "--methods") is None and _option(cmd, "--show") is None
    limit = _option(cmd, "--limit")
    if limit is not None:
        assert limit.type.kind is int and limit.type.lo == 0
    method = _option(cmd, "--method")
    if method is not None:
        assert method.multiple


def test_commands_that_print_results_take_format():
    for name in ("classify", "evaluate", "explain", "faithfulness", "sql", "presets"):
        assert _option(cli.commands[name], "--format") is not None, name
    assert _option(cli.commands["catalog"].commands["status"], "--format") is not None


def test_usage_errors_are_one_line():
    r = CliRunner().invoke(cli, ["classify", "--theta", "abc"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1 and "--theta" in r.output
    r = CliRunner().invoke(cli, ["nosuchcommand"])
    assert r.exit_code == 2 and len(r.output.strip().splitlines()) == 1
