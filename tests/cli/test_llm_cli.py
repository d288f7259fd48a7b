"""The build-attributes / export-attributes commands against the loopback fake server."""
import json

import pytest
from click.testing import CliRunner

from tests.helpers.fake_llm_server import GOOD_FEATURES, FakeLLM
from pipeline.cli import cli
from stores.catalog import Catalog

SECRET = "sk-cli-SECRET-9876543210zyxwvu"
MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0", "--device", "cpu"]


@pytest.fixture
def runner():
    return CliRunner()


def test_build_attributes_with_an_llm_then_nothing_is_asked_again(tmp_path, runner):
    names = [f"flower_{i:03d}" for i in range(200)]
    (tmp_path / "classes.txt").write_text("\n".join(names + ["Flower 007"]) + "\n")
    store = str(tmp_path / "store")
    with FakeLLM(require_key=SECRET) as fake:
        for i in range(200):
            script = {1: ("429", "good"), 2: ("malformed", "good"), 3: ("empty", "good"), 4: ("name_only", "good"),
                      5: ("500", "good"), 6: ("malformed",) * 3}.get(i % 10)
            if script:
                fake.script(f"flower {i:03d}", *script)
        args = ["build-attributes", str(tmp_path / "classes.txt"), "--base-url", fake.url, "--llm-model", "any",
                "--store", store, "--no-progress", "--concurrency", "8", *MODEL]
        env = {"OPENAI_API_KEY": SECRET}
        res = runner.invoke(cli, args, env=env)
        assert res.exit_code == 1, res.output  # 20 classes never answered usably: reported, exit 1
        out = res.output
        assert "1 duplicate class names merged: 'Flower 007' (line 201) = 'flower_007' (line 8)" in out
        assert "200 classes, 180 done, 20 failed" in out and "20 failed (cached; --retry-failed asks again)" in out
        assert "retried" in out and "tokens" in out and SECRET not in out
        first = fake.count
        assert first == 200 + 20 * (1 + 1 + 1 + 1 + 1 + 2)

        fake.reset()
        res = runner.invoke(cli, args, env=env)
        assert res.exit_code == 1 and fake.count == 0
        assert "0 of 200 samples asked (200 from the cache), 0 requests" in res.output

        with Catalog(store, read_only=True) as cat:
            assert cat.query("SELECT count(DISTINCT class_id) FROM attributes").fetchone()[0] == 180
            assert cat.query("SELECT count(*) FROM attribute_embeddings").fetchone()[0] == 180 * len(GOOD_FEATURES)

        res = runner.invoke(cli, args + ["--retry-failed"], env=env)  # the server answers well now
        assert res.exit_code == 0 and fake.count == 20 and "200 done, 0 failed" in res.output

    with Catalog(store, read_only=True) as cat:
        assert cat.query("SELECT count(*) FROM attribute_embeddings").fetchone()[0] == 200 * len(GOOD_FEATURES)
    res = runner.invoke(cli, ["sql", "select status, count(*) as n from llm_calls group by status order by status",
                              "--store", store, "--format", "json"])
    assert res.exit_code == 0 and {r["status"] for r in json.loads(res.output)} == {"ok", "invalid"}
    res = runner.invoke(cli, ["sql", "select request, response, error from llm_calls", "--store", store, "--format", "csv"])
    assert res.exit_code == 0 and SECRET not in res.output and "Bearer" not in res.output
    res = runner.invoke(cli, ["build-attributes", "--help"], env={"OPENAI_API_KEY": SECRET})
    assert res.exit_code == 0 and SECRET not in res.output and "--llm-model" in res.output


def test_export_attributes_command(tmp_path, runner, attr_file):
    store = str(tmp_path / "s")
    res = runner.invoke(cli, ["build-attributes", str(attr_file), "--store", store, "--no-progress", *MODEL])
    assert res.exit_code == 0, res.output  # a JSON positional without --llm-model is imported
    res = runner.invoke(cli, ["export-attributes", "--schema", "clip-benchmark", "--dataset", "pets", "-o",
                              str(tmp_path / "t.json"), "--store", store])
    assert res.exit_code == 0, res.output
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc == {"pets": {"cat": ["cat, which has pointy ears", "cat, which is a long tail", "cat, which has whiskers"],
                            "dog": ["dog, which has floppy ears", "dog, which has a wet nose"]}}
    res = runner.invoke(cli, ["export-attributes", "--schema", "dclip", "-o", str(tmp_path / "d.json"), "--store", store])
    assert res.exit_code == 0 and json.loads((tmp_path / "d.json").read_text()) == json.loads(attr_file.read_text())
    res = runner.invoke(cli, ["build-attributes", "--from-json", str(tmp_path / "d.json"), "--store", store, "--no-progress"])
    assert res.exit_code == 0 and "0 attributes" in res.output  # same attributes: nothing new
    res = runner.invoke(cli, ["export-attributes", "--schema", "dclip", "-o", str(tmp_path / "x.json"), "--store", str(tmp_path / "none")])
    assert res.exit_code == 1 and res.output.startswith("Error: No store at")


@pytest.mark.parametrize(
    "args,content,code,message",
    [
        ([], None, 2, "Give a class list"),
        (["{f}"], b"cat\ndog\n", 2, "--llm-model is required"),
        (["{f}", "--from-json", "{f}"], b"cat\n", 2, "not both"),
        (["{f}", "--llm-model", "m"], b"cat\ncaf\xe9\n", 1, "not UTF-8 text (line 2"),
        (["{f}", "--llm-model", "m"], b"cat\n\ndog\n", 1, "line 2: empty class name"),
        (["{f}", "--llm-model", "m", "--duplicates", "error"], b"cat\nCat\n", 1, "duplicate class name"),
        (["{f}", "--llm-model", "m", "--concurrency", "0"], b"cat\n", 2, "--concurrency"),
    ],
)
def test_build_attributes_bad_input_is_one_line(tmp_path, runner, args, content, code, message):
    f = tmp_path / "classes.txt"
    if content is not None:
        f.write_bytes(content)
    res = runner.invoke(cli, ["build-attributes", *[a.format(f=f) for a in args], "--store", str(tmp_path / "s")])
    assert res.exit_code == code, res.output
    assert message in res.output and "Traceback" not in res.output
    if code == 1:
        assert res.output.count("\n") == 1 and res.output.startswith("Error: ")


def test_unreachable_server_is_one_line(tmp_path, runner):
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "c.txt").write_text("cat\ndog\n")
    res = runner.invoke(cli, ["build-attributes", str(tmp_path / "c.txt"), "--llm-model", "m", "--base-url",
                              f"http://127.0.0.1:{port}/v1", "--max-retries", "0", "--no-progress",
                              "--store", str(tmp_path / "s"), *MODEL])
    assert res.exit_code == 1 and "Is the server running?" in res.output and "Traceback" not in res.output
