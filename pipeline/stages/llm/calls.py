"""One LLM request and its record: the OpenAI-compatible client, response-format fallback,
re-asks after unusable answers, and redaction of secrets from everything recorded.

The worker threads of :mod:`pipeline.stages.llm.generate` run :meth:`LLMRun.job`; they only
talk HTTP, every database write happens in the calling thread.
"""
from __future__ import annotations

import base64
import inspect
import json
import logging
import os
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import parse_qsl, quote, quote_plus, unquote, urlsplit, urlunsplit

from stores.catalog import now_utc

from ...errors import InputError
from ...inputs import MAX_ANSWER_BYTES, MAX_ITEM_CHARS, MAX_ITEMS_PER_CLASS  # noqa: F401  (re-exported)
from .answers import parse_answer
from .prompt_sets import PromptSet

OPENAI_DEFAULT_BASE_URL = "https://api.openai.com/v1"
NO_KEY = "sk-no-key-required"  # local servers ignore the key, the client insists on one
FORMATS = ("json_schema", "json_object", "none")


class LLMError(InputError):
    """The server refused the whole run (bad key, unknown model, unreachable); the message says why."""


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


# ---- secrets ----------------------------------------------------------------------------
REDACTED = "[redacted]"
RECORDED_BYTES = 4096  # what is kept of an over-long response or error body
MIN_SECRET_LEN = 8  # shorter strings are not searched for in free text (they would hit ordinary words)
_SECRET_WORDS = {"key", "apikey", "auth", "authorization", "token", "secret", "password", "passwd", "pwd", "credential",
                 "credentials", "signature", "sig", "session", "cookie", "bearer", "jwt"}
_HEADER_OPTIONS = ("extra_headers", "headers", "default_headers")
# request parts whose every value is recorded as [redacted] and searched for (issue 21: a query
# parameter named "code", a body field of any name can be a credential)
_SECRET_CONTAINERS = _HEADER_OPTIONS + ("extra_query", "default_query", "query", "extra_body", "body")
# a base-URL path segment recorded as is: a word or a version ("v1", "openai", "chat-completions")
_PLAIN_SEGMENT = re.compile(r"(?:[A-Za-z]+(?:[-_.][A-Za-z]+)*|v\d+(?:\.\d+)?(?:alpha|beta)?\d*)")


def redact_url(url: str) -> str:
    """The server as recorded: scheme, host, port and the path's plain words (``v1``, ``openai``);
    never userinfo, query or fragment, and a path segment that is not a plain word (it may be a
    key: ``/v1/sk-.../chat``) becomes ``[redacted]``."""
    try:
        parts = urlsplit(url)
        netloc = parts.hostname or ""
        if parts.port:
            netloc += f":{parts.port}"
    except ValueError:  # a port that is no number: record nothing of it
        return "(invalid URL)"
    segments = [seg if not seg or (_PLAIN_SEGMENT.fullmatch(seg) and len(seg) <= 24) else REDACTED
                for seg in parts.path.rstrip("/").split("/")]
    return urlunsplit((parts.scheme, netloc, "/".join(segments), "", ""))


def is_secret_name(name: str) -> bool:
    """Does a header, query parameter or option field name say it holds a credential? Its
    words (split at ``-``, ``_``, ``.`` and camelCase) include key, token, secret, auth, ...
    ("api-key", "X-Goog-Api-Key", "access_token", "apiKey"; not "max_completion_tokens")."""
    words = re.split(r"[^a-z0-9]+", re.sub(r"([a-z0-9])([A-Z])", r"\1_\2", str(name)).lower())
    return any(w in _SECRET_WORDS for w in words)


def _with_parts(value: str) -> list[str]:
    """A credential and the pieces a server may echo alone ("Bearer sk-..." -> also "sk-...")."""
    value = str(value)
    out = [value]
    words = value.split()
    if len(words) > 1:
        out += words[1:]
    return out


