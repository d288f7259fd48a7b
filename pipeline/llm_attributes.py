"""``build-attributes CLASSES``: class attributes written by an LLM, cached, validated, logged.

Any OpenAI-compatible chat-completions server works (OpenAI, vLLM, llama.cpp ``llama-server``,
Ollama): ``base_url`` / ``OPENAI_BASE_URL`` and ``api_key`` / ``OPENAI_API_KEY`` as in the
``openai`` client. One *job* is one (class, sample index); per job:

1. the cache (``llm_cache``, keyed by model, base URL, prompt version, style, class and
   sample index) answers if it can -- a re-run makes no request; ``refresh=True`` re-asks;
2. otherwise the prompt set's messages are sent with ``response_format`` json_schema; a
   server that rejects that (HTTP 400/422) is asked with json_object, then with none, and
   the format that worked is kept for the rest of the run;
3. HTTP 408/409/429/5xx, timeouts and dropped connections are retried by the client itself
   (``max_retries``, exponential backoff, ``Retry-After`` honoured); ``retries`` in
   ``llm_calls`` says how many it took;
4. the answer is parsed and validated (pydantic); an unusable answer (not JSON, empty list,
   only the class name, too few items) is re-asked, with the reason, ``max_reasks`` times;
   then the job is recorded as failed (cached, so a re-run does not ask again; pass
   ``retry_failed=True`` to). A transport error after the client's retries is *not* cached.

Every request, its raw response, tokens and latency land in ``llm_calls`` (never the API
key). The validated answers of every sample of a class are merged and stored with
:func:`pipeline.attributes.add_attributes` (``source = llm:<model>``, the prompt version
stored with every attribute); the caller then runs ``encode_attributes``.

The worker threads only talk HTTP; every database write happens in the calling thread.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from stores.catalog import Catalog, now_utc

from .attributes import (
    InputError,
    add_attributes,
    clean_class_name,
    norm_class_name,
    read_attribute_json,
)
from .prompt_sets import PromptSet, get_prompt_set

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "sk-no-key-required"  # local servers ignore the key, the client insists on one
FORMATS = ("json_schema", "json_object", "none")
EXPORT_FORMATS = ("clip-benchmark", "dclip")
CSV_NAME_COLUMNS = ("name", "classname", "class_name", "class")


class LLMError(InputError):
    """The server refused the whole run (bad key, unknown model, unreachable); the message says why."""


# ---- class lists ------------------------------------------------------------------------
@dataclass
class ClassListReport:
    path: str = ""
    format: str = "txt"  # txt | csv | json
    classes: int = 0
    duplicates: list[str] = field(default_factory=list)  # merged names, as written
    duplicate_notes: list[str] = field(default_factory=list)  # "'Cat' (line 5) = 'cat' (line 1)"
    empty: list[str] = field(default_factory=list)  # JSON input: classes with an empty list
    underscores: int = 0  # names where '_' became a space

    def lines(self) -> list[str]:
        out = [f"{self.path}: {self.classes} classes ({self.format})"]
        if self.duplicates:
            notes = "; ".join(self.duplicate_notes[:5]) or ", ".join(self.duplicates[:5])
            out.append(f"{len(self.duplicates)} duplicate class names merged: {notes}" + (" ..." if len(self.duplicates) > 5 else ""))
        if self.empty:
            out.append(f"{len(self.empty)} classes with an empty list in the file: {', '.join(self.empty[:10])}")
        if self.underscores:
            out.append(f"{self.underscores} names had '_' turned into spaces (as DCLIP does)")
        return out


def _decode(path: Path, raw: bytes) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}: not UTF-8 text (line {line}, byte {exc.start}: {raw[exc.start:exc.start + 1]!r}); re-save it as UTF-8."
        ) from None


def read_class_list(path: str | os.PathLike, *, duplicates: str = "merge") -> tuple[list[str], ClassListReport]:
    """Class names from a text file (one per line), a CSV with a ``name`` column, or a
    DCLIP/CuPL JSON (its keys). Names are cleaned as DCLIP does (``_`` -> space, whitespace
    collapsed); an empty name is refused; names equal after case/whitespace normalisation are
    merged and reported (``duplicates="merge"``) or refused (``duplicates="error"``).
    The order is the file's order (it is the label order for most datasets)."""
    if duplicates not in ("merge", "error"):
        raise InputError(f"duplicates must be 'merge' or 'error', not {duplicates!r}.")
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file; give a class list (.txt one name per line, .csv with a name column, or .json).")
    suffix = path.suffix.lower()
    report = ClassListReport(path=str(path))

    if suffix == ".json":
        mapping, jrep = read_attribute_json(path)  # does its own cleaning, merging and reporting
        report.format, report.duplicates, report.empty = "json", list(jrep.duplicates), list(jrep.empty)
        if duplicates == "error" and jrep.duplicates:
            raise InputError(f"{path}: duplicate class names after normalisation: {', '.join(jrep.duplicates[:10])}.")
        names = list(mapping)
        report.classes = len(names)
        if not names:
            raise InputError(f"{path}: no class names in the file.")
        return names, report

    text = _decode(path, path.read_bytes())
    entries: list[tuple[str, str]] = []  # (where, name as written)
    if suffix in (".csv", ".tsv"):
        report.format = "csv"
        reader = csv.DictReader(io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ",")
        cols = {c.strip().lower(): c for c in (reader.fieldnames or []) if c}
        col = next((cols[c] for c in CSV_NAME_COLUMNS if c in cols), None)
        if col is None:
            raise InputError(
                f"{path}: no 'name' column (columns: {', '.join(reader.fieldnames or []) or 'none'}); "
                "the first row must be a header with a 'name' column."
            )
        for row in reader:
            entries.append((f"line {reader.line_num}", row.get(col) or ""))
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():  # a trailing newline is not an empty name
            lines.pop()
        entries = [(f"line {i}", line) for i, line in enumerate(lines, 1)]

    names: list[str] = []
    first: dict[str, tuple[str, str]] = {}
    for where, written in entries:
        name = clean_class_name(written)
        if not name:
            raise InputError(
                f"{path}: {where}: empty class name (the class order is the label order, so it is not skipped); "
                "name the class or delete the line."
            )
        if "_" in written:
            report.underscores += 1
        norm = name.lower()
        if norm in first:
            note = f"{written.strip()!r} ({where}) = {first[norm][1]!r} ({first[norm][0]})"
            if duplicates == "error":
                raise InputError(f"{path}: duplicate class name: {note}.")
            report.duplicates.append(name)
            report.duplicate_notes.append(note)
            continue
        first[norm] = (where, written.strip())
        names.append(name)
    if not names:
        raise InputError(f"{path}: no class names in the file.")
    report.classes = len(names)
    return names, report


