"""build-attributes with an LLM: against a real chat-completions server on 127.0.0.1."""
import json

import duckdb
import pytest

from tests.helpers.fake_llm_server import GOOD_FEATURES, FakeLLM
from pipeline.errors import InputError
from pipeline.stages.attributes import add_attributes, encode_attributes, read_attribute_json
from pipeline.stages.export import export_attributes
from pipeline.stages.llm import LLMError, generate_attributes, parse_answer, read_class_list
from pipeline.stages.llm.prompt_sets import get_prompt_set, list_prompt_sets
from stores.catalog import Catalog
from stores.migrations import MIGRATIONS

SECRET = "sk-test-SECRET-0123456789abcdef"


@pytest.fixture
def fake():
    with FakeLLM(stall_s=1.5) as server:
        yield server


def good(name):
    return [f.format(n=name) for f in GOOD_FEATURES]


def stored(cat, name=None):
    sql = "SELECT c.name, a.text FROM attributes a JOIN classes c USING (class_id)"
    rows = cat.query(sql + " ORDER BY a.attr_id").fetchall()
    out = {}
    for n, t in rows:
        out.setdefault(n, []).append(t)
    return out if name is None else out.get(name, [])


# ---- the done-when scenario -------------------------------------------------------------
FAULTS = {  # i % 20 -> the script of that class (then the server answers well)
    1: ("429", "good"),
    3: ("500", "good"),
    5: ("malformed", "good"),
    7: ("empty", "good"),
    9: ("name_only", "good"),
    11: ("stall", "good"),
    13: ("prose",),
    15: ("malformed", "malformed", "malformed"),  # never usable: a recorded failure
    17: ("429", "malformed", "empty", "good"),  # an HTTP retry, then two re-asks
    19: ("503", "503", "good"),
}


def test_200_classes_with_faults_then_a_second_run_makes_no_request(tmp_path, tiny_model):
    with FakeLLM(stall_s=4.0) as fake:
        _run_200(tmp_path, fake, tiny_model)


