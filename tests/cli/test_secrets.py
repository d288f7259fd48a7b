"""Issue 11, deliverable 2: a canary key given every way a key can be given never lands
anywhere: not in any byte of the store (catalog.duckdb after a CHECKPOINT, Parquet, Faiss,
sidecars), not in what the commands print, not in log lines, not in the report or exports,
even though the server echoes every credential it receives into its answers."""
import base64
import json
import logging

import pytest
from click.testing import CliRunner

from pipeline.cli import cli
from pipeline.stages.llm.calls import LLMRun, redacting_logs, scrub, secrets_in_options, secrets_in_url
from stores.catalog import Catalog
from tests.helpers.fake_llm_server import FakeLLM

MODEL = ["--model", "zsl-tiny", "--pretrained", "random:0", "--device", "cpu"]
CANARY = {
    "env": "sk-canaryENV-0a1b2c3d4e5f6a7b",  # OPENAI_API_KEY
    "arg": "sk-canaryARG-1a1b2c3d4e5f6a7b",  # --api-key
    "header": "sk-canaryHDR-2a1b2c3d4e5f6a7b",  # --llm-option extra_headers {"api-key": ...} (Azure)
    "bearer": "sk-canaryBRR-3a1b2c3d4e5f6a7b",  # --llm-option extra_headers {"Authorization": "Bearer ..."}
    "query": "sk-canaryQRY-4a1b2c3d4e5f6a7b",  # --llm-option extra_query {"key": ...} (Gemini style)
    "body": "sk-canaryBDY-5a1b2c3d4e5f6a7b",  # --llm-option extra_body {"api_key": ...}
    "userinfo": "sk-canaryPWD-6a1b2c3d4e5f6a7b",  # http://user:<key>@host/v1 (Basic auth)
    "urlquery": "sk-canaryURL-7a1b2c3d4e5f6a7b",  # http://host/v1?api-key=<key>
}
CONTROL = "quokkacontrolclass"  # a class name that is stored: proves the byte grep can see strings


def _forms(secret: str) -> list[bytes]:
    """The key, its distinctive middle (a partial echo), and the Basic-auth token it can become."""
    out = [secret.encode(), secret[3:].encode(), secret[6:20].encode()]
    out.append(base64.b64encode(f"canaryuser:{secret}".encode()))
    return out


def _all_rows_text(store) -> str:
    parts = []
    with Catalog(store, read_only=True) as cat:
        for (table,) in cat.query("SELECT table_name FROM information_schema.tables").fetchall():
            for row in cat.query(f'SELECT * FROM "{table}"').fetchall():
                parts.append(repr(row))
    return "\n".join(parts)


def test_canary_key_is_found_nowhere(tmp_path, image_folder, caplog, monkeypatch):
    caplog.set_level(logging.DEBUG)  # the client libraries log requests (URLs, options) at DEBUG/INFO
    runner = CliRunner()
    store = str(tmp_path / "store")
    out = tmp_path / "out"
    out.mkdir()
    printed: list[str] = []

    def run(args, env=None, code=0):
        res = runner.invoke(cli, args, env={"OPENAI_API_KEY": CANARY["env"], **(env or {})})
        printed.append(res.output)
        assert res.exit_code == code, res.output
        assert res.exception is None or isinstance(res.exception, SystemExit), res.exception
        return res

    def classes(*names):
        p = tmp_path / f"classes-{names[0]}.txt"
        p.write_text("\n".join(names) + "\n")
        return str(p)

    with FakeLLM(echo_credentials=True) as fake:
        fake.expect("cat", "dog", "owl", "fox", "eel", "yak", CONTROL)
        base = ["--llm-model", "m", "--store", store, "-q", *MODEL]
        # 1. the key from the environment only
        run(["build-attributes", classes("cat", "dog"), "--base-url", fake.url, *base])
        # 2. --api-key, plus credentials in headers, query parameters and body fields
        run(["build-attributes", classes("owl", CONTROL), "--base-url", fake.url, "--api-key", CANARY["arg"],
             "--llm-option", "extra_headers", json.dumps({"api-key": CANARY["header"]}),
             "--llm-option", "extra_query", json.dumps({"key": CANARY["query"]}),
             "--llm-option", "extra_body", json.dumps({"api_key": CANARY["body"]}), *base])
        # 3. an Authorization header given as an option
        run(["build-attributes", classes("fox"), "--base-url", fake.url,
             "--llm-option", "extra_headers", json.dumps({"Authorization": f"Bearer {CANARY['bearer']}"}), *base])
        # 4. userinfo in the base URL (the client turns it into Basic auth)
        run(["build-attributes", classes("yak"), "--base-url",
             fake.url.replace("http://", f"http://canaryuser:{CANARY['userinfo']}@"), *base])
        # 5. a key in the base URL's query string: the route breaks, the server's 404 echoes it
        res = run(["build-attributes", classes("eel"), "--base-url", fake.url + f"?api-key={CANARY['urlquery']}",
                   "--max-retries", "0", *base], code=1)
        assert res.output.splitlines()[-1].startswith("Error: ") and "404" in res.output and "Traceback" not in res.output
        seen = " ".join(fake.seen_credentials)
        for name, key in CANARY.items():
            if name != "userinfo":
                assert key in seen, f"the {name} canary never reached the server: the test would prove nothing"
        assert base64.b64encode(f"canaryuser:{CANARY['userinfo']}".encode()).decode() in seen

    # the answers were usable apart from the echoed items: attributes exist for the classes
    with Catalog(store, read_only=True) as cat:
        stored = {n for (n,) in cat.query("SELECT DISTINCT c.name FROM attributes JOIN classes c USING (class_id)").fetchall()}
        echoed = cat.query("SELECT count(*) FROM llm_calls WHERE response LIKE '%[redacted]%'").fetchone()[0]
    assert stored == {"cat", "dog", "owl", "fox", "yak", CONTROL}
    assert echoed > 0  # the server did echo, and what was kept is the redacted text

    run(["index-images", str(image_folder), "--n-crops", "3", "--workers", "0", "--store", store, "-q", *MODEL])
    run(["classify", "--method", "lazsl,dclip", "--store", store, "-q", "--limit", "0", "--format", "jsonl"])
    run(["evaluate", "--store", store, "-o", str(out / "results"), "--format", "json"])
    run(["report", "--store", store, "-o", str(out / "report.html"), "--plot", str(out / "plots")])
    run(["explain", str(next(image_folder.rglob("*.png"))), "--store", store, "-o", str(out / "maps"), "--format", "json"])
    run(["export-attributes", "--schema", "dclip", "-o", str(out / "dclip.json"), "--store", store])
    run(["export-attributes", "--schema", "clip-benchmark", "-o", str(out / "cb.json"), "--store", store])
    for table in ("llm_calls", "llm_cache", "attributes", "classes"):
        run(["sql", f"select * from {table}", "--store", store, "--format", "csv", "-o", str(out / f"{table}.csv")])
    run(["catalog", "status", "--store", store])

    with Catalog(store) as cat:
        cat.con.execute("CHECKPOINT")  # everything from the WAL into the database file
    files = [p for p in tmp_path.rglob("*") if p.is_file() and not p.name.startswith("classes-")]
    assert any(p.suffix == ".parquet" for p in files) and any(p.suffix == ".index" for p in files)
    assert (out / "report.html").is_file() and any((out / "maps").iterdir())
    blobs = {str(p): p.read_bytes() for p in files}
    blobs["printed"] = "\n".join(printed).encode()
    blobs["logs"] = (caplog.text + "\n".join(r.getMessage() for r in caplog.records)).encode()
    blobs["rows"] = _all_rows_text(store).encode()
    assert CONTROL.encode() in blobs[str(tmp_path / "store" / "catalog.duckdb")]  # the grep sees stored text
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx logged the requests
    for name, key in CANARY.items():
        for form in _forms(key):
            hits = [where for where, blob in blobs.items() if form in blob]
            assert not hits, f"the {name} canary ({form!r}) is in {hits}"