def secrets_in_url(url: str | None) -> list[str]:
    """Credentials a base URL can carry: userinfo (user:password@, also as the Basic-auth token
    it becomes) and credential-named query values."""
    if not url:
        return []
    try:
        parts = urlsplit(str(url))
        found = [unquote(p) for p in (parts.username, parts.password) if p]
    except ValueError:
        return []
    if parts.password:  # httpx sends userinfo as Basic auth: base64("user:password"), which servers echo
        pair = f"{unquote(parts.username or '')}:{unquote(parts.password)}".encode()
        found.append(base64.b64encode(pair).decode("ascii"))
    # every query and fragment value (a parameter of any name may carry a credential: ?code=...)
    found += [v for _, v in parse_qsl(parts.query, keep_blank_values=False)]
    found += [v for _, v in parse_qsl(parts.fragment, keep_blank_values=False)]
    found += [unquote(seg) for seg in parts.path.split("/")
              if seg and not (_PLAIN_SEGMENT.fullmatch(seg) and len(seg) <= 24)]  # a key in the path
    return found


def secrets_in_options(options: Any, under_headers: bool = False) -> list[str]:
    """Credentials in ``--llm-option`` values: every string value under a header, query or body
    option (``extra_headers``, ``extra_query``, ``extra_body``, ...), and the value of any field
    whose name says credential, at any depth."""
    found: list[str] = []
    if isinstance(options, dict):
        for k, v in options.items():
            headers = under_headers or str(k).lower() in _SECRET_CONTAINERS
            if isinstance(v, str) and (headers or is_secret_name(k)):
                found += _with_parts(v)
            elif isinstance(v, (dict, list)):
                if is_secret_name(k) and not isinstance(v, dict):
                    found += [str(x) for x in v if isinstance(x, (str, int))]
                found += secrets_in_options(v, headers)
    elif isinstance(options, list):
        for v in options:
            found += secrets_in_options(v, under_headers)
    return found


def secret_variants(secret: str) -> list[str]:
    """The forms a secret takes in what is recorded: as is, JSON-escaped, URL-encoded."""
    forms = {secret, json.dumps(secret, ensure_ascii=False)[1:-1], json.dumps(secret)[1:-1], quote(secret, safe=""),
             quote_plus(secret, safe="")}
    return [f for f in forms if f]