# ---- answers ----------------------------------------------------------------------------
_THINK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")


def _answer_model(key: str):
    from pydantic import create_model

    return create_model(f"{key.title()}Answer", **{key: (list[str], ...)})


def _load_json_loose(text: str) -> Any:
    """JSON from a chat answer: tolerate <think> blocks, code fences and prose around it."""
    text = _FENCE_RE.sub("", _THINK_RE.sub("", text).strip()).strip()
    try:
        return json.loads(text)
    except json.JSONDecodeError as first_error:
        for open_, close in (("{", "}"), ("[", "]")):
            i, j = text.find(open_), text.rfind(close)
            if 0 <= i < j:
                try:
                    return json.loads(text[i : j + 1])
                except json.JSONDecodeError:
                    pass
        raise first_error


def parse_answer(content: str | None, ps: PromptSet, class_name: str) -> tuple[list[str], str | None]:
    """(usable items, None) or (what could be salvaged, why the answer is unusable)."""
    from pydantic import ValidationError

    if content is None or not content.strip():
        return [], "the answer was empty"
    try:
        obj = _load_json_loose(content)
    except json.JSONDecodeError as exc:
        return [], f"the answer was not valid JSON ({exc.msg} at char {exc.pos})"
    if isinstance(obj, list):
        obj = {ps.answer_key: obj}
    if not isinstance(obj, dict):
        return [], f"the answer was a JSON {type(obj).__name__}, not an object with a {ps.answer_key!r} list"
    if ps.answer_key not in obj:
        lists = [v for v in obj.values() if isinstance(v, list)]
        if len(lists) != 1:
            return [], f"the answer had no {ps.answer_key!r} list"
        obj = {ps.answer_key: lists[0]}
    try:
        raw_items = getattr(_answer_model(ps.answer_key).model_validate(obj), ps.answer_key)
    except ValidationError:
        return [], f"{ps.answer_key!r} must be a list of strings"
    if not raw_items:
        return [], "the list was empty"

    name = norm_class_name(class_name)
    just_name = {name, f"a {name}", f"an {name}", f"the {name}", f"a photo of a {name}", f"a photo of an {name}"}
    items: list[str] = []
    seen: set[str] = set()
    dropped_name = dropped_long = 0
    for it in raw_items:
        s = re.sub(r"\s+", " ", _BULLET_RE.sub("", it)).strip()
        if ps.style == "descriptors":
            s = s.rstrip(".").strip()
        if not s:
            continue
        key = s.lower().strip(" .")
        if key in just_name:
            dropped_name += 1
            continue
        if len(s.split()) > ps.max_words:
            dropped_long += 1
            continue
        if key not in seen:
            seen.add(key)
            items.append(s)
    items = items[: ps.max_items]
    if not items:
        if dropped_name:
            return [], f"it only repeated the class name {class_name!r}"
        if dropped_long:
            return [], f"every item was longer than {ps.max_words} words"
        return [], "every item was blank"
    if len(items) < ps.min_items:
        return items, f"only {len(items)} usable item(s), at least {ps.min_items} are needed"
    return items, None