def _run_200(tmp_path, fake, tiny_model):
    # The timeout (3 s) is far above a loopback answer even on a busy shared machine (a request
    # the client gave up on before the server read it would count here, not there), and far
    # below the stall (4 s).
    names = [f"bird_species_{i:03d}" for i in range(200)]
    (tmp_path / "classes.txt").write_text("\n".join(names) + "\n")
    classes, creport = read_class_list(tmp_path / "classes.txt")
    assert classes[0] == "bird species 000" and creport.underscores == 200
    for i, n in enumerate(classes):
        if i % 20 in FAULTS:
            fake.script(n, *FAULTS[i % 20])
    lost = [n for i, n in enumerate(classes) if i % 20 == 15]

    with Catalog(tmp_path / "store") as cat:
        rep = generate_attributes(cat, classes, llm_model="any", base_url=fake.url, concurrency=8, timeout=3.0,
                                  max_reasks=2, progress=False)
        assert sorted(rep.failed) == sorted(lost) and not rep.errors
        assert len(rep.done) == 190 and set(rep.done) | set(lost) == set(classes)
        assert all("not valid JSON" in rep.failures[n] for n in lost)
        # every class that eventually answered is stored, with its own answer only
        attrs = stored(cat)
        assert set(attrs) == set(rep.done)
        for n in rep.done:
            assert attrs[n] == good(n), n
        src = cat.query("SELECT DISTINCT source, style, prompt_version FROM attributes").fetchall()
        assert src == [("llm:any", "descriptors", "descriptors-v1")]

        # what was retried, and the log agrees with the server
        assert rep.requests == fake.count
        assert rep.asked == 200 and rep.cached == 0
        calls = cat.query("SELECT class_name, attempt, status, retries, error FROM llm_calls ORDER BY class_name, attempt").fetchall()
        by_class = {}
        for c in calls:
            by_class.setdefault(c[0], []).append(c[1:])
        assert sum(1 + c[3] for c in calls) == fake.count
        for i, n in enumerate(classes):
            kind = i % 20
            rows = by_class[n]
            if kind == 15:
                assert [r[:2] for r in rows] == [(1, "invalid"), (2, "invalid"), (3, "invalid")]
            elif kind == 17:
                assert [r[:3] for r in rows] == [(1, "invalid", 1), (2, "invalid", 0), (3, "ok", 0)]
            elif kind in (5, 7, 9):
                assert [r[:2] for r in rows] == [(1, "invalid"), (2, "ok")]
                assert rows[0][3] == {5: "the answer was not valid JSON (Expecting value at char 34)",
                                      7: "the list was empty", 9: f"it only repeated the class name {n!r}"}[kind]
            elif kind in (1, 3, 11):
                assert rows == [(1, "ok", 1, None)]
            elif kind == 19:
                assert rows == [(1, "ok", 2, None)]
            else:
                assert rows == [(1, "ok", 0, None)]
        n_fault = 10  # classes per fault kind
        assert rep.http_retries == n_fault * (1 + 1 + 1 + 1 + 2)  # 429, 500, stall, 429-then, 503x2
        assert rep.reasks == n_fault * (1 + 1 + 1 + 2 + 2)
        assert rep.retried == n_fault * 9  # every fault kind but "prose"
        assert rep.tokens == cat.query("SELECT sum(prompt_tokens) + sum(completion_tokens) FROM llm_calls").fetchone()[0] > 0
        assert cat.query("SELECT count(*) FROM llm_cache WHERE status = 'failed'").fetchone()[0] == 10

        encode_attributes(cat, tiny_model, progress=False)
        assert cat.query("SELECT count(*) FROM attribute_embeddings").fetchone()[0] == 190 * 5
        assert (cat.root / "faiss" / "class_prototypes.index").exists()

        # a second run asks nothing, reports the same
        fake.reset()
        rep2 = generate_attributes(cat, classes, llm_model="any", base_url=fake.url, concurrency=8, progress=False)
        assert fake.count == 0 and rep2.requests == 0 and rep2.cached == 200
        assert sorted(rep2.done) == sorted(rep.done) and sorted(rep2.failed) == sorted(lost)
        assert "not valid JSON" in rep2.failures[lost[0]] and rep2.attributes_added == 0

        # retry_failed asks only the failures; refresh asks everything it is given
        generate_attributes(cat, classes, llm_model="any", base_url=fake.url, retry_failed=True, progress=False)
        assert sorted(r["class"] for r in fake.log) == sorted(lost)
        assert stored(cat, lost[0]) == good(lost[0])
        fake.reset()
        rep3 = generate_attributes(cat, classes[:3], llm_model="any", base_url=fake.url, refresh=True, progress=False)
        assert fake.count == 3 and rep3.cached == 0 and rep3.attributes_added == 0
        # another model or prompt version is another cache key
        fake.reset()
        generate_attributes(cat, classes[:2], llm_model="other", base_url=fake.url, progress=False)
        assert fake.count == 2


def test_transport_errors_are_logged_not_cached(tmp_path, fake):
    fake.script("lynx", "500", "500")
    fake.script("puma", "400", "400", "400")  # a 400 about this request, whatever the format
    with Catalog(tmp_path / "s") as cat:
        rep = generate_attributes(cat, ["lynx", "puma", "cat"], llm_model="m", base_url=fake.url, max_retries=1,
                                  concurrency=1, progress=False)
        assert rep.done == ["cat"] and sorted(rep.errors) == ["lynx", "puma"] and not rep.failed
        rows = dict(cat.query("SELECT class_name, status || ' ' || retries || ' ' || error FROM llm_calls "
                              "WHERE status = 'error' AND class_name = 'lynx'").fetchall())
        assert rows["lynx"].startswith("error 1 HTTP 500: scripted 500")
        # a 400 under json_schema may be a rejected format: json_object and none are tried, and as
        # they fail too the run keeps json_schema
        assert [r["format"] for r in fake.requests_for("puma")] == ["json_schema", "json_object", "none"]
        assert rep.response_format == "json_schema" and fake.requests_for("cat")[0]["format"] == "json_schema"
        assert cat.query("SELECT count(*) FROM llm_cache").fetchone()[0] == 1
        fake.reset()
        rep2 = generate_attributes(cat, ["lynx", "puma", "cat"], llm_model="m", base_url=fake.url, progress=False)
        assert sorted(rep2.done) == ["cat", "lynx", "puma"] and fake.count == 2


