"""Every command of docs/reproduce.md, parsed from the file (so the doc cannot drift), runs end to end on
the dataset miniatures with a randomly initialised ViT-B-32 of the real size, and records the preset,
the class names and the templates the doc says.

Substitutions, and only these: ``--pretrained openai`` -> ``random:0`` and every backbone -> ViT-B-32 (no
weights can be downloaded here; B/16 and L/14 rows run B/32's architecture), ``--n-crops 2`` on
``index-images`` (an explicit option over the preset's crop count, to keep the run short), and small
descriptor/sentence files holding the miniature's classes for ``$DESC``/``$CUPL``. The model is loaded
once and its text embeddings memoised for the whole test (same weights, same texts, same vectors).
"""
import json
import os
import re
from dataclasses import fields
import shlex
from functools import lru_cache
from pathlib import Path

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.config import get_preset
from pipeline.datasets import class_names, get_dataset, read_dataset
from pipeline.stages.methods import get_method
from stores.catalog import Catalog
from tests.helpers.dataset_miniatures import build

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "reproduce.md"
IMAGENET_CLASSES = [6, 11, 988]  # in ImageNet-A's and ImageNet-R's 200 (stingray, goldfinch, ...)
WCA_DIRS = {"cub": "cub", "pets": "oxford_pet", "dtd": "dtd", "food101": "food101", "places365": "place365"}


def documented_commands() -> list[tuple[str, str]]:
    """(id, command line) of every ``# id`` + ``pipeline ...`` pair in the doc's bash blocks."""
    text = DOC.read_text(encoding="utf-8")
    out = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        lines = block.splitlines()
        for head, line in zip(lines, lines[1:]):
            if head.startswith("# ") and line.startswith("pipeline "):
                out.append((head[2:].strip(), line))
    return out


def cell_references() -> set[str]:
    return set(re.findall(r"\]\(#([a-z0-9-]+)\)", DOC.read_text(encoding="utf-8")))


def test_every_table_cell_names_a_documented_command_and_each_command_is_named_once():
    ids = [cid for cid, _ in documented_commands()]
    assert len(ids) == len(set(ids)) == 40
    assert cell_references() == set(ids)
    for cid, line in documented_commands():
        for preset in re.findall(r"--preset (\S+)", line):
            get_preset(preset)  # every preset the doc names exists
        for ds in re.findall(r"--dataset (\S+)", line):
            get_dataset(ds)


def _setup(tmp: Path) -> dict:
    """Miniatures of every dataset under DATA, and descriptor/sentence files for their classes."""
    data, desc, cupl = tmp / "data", tmp / "desc", tmp / "cupl"
    for d in (desc, cupl, tmp / "stores", tmp / "results"):  # the doc's mkdir -p "$STORES" "$RESULTS"
        d.mkdir(parents=True)
    for name in ("imagenet", "imagenet-v2", "imagenet-sketch", "imagenet-r", "imagenet-a"):
        build(name, data, IMAGENET_CLASSES)  # the same classes everywhere: fewer texts to encode
    for name in ("cub", "food101", "pets", "dtd", "places365"):
        build(name, data)
    present = {}
    for name in ("imagenet", "imagenet-r", "imagenet-a", "imagenet-v2", "imagenet-sketch"):
        present.update({i: None for i in read_dataset(name, data).indices})
    for ds, key in (("imagenet", "imagenet"), ("cub", "cub"), ("pets", "pets"), ("dtd", "dtd"), ("food101", "food101"),
                    ("places365", "places365")):
        rec = get_dataset(ds)
        idx = sorted(present) if ds == "imagenet" else sorted(set(read_dataset(ds, data).indices))
        names = class_names(rec)
        (desc / f"descriptors_{key}.json").write_text(json.dumps({names[i]: ["a distinctive shape"] for i in idx}))
        if ds == "imagenet":
            openai = class_names(rec, "openai")
            (tmp / "cupl_imagenet.json").write_text(
                json.dumps({openai[i]: [f"A photo of a {openai[i]} in the wild."] for i in idx}))
        else:
            (cupl / WCA_DIRS[ds]).mkdir()
            (cupl / WCA_DIRS[ds] / "cupl.json").write_text(
                json.dumps({names[i]: [f"A photo of a {names[i]} in the wild."] for i in idx}))
    return {"DATA": str(data), "DESC": str(desc), "CUPL": str(cupl), "CUPL_IMAGENET": str(tmp / "cupl_imagenet.json"),
            "STORES": str(tmp / "stores"), "RESULTS": str(tmp / "results")}