# ---- records ----------------------------------------------------------------------------
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_ulid() -> str:
    """26-character ULID: 48-bit millisecond time + 80 random bits, sorts by time."""
    n = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(n >> (5 * i)) & 31] for i in reversed(range(26)))


@dataclass
class CallRecord:
    id: str
    created_at: Any
    class_name: str
    sample_index: int
    attempt: int
    response_format: str
    request: str
    response: str | None = None
    status: str = "error"  # ok | invalid | error
    error: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    retries: int = 0
    finish_reason: str | None = None  # not stored: "length" explains a cut-off answer


@dataclass
class JobResult:
    class_name: str
    sample_index: int
    status: str  # ok | short | failed (content: cached) | error (transport: not cached) | skipped
    items: list[str] = field(default_factory=list)
    calls: list[CallRecord] = field(default_factory=list)
    reason: str | None = None
    fatal: bool = False  # the server refused in a way every job will hit (key, model, URL)
    decided_by: str | None = None  # the call id whose answer was kept


@dataclass
class GenerateReport:
    llm_model: str = ""
    base_url: str = ""
    prompt_version: str = ""
    style: str = ""
    classes: int = 0
    samples: int = 0  # jobs = classes x samples
    cached: int = 0  # jobs answered from the cache (no request)
    asked: int = 0  # jobs sent to the server this run
    done: list[str] = field(default_factory=list)  # classes with at least one usable answer
    failed: list[str] = field(default_factory=list)  # no usable answer after every re-ask (cached)
    errors: list[str] = field(default_factory=list)  # transport errors, nothing usable (asked again next run)
    short: list[str] = field(default_factory=list)  # accepted with fewer than min_items items
    retried: int = 0  # jobs that needed more than one request
    reasks: int = 0  # re-asks after an unusable answer
    http_retries: int = 0  # retries by the client (429/5xx/timeouts)
    requests: int = 0  # HTTP requests made, retries included
    prompt_tokens: int = 0
    completion_tokens: int = 0
    attributes_added: int = 0
    response_format: str = "json_schema"  # the format in use at the end of the run
    failures: dict[str, str] = field(default_factory=dict)  # class -> last reason

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def lines(self) -> list[str]:
        out = [
            f"{self.llm_model} at {self.base_url}, prompt {self.prompt_version}: {self.classes} classes, "
            f"{len(self.done)} done, {len(self.failed) + len(self.errors)} failed, {self.retried} retried "
            f"({self.reasks} re-asks, {self.http_retries} HTTP retries)",
            f"{self.asked} of {self.samples} samples asked ({self.cached} from the cache), {self.requests} requests, "
            f"{self.tokens} tokens ({self.prompt_tokens} prompt + {self.completion_tokens} completion), "
            f"{self.attributes_added} new attributes",
        ]
        if self.response_format != "json_schema":
            out.append(f"the server rejected json_schema; used response_format {self.response_format}")
        if self.short:
            out.append(f"{len(self.short)} classes kept with fewer items than asked: {', '.join(self.short[:10])}")
        for kind, names in (("failed (cached; --retry-failed asks again)", self.failed), ("errors (asked again next run)", self.errors)):
            if names:
                shown = "; ".join(f"{n}: {self.failures.get(n, '?')}" for n in names[:5])
                out.append(f"{len(names)} {kind}: {shown}" + (" ..." if len(names) > 5 else ""))
        return out


