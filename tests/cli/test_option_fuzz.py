"""Every numeric option of every command, fed 0, -1, NaN, infinity, huge values (1e30,
2**63) and a non-number: each answer is one line of error (exit status 1 or 2, no
traceback) or a correct result (exit 0). Issues 10 and 11.

The commands and options come from ``pipeline.cli.cli`` itself (click introspection), so an
option added later is fuzzed without touching this file. One small store (2 classes, 6
images, 4 crops, one LaZSL run) is built once for the module; the base arguments of each
command keep accepted values fast (one image, two steps, ...).
"""
from __future__ import annotations

import functools
import json

import click
import pytest
from click.testing import CliRunner

import pipeline.models as models
from pipeline.cli import cli
from pipeline.cli.options import Number
from tests.helpers.small_store import MODEL_ARGS, build_small_store

VALUES = ["0", "-1", "nan", "inf", "1e30", str(2**63), "abc"]
NEVER_ACCEPTED = {"nan", "inf", "1e30", str(2**63), "abc"}  # every option is finite and bounded


def _commands(group: click.Group, prefix=()):
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, prefix + (name,))
        else:
            yield prefix + (name,), cmd


def is_numeric(param: click.Parameter) -> bool:
    return isinstance(param, click.Option) and not param.is_flag and isinstance(
        param.type, (Number, click.types.IntParamType, click.types.FloatParamType))


CASES = [(path, param.opts[-1] if param.opts[-1].startswith("--") else param.opts[0], param.name)
         for path, cmd in _commands(cli) for param in cmd.params if is_numeric(param)]


def test_the_fuzz_finds_the_options_it_should():
    found = {(" ".join(p), o) for p, o, _ in CASES}
    for expected in [("classify", "--theta"), ("classify", "--top-k"), ("index-images", "--n-crops"),
                     ("index-images", "--batch-size"), ("index-images", "--workers"), ("index-images", "--max-image-bytes"),
                     ("faithfulness", "--steps"), ("evaluate", "--run"), ("build-attributes", "--concurrency"),
                     ("build-attributes", "--max-file-bytes"), ("make-toyworld", "--n-per-class"), ("sql", "--limit"),
                     ("classify", "--pair-weight"), ("classify", "--feasibility-threshold"), ("mutual-knowledge", "--concept-parts"),
                     ("compare", "--part-top-k"), ("make-composeworld", "--n-per-pair")]:
        assert expected in found
    unbounded = [(p, o) for p, o, _ in CASES if not _bounded(p, o)]
    assert not unbounded, f"numeric options without bounds: {unbounded}"


def _bounded(path, opt) -> bool:
    cmd = cli
    for name in path:
        cmd = cmd.commands[name]
    t = next(p for p in cmd.params if opt in p.opts).type
    if isinstance(t, Number):
        return t.lo is not None and t.hi is not None
    return getattr(t, "min", None) is not None and getattr(t, "max", None) is not None


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return build_small_store(tmp_path_factory.mktemp("fuzz"), _cached_load_model("zsl-tiny", "random:0", device="cpu"))


_ORIGINAL_LOAD = models.load_model


@functools.lru_cache(maxsize=None)
def _cached_load_model(name=None, pretrained=None, device=None, precision=None):
    return _ORIGINAL_LOAD(name, pretrained, device=device, precision=precision)


@pytest.fixture(autouse=True)
def _one_model(monkeypatch):
    """Commands load the model per call; the fuzz loads it once (same weights, same fingerprint)."""
    monkeypatch.setattr(models, "load_model", _cached_load_model)