def _argv(line: str, env: dict, model: str = "ViT-B-32") -> list[list[str]]:
    """The doc's line -> one argv per ``pipeline`` command, with the test's substitutions."""
    for k, v in sorted(env.items(), key=lambda kv: -len(kv[0])):
        line = line.replace(f"${k}", v)
    out = []
    for part in line.split(" && "):
        argv = shlex.split(part)
        assert argv[0] == "pipeline"
        argv = argv[1:]
        for i, a in enumerate(argv):
            if a == "--model":
                argv[i + 1] = model
            if a == "--pretrained":
                assert argv[i + 1] == "openai"
                argv[i + 1] = "random:0"
        if argv[0] == "index-images":
            argv += ["--n-crops", "2", "--workers", "0"]
        out.append(argv)
    return out


@pytest.fixture
def memoised_model(monkeypatch):
    """ViT-B-32 random:0 loaded once; its text embeddings memoised by text."""
    import numpy as np

    import pipeline.models as models

    real = models.load_model

    @lru_cache(maxsize=None)
    def load(name, pretrained, device=None, **kw):
        model = real(name, pretrained, device=device, **kw)
        encode = model.encode_texts
        memo: dict = {}

        def encode_texts(texts, batch_size=256):
            if not texts:
                return encode(texts)
            todo = [t for t in dict.fromkeys(texts) if t not in memo]
            if todo:
                for t, e in zip(todo, np.asarray(encode(todo, batch_size=batch_size))):
                    memo[t] = e
            return np.stack([memo[t] for t in texts])

        model.encode_texts = encode_texts
        return model

    monkeypatch.setattr(models, "load_model", lambda name, pretrained=None, device=None, **kw: load(name, pretrained, device, **kw))
    return load


def commands_to_run() -> list[tuple[str, str]]:
    """Every documented command with ZSL_REPRODUCE_ALL=1 (about 25 s each on 2 cores); by default
    the first command of each dataset, which runs every reader, preset family and restriction."""
    commands = documented_commands()
    if os.environ.get("ZSL_REPRODUCE_ALL") == "1":
        return commands
    first: dict[str, tuple[str, str]] = {}
    for cid, line in commands:
        first.setdefault(re.search(r"index-images --dataset (\S+)", line).group(1), (cid, line))
    return list(first.values())


@pytest.mark.slow
def test_every_documented_command_runs_on_the_miniatures(tmp_path, memoised_model, monkeypatch):
    monkeypatch.chdir(REPO)  # the doc's commands run from the checkout (template files)
    env = _setup(tmp_path)
    for cid, line in commands_to_run():
        store = None
        for argv in _argv(line, env):
            res = CliRunner().invoke(cli, argv, catch_exceptions=False)
            assert res.exit_code == 0, f"{cid}: {' '.join(argv)}\n{res.output}"
            store = argv[argv.index("--store") + 1]
        _check_store(cid, line, Path(store), env)


def _check_store(cid: str, line: str, store: Path, env: dict) -> None:
    preset = re.search(r"index-images .*--preset (\S+)", line).group(1)
    dataset = re.search(r"index-images --dataset (\S+)", line).group(1)
    name_set = (re.search(r"--class-names (\S+)", line) or [None, get_dataset(dataset).default_names])[1]
    methods = re.search(r"evaluate --method (\S+)", line).group(1).split(",")
    with Catalog(store, read_only=True) as cat:
        index_params = [json.loads(r[0]) for r in cat.query("select params from index_runs").fetchall()]
        runs = {m: json.loads(p) for m, p in cat.query("select method, params from runs order by run_id").fetchall()}
        labels = sorted({r[0] for r in cat.query("select label from images").fetchall()})
    assert len(index_params) == 1, cid
    p = index_params[0]
    assert p["preset"] == preset, cid
    assert p["regions"]["crop_min"] == get_preset(preset).regions["crop_min"], cid
    assert p["dataset"]["name"] == dataset and p["dataset"]["class_names"] == name_set, cid
    expected = class_names(get_dataset(dataset), name_set)
    assert p["dataset"]["classes"] == expected, cid
    ds = read_dataset(dataset, env["DATA"], name_set)
    assert labels == sorted({it.label for it in ds.items}), cid
    assert (p["dataset"]["restrict_to"] is not None) == (dataset in ("imagenet-a", "imagenet-r")), cid
    assert set(runs) == set(methods), cid
    for m, rp in runs.items():
        assert rp["config"]["top_k"] == 0, (cid, m)
        own = {f.name for f in fields(get_method(m).config)}  # a run records its own method's settings
        for k, v in get_preset(preset).method.items():
            if k in own:
                assert rp["config"][k] == v, (cid, m, k)
    if "clip-e" in runs:
        templates = re.search(r"--templates (\S+)", line)
        assert runs["clip-e"]["config"]["templates"] == (templates.group(1) if templates else "openai"), cid
    results = list(Path(env["RESULTS"]).glob(f"{dataset}_*_en_zeroshot_classification.json"))
    assert results, cid