def test_timeout_is_retried_by_the_client(tmp_path, fake):
    fake.script("jaguar", "stall", "stall", "stall")
    with Catalog(tmp_path / "s") as cat:
        rep = generate_attributes(cat, ["jaguar"], llm_model="m", base_url=fake.url, timeout=0.5, max_retries=1,
                                  progress=False)
        assert rep.errors == ["jaguar"] and "Timeout" in rep.failures["jaguar"]
        assert fake.count == 2 and rep.requests == 2
        rep = generate_attributes(cat, ["jaguar"], llm_model="m", base_url=fake.url, timeout=0.5, max_retries=1,
                                  progress=False)
        assert rep.done == ["jaguar"] and stored(cat, "jaguar") == good("jaguar")


@pytest.mark.parametrize("reject_object", [False, True])
def test_server_without_json_schema_falls_back_once_per_run(tmp_path, reject_object):
    with FakeLLM(reject_json_schema=True, reject_json_object=reject_object) as fake, Catalog(tmp_path / "s") as cat:
        fake.script("puma", "malformed", "good")
        rep = generate_attributes(cat, ["cat", "dog", "puma", "owl"], llm_model="m", base_url=fake.url, concurrency=1,
                                  progress=False)
        want = "none" if reject_object else "json_object"
        assert rep.response_format == want and len(rep.done) == 4
        formats = [r["format"] for r in fake.log]
        fallbacks = ["json_schema", "json_object"] if reject_object else ["json_schema"]
        assert formats == fallbacks + [want] * 5  # cat (after the fallback), dog, puma x2, owl
        rejected = cat.query("SELECT count(*) FROM llm_calls WHERE error LIKE 'server rejected response_format%'").fetchone()[0]
        assert rejected == len(fallbacks)
        assert stored(cat, "puma") == good("puma")


def test_sentences_style_asks_each_question(tmp_path, fake):
    fake.expect("tabby cat")
    with Catalog(tmp_path / "s") as cat:
        rep = generate_attributes(cat, ["tabby cat"], llm_model="m", base_url=fake.url, style="sentences", progress=False)
        ps = get_prompt_set("sentences")
        assert rep.samples == len(ps.questions) == fake.count == 5
        asked = [r["body"]["messages"][-1]["content"].splitlines()[0] for r in fake.log]
        assert sorted(asked) == sorted(q.format(a_class="a tabby cat") for q in ps.questions)
        assert sorted(r["body"]["seed"] for r in fake.log) == [0, 1, 2, 3, 4]
        assert all(r["body"]["temperature"] == 0.99 for r in fake.log)
        texts = stored(cat, "tabby cat")
        assert len(texts) == 25 and texts[0] == "A photo of a tabby cat, seen from angle 0-0."
        row = cat.query("SELECT prompt, style, prompt_version FROM attributes LIMIT 1").fetchone()
        assert row == ("A photo of a tabby cat, seen from angle 0-0.", "sentences", "sentences-v1")
        fake.reset()  # more samples later: only the new ones are asked
        generate_attributes(cat, ["tabby cat"], llm_model="m", base_url=fake.url, style="sentences", n_samples=7,
                            progress=False)
        assert sorted(r["body"]["seed"] for r in fake.log) == [5, 6]


def _all_text(cat) -> str:
    parts = []
    for (table,) in cat.query("SELECT table_name FROM information_schema.tables WHERE table_type = 'BASE TABLE'").fetchall():
        for row in cat.query(f'SELECT * FROM "{table}"').fetchall():
            parts.append(repr(row))
    return "\n".join(parts)