# ---- the run ----------------------------------------------------------------------------
def _redact_url(url: str) -> str:
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), "", ""))


def _retryable(exc: Exception) -> bool:
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = getattr(exc, "status_code", None)
    return status is not None and (status in (408, 409, 429) or status >= 500)


class _Run:
    """One generate_attributes call: shared, thread-safe state of the workers."""

    def __init__(self, client, llm_model: str, ps: PromptSet, *, max_reasks: int, max_retries: int,
                 options: dict | None, secrets: Sequence[str], batch_id: str):
        self.client, self.llm_model, self.ps = client, llm_model, ps
        self.max_reasks, self.max_retries = max_reasks, max_retries
        self.options = dict(options or {})
        self.secrets = [s for s in secrets if s and len(s) >= 8]
        self.batch_id = batch_id
        self.mode = FORMATS[0]
        self.lock = threading.Lock()
        self.abort = threading.Event()

    def redact(self, text: str | None) -> str | None:
        if text is None:
            return None
        for s in self.secrets:
            text = text.replace(s, "[redacted]")
        return text

    def body(self, messages: list[dict], mode: str, sample_index: int) -> dict:
        sampling = dict(self.ps.sampling)
        body: dict[str, Any] = {"model": self.llm_model, "messages": messages}
        body["temperature"] = sampling.get("temperature", 0.0)
        if sampling.get("max_tokens"):
            body["max_tokens"] = sampling["max_tokens"]
        if sampling.get("seed") is not None:
            body["seed"] = int(sampling["seed"]) + sample_index
        if mode == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": self.ps.json_schema()}
        elif mode == "json_object":
            body["response_format"] = {"type": "json_object"}
        for k, v in self.options.items():
            if v is None:
                body.pop(k, None)
            else:
                body[k] = v
        return body

    def call(self, messages: list[dict], class_name: str, sample_index: int, attempt: int):
        """Send one request, falling back through the response formats the server rejects.
        Returns (records, content, fatal); content is None when the last record is an error."""
        import openai

        records: list[CallRecord] = []
        with self.lock:
            start = FORMATS.index(self.mode)
        for mode in FORMATS[start:]:
            body = self.body(messages, mode, sample_index)
            rec = CallRecord(new_ulid(), now_utc(), class_name, sample_index, attempt, mode, json.dumps(body, ensure_ascii=False))
            records.append(rec)
            t0 = time.perf_counter()
            try:
                raw = self.client.chat.completions.with_raw_response.create(**body)
            except openai.APIStatusError as exc:
                rec.latency_ms = (time.perf_counter() - t0) * 1000
                rec.response = self.redact(_response_text(exc))
                rec.error = self.redact(f"HTTP {exc.status_code}: {_error_message(exc)}")
                rec.retries = self.max_retries if _retryable(exc) else 0
                if exc.status_code in (400, 422) and mode != "none":
                    rec.error = f"server rejected response_format {mode}; " + rec.error
                    continue
                fatal = exc.status_code in (401, 403, 404)
                return records, None, fatal
            except openai.APIError as exc:  # timeouts, connection errors (after the client's retries)
                rec.latency_ms = (time.perf_counter() - t0) * 1000
                rec.retries = self.max_retries if _retryable(exc) else 0
                rec.error = self.redact(f"{type(exc).__name__}: {exc}")
                fatal = isinstance(exc, openai.APIConnectionError) and not isinstance(exc, openai.APITimeoutError)
                return records, None, fatal
            rec.latency_ms = (time.perf_counter() - t0) * 1000
            rec.retries = int(getattr(raw, "retries_taken", 0) or 0)
            rec.response = self.redact(raw.text)
            if mode != FORMATS[start]:
                with self.lock:  # remember for the rest of the run
                    if FORMATS.index(mode) > FORMATS.index(self.mode):
                        self.mode = mode
            try:
                completion = raw.parse()
                choice = completion.choices[0]
                content = choice.message.content
                if completion.usage is not None:
                    rec.prompt_tokens = completion.usage.prompt_tokens
                    rec.completion_tokens = completion.usage.completion_tokens
                rec.finish_reason = choice.finish_reason
            except Exception as exc:  # a 200 that is not a chat.completion
                rec.status = "invalid"
                rec.error = f"the response body is not a chat.completion ({type(exc).__name__})"
                return records, "", False
            rec.status = "ok"
            return records, content or "", False
        return records, None, False

    def job(self, class_name: str, sample_index: int) -> JobResult:
        if self.abort.is_set():
            return JobResult(class_name, sample_index, "skipped")
        ps = self.ps
        messages = ps.messages(class_name, sample_index)
        calls: list[CallRecord] = []
        best: tuple[list[str], str] | None = None
        reason = None
        for attempt in range(1, self.max_reasks + 2):
            records, content, fatal = self.call(messages, class_name, sample_index, attempt)
            calls.extend(records)
            rec = records[-1]
            if content is None:
                return JobResult(class_name, sample_index, "error", calls=calls, reason=rec.error, fatal=fatal)
            items, reason = parse_answer(content, ps, class_name)
            if rec.status == "invalid" and rec.error:  # body was not a completion
                items, reason = [], rec.error
            elif reason and rec.finish_reason == "length":
                reason += " (the answer was cut off at max_tokens)"
            if reason is None:
                rec.status, rec.error = "ok", None
                return JobResult(class_name, sample_index, "ok", items, calls, decided_by=rec.id)
            rec.status, rec.error = "invalid", reason
            if items and (best is None or len(items) > len(best[0])):
                best = (items, rec.id)
            if attempt <= self.max_reasks:
                messages = messages + [
                    {"role": "assistant", "content": content},
                    {"role": "user", "content": ps.reask(class_name, reason, sample_index)},
                ]
        if best is not None:  # some usable items, fewer than asked: keep them, say so
            return JobResult(class_name, sample_index, "short", best[0], calls, reason=reason, decided_by=best[1])
        return JobResult(class_name, sample_index, "failed", [], calls, reason=reason, decided_by=calls[-1].id)