def scrub(obj: Any, under_headers: bool = False) -> Any:
    """A copy of request options safe to record: header, query and body values and
    credential-named fields replaced by ``[redacted]`` (the names stay, so the record shows what was sent)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            headers = under_headers or str(k).lower() in _SECRET_CONTAINERS
            if (headers and not isinstance(v, (dict, list))) or (is_secret_name(k) and not isinstance(v, dict)):
                out[k] = REDACTED
            else:
                out[k] = scrub(v, headers)
        return out
    if isinstance(obj, list):
        return [scrub(v, under_headers) for v in obj]
    return obj


def secret_pattern(secrets) -> re.Pattern | None:
    """One regex that finds each secret in any form a server or a library may write it: every
    character as itself, JSON-escaped (``\\/``, ``\\"``, ``\\\\``, ``\\uXXXX`` in either case),
    URL-encoded (``%XX`` in either case, ``+`` for a space) -- mixed freely within one secret."""
    alternatives = []
    for secret in sorted({str(s) for s in secrets if s}, key=len, reverse=True):
        parts = []
        for ch in secret:
            code = ord(ch)
            forms = [re.escape(ch)]
            if code < 0x10000:
                forms.append(r"\\u" + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in f"{code:04x}"))
            if ch in '/"\\':
                forms.append(re.escape("\\" + ch))
            for byte in ch.encode("utf-8"):
                forms.append("%" + "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in f"{byte:02x}"))
            if ch == " ":
                forms.append(r"\+")
            parts.append("(?:" + "|".join(forms) + ")")
        alternatives.append("".join(parts))
    return re.compile("|".join(alternatives)) if alternatives else None


class RedactingFilter(logging.Filter):
    """Rewrites log records so no secret reaches a log line (the openai client and httpx log
    requests at DEBUG/INFO, URLs with their query strings included)."""

    def __init__(self, redact):
        super().__init__()
        self.redact_text = redact

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a record whose arguments do not format: leave it to the handler
            return True
        clean = self.redact_text(message)
        if clean != message:
            record.msg, record.args = clean, None
        if record.exc_info and record.exc_info[1] is not None:  # tracebacks print the message too
            exc_text = logging.Formatter().formatException(record.exc_info)
            record.exc_text, record.exc_info = self.redact_text(exc_text), None
        return True


@contextmanager
def redacting_logs(redact, logger_names=("", "openai", "openai._base_client", "httpx", "httpcore")):
    """While a run talks to the server, every handler that could print or store its log
    records redacts them (root's handlers, the client libraries' own, Python's last resort)."""
    filt = RedactingFilter(redact)
    handlers = {id(h): h for name in logger_names for h in logging.getLogger(name).handlers}
    if logging.lastResort is not None:
        handlers[id(logging.lastResort)] = logging.lastResort
    for h in handlers.values():
        h.addFilter(filt)
    try:
        yield filt
    finally:
        for h in handlers.values():
            h.removeFilter(filt)


# ---- the run ----------------------------------------------------------------------------


def _retryable(exc: Exception) -> bool:
    # heavy: imported on use
    import openai

    if isinstance(exc, openai.APIConnectionError):  # includes APITimeoutError
        return True
    status = getattr(exc, "status_code", None)
    return status is not None and (status in (408, 409, 429) or status >= 500)


class LLMRun:
    """One generate_attributes call: shared, thread-safe state of the workers."""

    def __init__(self, client, llm_model: str, ps: PromptSet, *, max_reasks: int, max_retries: int,
                 options: dict | None, secrets: Sequence[str], batch_id: str, max_answer_bytes: int = MAX_ANSWER_BYTES,
                 max_item_chars: int = MAX_ITEM_CHARS):
        self.client, self.llm_model, self.ps = client, llm_model, ps
        self.max_answer_bytes, self.max_item_chars = max_answer_bytes, max_item_chars
        self.max_reasks, self.max_retries = max_reasks, max_retries
        self.options = dict(options or {})
        self.recorded_options = scrub(self.options)  # what llm_calls.request shows of them
        # a secret the user gave is searched for whatever its length (issue 21: a 6-character key)
        forms = {f for s in secrets if s for f in secret_variants(str(s))}
        self.secrets = sorted(forms, key=len, reverse=True)
        self.pattern = secret_pattern(secrets)
        self.batch_id = batch_id
        self.mode = FORMATS[0]
        self.lock = threading.Lock()
        self.abort = threading.Event()

    def redact(self, text: str | None) -> str | None:
        """``text`` with every known secret (in each of its recorded forms) replaced."""
        if text is None:
            return None
        for s in self.secrets:
            text = text.replace(s, REDACTED)
        return self.pattern.sub(REDACTED, text) if self.pattern is not None else text

    def record_body(self, body: dict) -> str:
        """The request as stored in llm_calls: header and credential fields scrubbed, then
        every known secret redacted from the JSON text."""
        shown = dict(body)
        for k in self.options:
            if k in shown:
                shown[k] = self.recorded_options[k]
        return self.redact(json.dumps(shown, ensure_ascii=False))

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
        # heavy: imported on use
        import openai

        records: list[CallRecord] = []
        with self.lock:
            start = FORMATS.index(self.mode)
        for mode in FORMATS[start:]:
            body = self.body(messages, mode, sample_index)
            rec = CallRecord(new_ulid(), now_utc(), class_name, sample_index, attempt, mode, self.record_body(body))
            records.append(rec)
            t0 = time.perf_counter()
            try:
                raw = self.client.chat.completions.with_raw_response.create(**body)
            except openai.APIStatusError as exc:
                rec.latency_ms = (time.perf_counter() - t0) * 1000
                rec.response = self.redact(_cut(_response_text(exc)))
                rec.error = self.redact(_cut(f"HTTP {exc.status_code}: {_error_message(exc)}", 500))
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
            size = len(raw.content)
            if size > self.max_answer_bytes:  # before parsing or storing any of it
                rec.response = self.redact(_cut(raw.text))
                rec.status = "invalid"
                rec.error = f"the answer was {size} bytes, over --max-answer-bytes {self.max_answer_bytes}"
                return records, "", False
            rec.response = self.redact(raw.text)
            if mode != FORMATS[start]:
                with self.lock:  # remember for the rest of the run
                    if FORMATS.index(mode) > FORMATS.index(self.mode):
                        self.mode = mode
            try:
                completion = raw.parse()
                choice = completion.choices[0]
                content = self.redact(choice.message.content)  # a server that echoes the key
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
            items, reason = parse_answer(content, ps, class_name, max_chars=self.max_item_chars)
            echoed = [t for t in items if REDACTED in t]
            if echoed:  # an item that quoted a credential is no attribute
                items = [t for t in items if REDACTED not in t]
                if len(items) < ps.min_items:
                    reason = f"{len(echoed)} item(s) quoted a credential and were dropped; {len(items)} usable"
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


def _cut(text: str | None, limit: int = RECORDED_BYTES) -> str | None:
    """At most ``limit`` characters of a body, saying how much was left out."""
    if text is None or len(text) <= limit:
        return text
    return text[:limit] + f" ... [{len(text) - limit} more characters not stored]"


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


def check_base_url(base_url: str | None) -> str | None:
    """The host of an http(s) base URL; LLMError (never quoting the URL: it may hold a
    credential) for anything else. None means the default (OpenAI)."""
    if base_url is None:
        return None
    try:
        parts = urlsplit(base_url)
        host = parts.hostname
        parts.port  # noqa: B018  (raises ValueError for a port that is no number)
    except ValueError:
        host = None
    if not host or parts.scheme not in ("http", "https"):
        raise LLMError("--base-url / OPENAI_BASE_URL is not an http(s) URL with a host (e.g. http://localhost:8000/v1).")
    return host


def check_request_options(client, options: dict) -> None:
    """``--llm-option`` names must be fields the client's chat-completions call takes (an unknown
    one is a TypeError deep in the client): LLMError in one line, before any request."""
    try:
        params = inspect.signature(client.chat.completions.create).parameters
    except (AttributeError, TypeError, ValueError):  # a stand-in client: nothing to check against
        return
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    unknown = [k for k in options if k not in params]
    if unknown:
        raise LLMError(f"--llm-option {unknown[0]}: not a field of the chat-completions request; headers go in "
                       "extra_headers, query parameters in extra_query, other body fields in extra_body "
                       "(e.g. --llm-option extra_headers '{\"X-Org\": \"...\"}').")


def make_client(base_url: str | None = None, api_key: str | None = None, *, timeout: float = 120.0, max_retries: int = 3):
    """An ``openai.OpenAI`` for any compatible server; local servers need no key."""
    # heavy: imported on use
    import openai

    base_url = base_url or os.environ.get("OPENAI_BASE_URL") or OPENAI_DEFAULT_BASE_URL
    api_key = api_key or os.environ.get("OPENAI_API_KEY")
    host = check_base_url(base_url)
    if not api_key:
        if host == urlsplit(OPENAI_DEFAULT_BASE_URL).hostname:
            raise LLMError("No API key for api.openai.com: set OPENAI_API_KEY (or --api-key), or point --base-url at a local server.")
        api_key = NO_KEY
    try:
        return openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout, max_retries=max_retries)
    except Exception as exc:  # the message could quote the URL, credentials and all: name the type only
        raise LLMError(f"--base-url / OPENAI_BASE_URL is not usable ({type(exc).__name__}).") from None