def test_api_key_is_never_stored(tmp_path, monkeypatch):
    with FakeLLM(require_key=SECRET) as fake:
        with Catalog(tmp_path / "s") as cat:
            rep = generate_attributes(cat, ["cat", "dog"], llm_model="m", base_url=fake.url, api_key=SECRET, progress=False)
            assert len(rep.done) == 2
            # a wrong key: the server echoes it; the run stops at once with a clear message
            wrong = "sk-wrong-KEY-abcdefghijklmnop"
            with pytest.raises(LLMError, match="401.*api-key"):
                generate_attributes(cat, [f"class {i}" for i in range(20)], llm_model="m", base_url=fake.url,
                                    api_key=wrong, concurrency=2, progress=False)
            assert fake.count < 2 + 20
            err = cat.query("SELECT error, response FROM llm_calls WHERE status = 'error' LIMIT 1").fetchone()
            assert "Incorrect API key provided: [redacted]" in err[0] and wrong not in err[1]
            # the environment's key and base URL are used, and not stored either
            monkeypatch.setenv("OPENAI_API_KEY", SECRET)
            monkeypatch.setenv("OPENAI_BASE_URL", fake.url)
            assert generate_attributes(cat, ["owl"], llm_model="m", progress=False).done == ["owl"]
            text = _all_text(cat)
            assert SECRET not in text and wrong not in text and "Bearer" not in text
            cat.con.execute("CHECKPOINT")
        blob = b"".join(p.read_bytes() for p in (tmp_path / "s").rglob("*") if p.is_file())
        for key in (SECRET, wrong):
            assert key.encode() not in blob and key[8:].encode() not in blob


# ---- answers ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "content,items,reason",
    [
        ('{"descriptors": ["red crest", "long tail", "black wings"]}', ["red crest", "long tail", "black wings"], None),
        ('<think>hmm</think>```json\n{"descriptors": ["- red crest.", "2) long tail", "Long tail", "black wings"]}\n```',
         ["red crest", "long tail", "black wings"], None),
        ('["red crest", "long tail", "black wings"]', ["red crest", "long tail", "black wings"], None),
        ('Here: {"features": ["red crest", "long tail", "black wings"]} hope it helps', ["red crest", "long tail", "black wings"], None),
        ('{"descriptors": []}', [], "the list was empty"),
        ('{"descriptors": ["Cardinal", "a cardinal."]}', [], "it only repeated the class name 'cardinal'"),
        ('{"descriptors": ["red crest"]}', ["red crest"], "only 1 usable item(s), at least 3 are needed"),
        ('{"descriptors": [1, 2]}', [], "'descriptors' must be a list of strings"),
        ('{"descriptors": ["a"', [], "the answer was not valid JSON"),
        ("", [], "the answer was empty"),
        ('{"a": [], "b": []}', [], "the answer had no 'descriptors' list"),
        ('"just text"', [], "the answer was a JSON str"),
    ],
)
def test_parse_answer(content, items, reason):
    got_items, got_reason = parse_answer(content, get_prompt_set("descriptors-v1"), "cardinal")
    assert got_items == items
    assert (got_reason is None) if reason is None else got_reason.startswith(reason)


def test_parse_answer_limits():
    ps = get_prompt_set("descriptors")
    many = json.dumps({"descriptors": [f"feature {i}" for i in range(30)] + ["word " * 40]})
    items, reason = parse_answer(many, ps, "x")
    assert reason is None and items == [f"feature {i}" for i in range(ps.max_items)]


def test_prompt_sets_are_versioned_data():
    assert {"descriptors-v1", "sentences-v1"} <= set(list_prompt_sets())
    ps = get_prompt_set("descriptors")
    assert ps.version == "descriptors-v1" and ps.style == "descriptors" and ps.default_samples == 1
    msgs = ps.messages("apple")
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert "distinguishing an apple in a photo" in msgs[-1]["content"]
    assert json.loads(msgs[2]["content"])["descriptors"][0] == "four-limbed primate"
    schema = ps.json_schema()["schema"]
    assert schema["required"] == ["descriptors"] and schema["additionalProperties"] is False
    s = get_prompt_set("sentences-v1")
    assert s.messages("owl", 1)[-1]["content"].startswith("How can you identify an owl?")
    assert s.messages("owl", 6)[-1]["content"] == s.messages("owl", 1)[-1]["content"]
    with pytest.raises(InputError, match="Unknown prompt set"):
        get_prompt_set("descriptors-v99")