def _response_text(exc) -> str | None:
    try:
        return exc.response.text
    except Exception:
        return None


def _error_message(exc) -> str:
    body = getattr(exc, "body", None)  # the client unwraps {"error": {...}} already
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(exc, "message", exc))


def make_client(base_url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0, max_retries: int = 3):
    """An ``openai.OpenAI`` for any compatible server; local servers need no key."""
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    if not api_key:
        if urlsplit(base_url).hostname == urlsplit(OPENAI_DEFAULT_BASE_URL).hostname:
            raise LLMError("No API key for api.openai.com: set OPENAI_API_KEY (or --api-key), or point --base-url at a local server.")
        api_key = NO_KEY
    return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)


def generate_attributes(
    cat: Catalog,
    class_names: Sequence[str],
    *,
    llm_model: str,
    base_url: str | None = None,
    api_key: str | None = None,
    style: str = "descriptors",
    prompt_version: str | None = None,
    n_samples: int | None = None,
    concurrency: int = 4,
    refresh: bool = False,
    retry_failed: bool = False,
    timeout: float = 120.0,
    max_retries: int = 3,
    max_reasks: int = 2,
    options: dict | None = None,
    progress: bool = True,
    client=None,
) -> GenerateReport:
    """Ask the LLM for what the cache lacks, log every call, store the attributes.

    ``class_names`` are cleaned and de-duplicated as :func:`read_class_list` does. The
    attributes are added (not encoded): run ``encode_attributes(cat, model)`` afterwards.
    """
    from tqdm import tqdm

    if not llm_model:
        raise InputError("Name the LLM with --llm-model (e.g. gpt-4o-mini, or the model your server serves).")
    if concurrency < 1 or max_reasks < 0 or max_retries < 0 or timeout <= 0:
        raise InputError("concurrency must be >= 1, max_reasks and max_retries >= 0, timeout > 0.")
    ps = get_prompt_set(prompt_version or style)
    if ps.style != style and prompt_version:
        style = ps.style  # an explicit version decides the style
    n_samples = ps.default_samples if n_samples is None else n_samples
    if n_samples < 1:
        raise InputError("n_samples must be >= 1.")
    names: list[str] = []
    seen: set[str] = set()
    for n in class_names:
        clean = clean_class_name(n)
        if not clean:
            raise InputError("An empty class name; every class needs a name.")
        if clean.lower() not in seen:
            seen.add(clean.lower())
            names.append(clean)

    if client is None:
        client = make_client(base_url, api_key, timeout=timeout, max_retries=max_retries)
    else:
        max_retries = getattr(client, "max_retries", max_retries)
    server = _redact_url(str(client.base_url))
    secrets = [api_key or "", getattr(client, "api_key", "") or "", os.environ.get("OPENAI_API_KEY", "")]
    run = _Run(client, llm_model, ps, max_reasks=max_reasks, max_retries=max_retries, options=options,
               secrets=[s for s in secrets if s != NO_KEY], batch_id=new_ulid())
    report = GenerateReport(llm_model=llm_model, base_url=server, prompt_version=ps.version, style=ps.style,
                            classes=len(names), samples=len(names) * n_samples)
    key = [llm_model, server, ps.version, ps.style]

    cache = {
        (r[0], r[1]): r[2]
        for r in cat.query(
            "SELECT norm_name, sample_index, status FROM llm_cache WHERE model = ? AND base_url = ? "
            "AND prompt_version = ? AND style = ?", key
        ).fetchall()
    }
    jobs = []
    for name in names:
        for i in range(n_samples):
            status = cache.get((name.lower(), i))
            if status is None or refresh or (status == "failed" and retry_failed):
                jobs.append((name, i))
    report.cached = report.samples - len(jobs)

    outcome: dict[str, list[str]] = {}  # class -> statuses of this run's jobs
    fatal: JobResult | None = None
    bar = tqdm(total=len(jobs), desc=f"ask {llm_model}", unit="sample", disable=not progress or not jobs)
    pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="llm")
    pending: list[JobResult] = []  # finished, not yet written: flushed every second or 64 jobs
    last_flush = time.monotonic()
    try:
        futures = [pool.submit(run.job, name, i) for name, i in jobs]
        for fut in as_completed(futures):
            res = fut.result()
            if res.status == "skipped":
                continue
            pending.append(res)
            if len(pending) >= 64 or time.monotonic() - last_flush > 1.0:
                _write_jobs(cat, key, run, pending)
                pending, last_flush = [], time.monotonic()
            report.asked += 1
            outcome.setdefault(res.class_name, []).append(res.status)
            if res.reason and res.status != "ok":
                report.failures[res.class_name] = res.reason
            n_req = sum(1 + c.retries for c in res.calls)
            report.requests += n_req
            report.http_retries += sum(c.retries for c in res.calls)
            report.reasks += max(c.attempt for c in res.calls) - 1
            report.retried += n_req > 1
            report.prompt_tokens += sum(c.prompt_tokens or 0 for c in res.calls)
            report.completion_tokens += sum(c.completion_tokens or 0 for c in res.calls)
            if res.fatal and fatal is None:
                fatal = res
                run.abort.set()
            bar.update(1)
            bar.set_postfix(failed=len(report.failures), retried=report.retried, refresh=False)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _write_jobs(cat, key, run, pending)  # what finished is kept, even on Ctrl-C
        bar.close()
    report.response_format = run.mode

    # merge every usable sample of each class (cached or new), in class-list and sample order
    rows = cat.query(
        "SELECT norm_name, sample_index, status, items FROM llm_cache WHERE model = ? AND base_url = ? "
        "AND prompt_version = ? AND style = ? ORDER BY norm_name, sample_index", key
    ).fetchall()
    by_class: dict[str, list[tuple[int, str, list[str]]]] = {}
    for norm, i, status, items in rows:
        if i < n_samples:
            by_class.setdefault(norm, []).append((i, status, json.loads(items)))
    mapping: dict[str, list[str]] = {}
    for name in names:
        samples = by_class.get(name.lower(), [])
        texts: list[str] = []
        for _, status, items in samples:
            texts += [t for t in items if t not in texts]
        if texts:
            mapping[name] = texts
            report.done.append(name)
            if any(s == "short" for _, s, _ in samples) and not any(s == "ok" for _, s, _ in samples):
                report.short.append(name)
        elif "error" in outcome.get(name, []) or (fatal is not None and name not in by_class):
            report.errors.append(name)
            if fatal is not None and name not in report.failures:
                report.failures[name] = "not asked: the run was stopped"
        else:
            report.failed.append(name)
    earlier = [n for n in report.failed if n not in report.failures]
    if earlier:  # failed in an earlier run: the reason is in the call that decided it
        reasons = dict(cat.query(
            "SELECT k.norm_name, c.error FROM llm_cache k JOIN llm_calls c ON c.id = k.call_id WHERE k.status = 'failed' "
            "AND k.model = ? AND k.base_url = ? AND k.prompt_version = ? AND k.style = ?", key
        ).fetchall())
        for n in earlier:
            report.failures[n] = f"{reasons.get(n.lower()) or 'no usable answer'} (cached from an earlier run)"
    if mapping:
        report.attributes_added = add_attributes(
            cat, mapping, source=f"llm:{llm_model}", style=ps.style, prompt_version=ps.version
        )
    if fatal is not None:
        raise LLMError(
            f"{server} refused the run: {fatal.reason} "
            f"({len(report.done)} classes stored; re-run to continue). "
            + ("Check --api-key / OPENAI_API_KEY." if "401" in (fatal.reason or "") or "403" in (fatal.reason or "") else
               "Check --llm-model and --base-url." if "404" in (fatal.reason or "") else "Is the server running?")
        )
    return report


