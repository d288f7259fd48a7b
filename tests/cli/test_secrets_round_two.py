"""Issue 21, deliverables 1 and 5: the key given in the ways the first canary test missed never
lands anywhere (the lock file, a non-credential query parameter, the base URL's path, a server
echoing it escaped, a 404 body, a 6-character key), and LLM answers are bounded before storing."""
from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote

from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.stages.llm.calls import LLMRun, redact_url, secrets_in_url
from stores.catalog import Catalog
from tests.helpers.fake_llm_server import FakeLLM

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0", "--device", "cpu"]
CANARY = {
    "code": "cq-canaryCODE-8a1b2c3d",  # --llm-option extra_query {"code": ...} (a name no list knows)
    "path": "sk-canaryPATH8a1b2c3d4e5f",  # http://host/v1/<key> (a key in the base URL's path)
    "short": "q7Zk2x",  # a 6-character --api-key
    "url404": "cq-canary404-9a1b2c3d",  # ?code=<key> in the base URL: the server's 404 quotes it
}


def _forms(secret: str) -> list[bytes]:
    out = {secret, json.dumps(secret)[1:-1].replace("/", "\\/"), quote(secret, safe=""),
           "".join(f"\\u{ord(c):04x}" for c in secret)}
    return [f.encode() for f in out]


def _store_blobs(root: Path) -> dict[str, bytes]:
    with Catalog(root) as cat:
        cat.con.execute("CHECKPOINT")
    blobs = {str(p): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    with Catalog(root, read_only=True) as cat:
        rows = []
        for (table,) in cat.query("SELECT table_name FROM information_schema.tables").fetchall():
            rows += [repr(r) for r in cat.query(f'SELECT * FROM "{table}"').fetchall()]
    blobs["rows"] = "\n".join(rows).encode()
    return blobs


def test_canary_round_two_is_found_nowhere(tmp_path):
    runner = CliRunner()
    store = tmp_path / "store"
    printed = []

    def run(args, code=0):
        res = runner.invoke(cli, args, env={"OPENAI_API_KEY": ""})
        printed.append(res.output)
        assert res.exit_code == code, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        return res

    def classes(*names):
        p = tmp_path / f"classes-{names[0]}.txt"
        p.write_text("\n".join(names) + "\n")
        return str(p)

    with FakeLLM(echo_credentials=True) as fake:
        fake.expect("cat", "dog", "owl", "eel")
        base = ["--llm-model", "m", "--store", str(store), "-q", *MODEL]
        run(["build-attributes", classes("cat"), "--base-url", fake.url, "--llm-option", "extra_query",
             json.dumps({"code": CANARY["code"]}), *base])
        run(["build-attributes", classes("dog"), "--base-url", fake.url + "/" + CANARY["path"], "--api-key",
             CANARY["path"], *base])
        run(["build-attributes", classes("owl"), "--base-url", fake.url, "--api-key", CANARY["short"], *base])
        res = run(["build-attributes", classes("eel"), "--base-url", fake.url + f"?code={CANARY['url404']}",
                   "--max-retries", "0", *base], code=1)
        assert "404" in res.output
        seen = " ".join(fake.seen_credentials)
        for name in ("code", "short", "url404"):
            assert CANARY[name] in seen, f"the {name} canary never reached the server: the test would prove nothing"
    blobs = _store_blobs(store)
    blobs["printed"] = "\n".join(printed).encode()
    assert b"cat" in blobs["rows"] and b"owl" in blobs["rows"]
    with Catalog(store, read_only=True) as cat:
        owl = cat.query("SELECT count(*) FROM attributes JOIN classes USING (class_id) WHERE name = 'owl'").fetchone()[0]
    assert owl > 0  # the answers were used, only the items quoting the key dropped
    for name, key in CANARY.items():
        for form in _forms(key):
            hits = [where for where, blob in blobs.items() if form in blob]
            assert not hits, f"the {name} canary ({form!r}) is in {hits}"


def test_every_escaped_form_of_a_key_is_redacted():
    key = "sk-x/y\"z-12"
    run = LLMRun(None, "m", None, max_reasks=0, max_retries=0, options={}, secrets=[key, "abc123"], batch_id="b")
    for text in (json.dumps(key).replace("/", "\\/"), json.dumps(key, ensure_ascii=True),
                 "".join(f"\\u{ord(c):04X}" for c in key), "".join(f"\\u{ord(c):04x}" for c in key),
                 quote(key, safe=""), quote(key, safe="").lower(), "sk-x\\u002fy%22z-12"):
        out = run.redact(f"before {text} after")
        assert out == "before [redacted] after" or out == 'before "[redacted]" after', (text, out)
    assert run.redact("an abc123 in free text") == "an [redacted] in free text"  # short keys too
    assert run.redact("nothing here") == "nothing here"


def test_the_base_url_is_recorded_without_what_may_be_a_key():
    assert redact_url("http://u:pw@h:8/v1/sk-abcdef0123456789/x?code=zz#f") == "http://h:8/v1/[redacted]/x"
    assert redact_url("https://api.example.com/openai/v1") == "https://api.example.com/openai/v1"
    assert set(secrets_in_url("http://h/v1?code=zzsecret&api-version=2024")) == {"zzsecret", "2024"}


def test_llm_answers_are_bounded_before_anything_is_stored(tmp_path):
    store = tmp_path / "store"
    (tmp_path / "c.txt").write_text("cat\ndog\nowl\n")
    with FakeLLM() as fake:
        fake.expect("cat", "dog", "owl")
        fake.script("cat", *["huge"] * 9)  # 3 samples, each asked once and re-asked twice
        fake.script("dog", "long_item")
        fake.script("owl", "many", "many", "many")
        res = CliRunner().invoke(cli, ["build-attributes", str(tmp_path / "c.txt"), "--llm-model", "m", "--base-url",
                                       fake.url, "--n-samples", "3", "--max-answer-bytes", "1M", "--max-item-chars",
                                       "200", "--max-items-per-class", "12", "--store", str(store), "-q", *MODEL])
    assert res.exit_code == 1 and "cat" in res.output and "over --max-answer-bytes" in res.output, res.output
    with Catalog(store, read_only=True) as cat:
        per_class = dict(cat.query("SELECT name, count(*) FROM attributes JOIN classes USING (class_id) "
                                   "GROUP BY name").fetchall())
        longest = cat.query("SELECT max(length(text)) FROM attributes").fetchone()[0]
        biggest = cat.query("SELECT max(length(response)) FROM llm_calls").fetchone()[0]
    assert "cat" not in per_class and per_class["owl"] == 12 and 0 < per_class["dog"] <= 12, per_class
    assert longest <= 200 and biggest < 10_000, (longest, biggest)