# ---- class lists ------------------------------------------------------------------------
def test_class_list_txt_hygiene(tmp_path):
    p = tmp_path / "c.txt"
    p.write_text("Tabby_Cat\nlynx\n  tabby   cat \ngreat_white_shark\nLYNX\n\n\n", encoding="utf-8")
    names, rep = read_class_list(p)
    assert names == ["Tabby Cat", "lynx", "great white shark"]
    assert rep.duplicates == ["tabby cat", "LYNX"] and rep.underscores == 2
    assert rep.duplicate_notes[0] == "'tabby   cat' (line 3) = 'Tabby_Cat' (line 1)"
    assert any("2 duplicate class names merged" in line for line in rep.lines())
    with pytest.raises(InputError, match=r"duplicate class name: 'tabby   cat' \(line 3\)"):
        read_class_list(p, duplicates="error")


@pytest.mark.parametrize(
    "name,content,match",
    [
        ("c.txt", b"cat\n\ndog\n", "line 2: empty class name"),
        ("c.txt", b"cat\n  _ \n", "line 2: empty class name"),
        ("c.txt", b"cat\ncaf\xe9\n", r"not UTF-8 text \(line 2, byte 7"),
        ("c.txt", b"\n\n", "no class names"),
        ("c.csv", b"id,label\n1,cat\n", "no 'name' column"),
        ("c.csv", b"id,name\n1,cat\n2,\n", "line 3: empty class name"),
        ("c.json", b"\xff\xfe{}", "UTF-8"),
        ("missing.txt", None, "no such file"),
    ],
)
def test_class_list_errors(tmp_path, name, content, match):
    p = tmp_path / name
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(InputError, match=match):
        read_class_list(p)


def test_class_list_csv_and_json(tmp_path):
    p = tmp_path / "c.csv"
    p.write_bytes("\ufeffid,Name,wnid\n0,golden_retriever,n1\n1,Golden Retriever,n2\n2,café au lait,n3\n".encode("utf-8"))
    names, rep = read_class_list(p)
    assert names == ["golden retriever", "café au lait"] and rep.duplicates == ["Golden Retriever"] and rep.format == "csv"
    j = tmp_path / "c.json"
    j.write_text('{"donuts": [], "Donuts": ["glaze"], "corn_field": ["rows"]}')
    names, rep = read_class_list(j)
    assert names == ["donuts", "corn field"] and rep.duplicates == ["Donuts"] and rep.empty == [] and rep.format == "json"


def test_shared_descriptor_files_read_as_class_lists_and_round_trip(tmp_path):
    from tests.helpers import SHARED

    files = sorted((SHARED / "data" / "descriptors").glob("*/*.json"))
    if not files:
        pytest.skip("../shared/data/descriptors not present")
    # 7 DCLIP, 5 CuPL and 3 AWT files (SOURCES.md); a new folder there is read too
    assert {f.parent.name for f in files} >= {"dclip", "cupl", "awt"} and len(files) >= 15
    empties = {}
    for f in files:
        names, rep = read_class_list(f)
        mapping, arep = read_attribute_json(f)
        assert names == list(mapping) and rep.classes == len(names) > 0
        assert rep.duplicates == arep.duplicates  # reported (these files have none)
        empties[f.name] = rep.empty
        assert any(line.startswith(f"{f}: {len(names)} classes") for line in rep.lines())
    assert len(empties["descriptors_food101.json"]) == 5 and empties["descriptors_places365.json"] == ["corn field"]
    # the small ones through a store and back out, unchanged
    for name in ("descriptors_food101.json", "descriptors_eurosat.json", "cupl_eurosat.json"):
        f = next(p for p in files if p.name == name)
        mapping, _ = read_attribute_json(f)
        style = "sentences" if name.startswith("cupl") else "descriptors"
        with Catalog(tmp_path / name) as cat:
            add_attributes(cat, mapping, source="file", style=style)
            export_attributes(cat, "dclip", tmp_path / f"out-{name}")
        assert read_attribute_json(tmp_path / f"out-{name}")[0] == mapping