_CALL_COLUMNS = [
    ("id", "string"), ("batch_id", "string"), ("created_at", "timestamp"), ("model", "string"), ("base_url", "string"),
    ("prompt_version", "string"), ("style", "string"), ("class_name", "string"), ("sample_index", "int32"),
    ("attempt", "int32"), ("response_format", "string"), ("request", "string"), ("response", "string"),
    ("status", "string"), ("error", "string"), ("prompt_tokens", "int32"), ("completion_tokens", "int32"),
    ("latency_ms", "float64"), ("retries", "int32"),
]
_CACHE_COLUMNS = [
    ("model", "string"), ("base_url", "string"), ("prompt_version", "string"), ("style", "string"),
    ("norm_name", "string"), ("sample_index", "int32"), ("class_name", "string"), ("status", "string"),
    ("items", "string"), ("call_id", "string"), ("created_at", "timestamp"),
]


def _arrow(columns: list[tuple[str, str]], rows: list[tuple]):
    import pyarrow as pa

    types = {"string": pa.string(), "int32": pa.int32(), "float64": pa.float64(), "timestamp": pa.timestamp("us")}
    return pa.table({name: pa.array([r[i] for r in rows], type=types[t]) for i, (name, t) in enumerate(columns)})


def _write_jobs(cat: Catalog, key: list[str], run: _Run, results: list[JobResult]) -> None:
    """One transaction for a batch of finished jobs (DuckDB row-by-row inserts are slow)."""
    if not results:
        return
    model, server, version, style = key
    calls = [
        (c.id, run.batch_id, c.created_at, model, server, version, style, c.class_name, c.sample_index, c.attempt,
         c.response_format, c.request, c.response, c.status, c.error, c.prompt_tokens, c.completion_tokens,
         c.latency_ms, c.retries)
        for res in results for c in res.calls
    ]
    cache = [
        (model, server, version, style, norm_class_name(res.class_name), res.sample_index, res.class_name, res.status,
         json.dumps(res.items, ensure_ascii=False), res.decided_by, now_utc())
        for res in results if res.status in ("ok", "short", "failed")
    ]
    with cat.transaction():
        if calls:
            cat.con.register("_new_llm_calls", _arrow(_CALL_COLUMNS, calls))
            cat.con.execute("INSERT INTO llm_calls SELECT * FROM _new_llm_calls")
            cat.con.unregister("_new_llm_calls")
        if cache:
            cat.con.register("_new_llm_cache", _arrow(_CACHE_COLUMNS, cache))
            cat.con.execute("INSERT OR REPLACE INTO llm_cache SELECT * FROM _new_llm_cache")
            cat.con.unregister("_new_llm_cache")