# ---- the pieces ---------------------------------------------------------------------------
def test_secrets_in_options_and_urls():
    opts = {"extra_headers": {"api-key": "sk-hdr-123456789", "Authorization": "Bearer sk-bear-123456789",
                              "X-Org": "org-123456789"},
            "max_completion_tokens": 800, "extra_body": {"apiKey": "sk-body-123456789", "n": 2},
            "extra_query": {"api-version": "2024-06-01", "key": "sk-q-123456789"}}
    # issue 21: every value under a header, query or body option counts, whatever its name
    assert secrets_in_options(opts) == ["sk-hdr-123456789", "Bearer sk-bear-123456789", "sk-bear-123456789",
                                        "org-123456789", "sk-body-123456789", "2024-06-01", "sk-q-123456789"]
    shown = scrub(opts)
    assert shown == {"extra_headers": {"api-key": "[redacted]", "Authorization": "[redacted]", "X-Org": "[redacted]"},
                     "max_completion_tokens": 800, "extra_body": {"apiKey": "[redacted]", "n": "[redacted]"},
                     "extra_query": {"api-version": "[redacted]", "key": "[redacted]"}}
    found = secrets_in_url("http://bob:pa%2Fss-1234567@h:8/v1?api-key=sk-u-12345678&api-version=2024-01-01")
    assert found == ["bob", "pa/ss-1234567", base64.b64encode(b"bob:pa/ss-1234567").decode(), "sk-u-12345678",
                     "2024-01-01"]
    assert secrets_in_url("http://[::1") == []


def test_redaction_covers_escaped_forms_and_log_records(caplog):
    key = 'sk-"odd"/key-123456'
    run = LLMRun(None, "m", None, max_reasks=0, max_retries=0, options={}, secrets=[key, "short"], batch_id="b")
    assert run.redact(json.dumps({"k": key})) == '{"k": "[redacted]"}'  # the JSON-escaped form
    assert run.redact("short stays") == "[redacted] stays"  # a secret the user gave is found whatever its length
    assert "%2F" not in run.redact("u=sk-%22odd%22%2Fkey-123456")
    logger = logging.getLogger("openai._base_client")
    caplog.set_level(logging.DEBUG)
    with redacting_logs(run.redact):
        logging.getLogger("httpx").info("HTTP Request: POST http://h/v1?key=%s", key)
        try:
            raise RuntimeError(f"boom {key}")
        except RuntimeError:
            logger.exception("failed")
    logger.debug("after the run: %s", "not filtered")
    text = caplog.text
    assert key not in text and "key=[redacted]" in text and "boom [redacted]" in text
    assert "after the run: not filtered" in text  # the filter is gone after the run


@pytest.mark.parametrize("url", ["ftp://h/v1", "not a url", "http://h:notaport/v1"])
def test_unusable_base_url_is_one_line_without_the_url(tmp_path, url):
    (tmp_path / "c.txt").write_text("cat\n")
    res = CliRunner().invoke(cli, ["build-attributes", str(tmp_path / "c.txt"), "--llm-model", "m", "--base-url",
                                   url + "?key=sk-secret-0123456789", "--store", str(tmp_path / "s"), *MODEL])
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert "sk-secret" not in res.output