# ---- export -----------------------------------------------------------------------------
def test_export_round_trip_and_clip_benchmark_shape(tmp_path, attr_file):
    mapping, _ = read_attribute_json(attr_file)
    mapping["donuts"] = [""]
    with Catalog(tmp_path / "a") as cat:
        add_attributes(cat, mapping, source="file", style="descriptors")
        rows_a = cat.query("SELECT c.name, a.text, a.prompt FROM attributes a JOIN classes c USING (class_id) ORDER BY attr_id").fetchall()
        rep = export_attributes(cat, "dclip", tmp_path / "d.json")
        assert (rep.classes, rep.prompts) == (3, 5)
        cb = export_attributes(cat, "clip-benchmark", tmp_path / "cb.json", dataset="cifar10")
        assert cb.prompts == 6
    doc = json.loads((tmp_path / "d.json").read_text())
    assert doc == {"cat": ["pointy ears", "a long tail", "whiskers"], "dog": ["floppy ears", "has a wet nose"], "donuts": []}
    again, rep2 = read_attribute_json(tmp_path / "d.json")
    assert again == mapping and rep2.empty == ["donuts"]
    with Catalog(tmp_path / "b") as cat:
        add_attributes(cat, again, source="file", style="descriptors")
        rows_b = cat.query("SELECT c.name, a.text, a.prompt FROM attributes a JOIN classes c USING (class_id) ORDER BY attr_id").fetchall()
    assert rows_b == rows_a
    cbdoc = json.loads((tmp_path / "cb.json").read_text())
    assert list(cbdoc) == ["cifar10"]
    assert cbdoc["cifar10"]["cat"] == ["cat, which has pointy ears", "cat, which is a long tail", "cat, which has whiskers"]
    assert cbdoc["cifar10"]["donuts"] == ["donuts"]
    assert all(isinstance(v, list) and all(isinstance(s, str) for s in v) for v in cbdoc["cifar10"].values())


def test_export_refuses_mixed_styles_and_unknown_formats(tmp_path):
    with Catalog(tmp_path / "a") as cat:
        with pytest.raises(InputError, match="No descriptors attributes"):
            export_attributes(cat, "dclip", tmp_path / "x.json")
        add_attributes(cat, {"cat": ["ears"]}, source="f", style="descriptors")
        add_attributes(cat, {"cat": ["A photo of a cat."]}, source="f", style="sentences")
        with pytest.raises(InputError, match="several styles"):
            export_attributes(cat, "dclip", tmp_path / "x.json")
        with pytest.raises(InputError, match="Unknown export format"):
            export_attributes(cat, "csv", tmp_path / "x.json")
        assert export_attributes(cat, "dclip", tmp_path / "s.json", style="sentences").prompts == 1
    assert json.loads((tmp_path / "s.json").read_text()) == {"cat": ["A photo of a cat."]}


# ---- schema -----------------------------------------------------------------------------
def test_m002_llm_schema_and_late_migration(tmp_path):
    names = [m.__name__ for m in MIGRATIONS]
    assert names[:2] == ["m001_core", "m002_llm"]
    with Catalog(tmp_path / "new") as cat:  # (m004's views need the shard views Catalog creates)
        cols = [r[0] for r in cat.query("SELECT column_name FROM information_schema.columns WHERE table_name = 'llm_calls' "
                                        "ORDER BY ordinal_position").fetchall()]
    assert cols == ["id", "batch_id", "created_at", "model", "base_url", "prompt_version", "style", "class_name",
                    "sample_index", "attempt", "response_format", "request", "response", "status", "error",
                    "prompt_tokens", "completion_tokens", "latency_ms", "retries"]
    # a store made on main before m002 existed (m001 and m003 applied) gains it when opened
    db = tmp_path / "old" / "catalog.duckdb"
    db.parent.mkdir()
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE _migrations(name VARCHAR PRIMARY KEY, applied_at TIMESTAMP)")
    for m in MIGRATIONS:
        if m.__name__ in ("m001_core", "m003_image_errors"):
            m(con)
            con.execute("INSERT INTO _migrations VALUES (?, now())", [m.__name__])
    con.close()
    with Catalog(tmp_path / "old") as cat:
        assert cat.query("SELECT count(*) FROM llm_calls").fetchone()[0] == 0