def base_args(path: tuple[str, ...], small, out) -> list[str]:
    s = ["--store", str(small.store)]
    return {
        ("build-attributes",): ["--from-json", str(small.attrs), *s, *MODEL_ARGS],
        ("index-images",): [str(small.images), "--workers", "0", *s, *MODEL_ARGS],
        ("classify",): ["--method", "lazsl", "--limit", "1", *s],
        ("evaluate",): ["--method", "lazsl", *s],
        ("explain",): [small.image_path, "-o", str(out / "maps"), *s],
        ("report",): ["-o", str(out / "report.html"), "--limit", "2", *s],
        ("faithfulness",): ["--max-images", "1", "--steps", "2", "--boxes", str(small.boxes), *s, *MODEL_ARGS],
        ("sql",): ["select count(*) from classes", *s],
        ("make-toyworld",): ["-o", str(out / "world"), "--n-per-class", "1"],
        # the small store holds another model, so the demo stops at once (one line) after --wait is parsed
        ("demo",): ["-o", str(out / "demo"), *s],
        ("make-composeworld",): ["-o", str(out / "world"), "--n-per-pair", "1"],
        ("mutual-knowledge",): ["--max-images", "1", *s],
        ("compare",): [str(small.store), "--max-images", "1"],
    }.get(path, s)


@pytest.mark.parametrize("path,opt,dest", CASES, ids=[f"{' '.join(p)} {o}" for p, o, _ in CASES])
def test_numeric_option(path, opt, dest, small, tmp_path):
    runner = CliRunner()
    for value in VALUES:
        out = tmp_path / f"v{VALUES.index(value)}"
        out.mkdir()
        args = [*path, *base_args(path, small, out), f"{opt}={value}" if value.startswith("-") else opt, *(
            [] if value.startswith("-") else [value])]
        res = runner.invoke(cli, args)
        where = f"{' '.join(path)} {opt} {value}: exit {res.exit_code}\n{res.output}"
        assert res.exception is None or isinstance(res.exception, SystemExit), where + repr(res.exception)
        assert "Traceback" not in res.output, where
        if res.exit_code == 0:
            assert value not in NEVER_ACCEPTED, "accepted " + where
            _check_result(path, dest, value, small)
        else:
            assert res.exit_code in (1, 2), where
            lines = res.output.strip().splitlines()
            assert len(lines) == 1 and lines[0].startswith("Error: "), where


def _check_result(path, dest, value, small):
    """An accepted value did what it says: a classify run stores it in its config (when the
    run's method has that setting; every method's config holds only its own)."""
    from dataclasses import fields

    from pipeline.stages.methods import option_fields
    from pipeline.stages.methods import get_method

    if path[0] not in ("classify", "evaluate") or dest not in option_fields():
        return  # --limit, --run, --wait: not method settings
    from stores.catalog import Catalog

    with Catalog(small.store, read_only=True) as cat:
        method, params = cat.query("SELECT method, params FROM runs ORDER BY run_id DESC LIMIT 1").fetchone()
    params = json.loads(params)
    own = {f.name for f in fields(get_method(method).config)}
    assert set(params["config"]) == own, (method, params["config"])
    if dest in own:
        assert params["config"][dest] == float(value), (path, dest, value, params["config"])


# ---- issue 21: option values that used to end in a traceback ------------------------------------
@pytest.mark.parametrize("args,expected", [
    (["build-attributes", "{classes}", "--llm-model", "m", "--base-url", "http://127.0.0.1:9/v1",
      "--llm-option", "default_headers", '{"X-Org": "org-1"}'], "--llm-option default_headers: not a field"),
    (["index-images", "{images}", "--workers", "0", "--faiss-index", "IVF999999999,PQ3"], "IVF999999999"),
], ids=["llm-option-default-headers", "faiss-index-huge-ivf"])
def test_option_values_that_crashed_are_one_line(args, expected, small, tmp_path):
    args = [a.replace("{classes}", str(small.classes)).replace("{images}", str(small.images)) for a in args]
    res = CliRunner().invoke(cli, [*args, "--store", str(small.store), *MODEL_ARGS])
    lines = res.output.strip().splitlines()
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    assert res.exit_code == 1 and lines[-1].startswith("Error: ") and expected in lines[-1], res.output
    assert "Traceback" not in res.output