# ---- export -----------------------------------------------------------------------------
@dataclass
class ExportReport:
    path: str
    format: str
    style: str
    classes: int
    prompts: int

    def lines(self) -> list[str]:
        return [f"{self.path}: {self.classes} classes, {self.prompts} {'prompts' if self.format == 'clip-benchmark' else 'texts'} ({self.format}, {self.style})"]


def export_attributes(
    cat: Catalog, fmt: str, out: str | os.PathLike, dataset: str = "custom", *, style: str | None = None
) -> ExportReport:
    """Write the stored attributes as a file other tools read.

    ``clip-benchmark``: ``{dataset: {class: [prompt, ...]}}``, the class-specific template
    file of CLIP_benchmark's ``--custom_template_file`` (prompts are the exact encoded
    strings; ``dataset`` must be the name CLIP_benchmark uses, e.g. ``cifar10``).
    ``dclip``: ``{class: [text, ...]}`` (descriptors, or CuPL sentences with
    ``style="sentences"``), which ``--from-json`` reads back unchanged.
    """
    if fmt not in EXPORT_FORMATS:
        raise InputError(f"Unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}.")
    styles = [r[0] for r in cat.query("SELECT DISTINCT style FROM attributes ORDER BY style").fetchall()]
    if style is None:
        if len(styles) > 1:
            raise InputError(f"The store holds attributes of several styles ({', '.join(styles)}); pick one with --style.")
        style = styles[0] if styles else "descriptors"
    rows = cat.query(
        "SELECT c.name, a.text, a.prompt FROM attributes a JOIN classes c USING (class_id) WHERE a.style = ? "
        "ORDER BY c.class_id, a.attr_id", [style]
    ).fetchall()
    if not rows:
        raise InputError(f"No {style} attributes in {cat.root}; build or import some first.")
    per_class: dict[str, list[str]] = {}
    for name, text, prompt in rows:
        lst = per_class.setdefault(name, [])
        if fmt == "clip-benchmark":
            lst.append(prompt)
        elif text:
            lst.append(text)
    doc: Any = {dataset: per_class} if fmt == "clip-benchmark" else per_class
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, out)
    return ExportReport(str(out), fmt, style, len(per_class), sum(len(v) for v in per_class.values()))
