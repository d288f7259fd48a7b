"""One LLM request and its record: the OpenAI-compatible client, response-format fallback,
re-asks after unusable answers, and redaction of secrets from everything recorded.

The worker threads of :mod:`pipeline.stages.llm.generate` run :meth:`LLMRun.job`; they only
talk HTTP, every database write happens in the calling thread.
"""
from __future__ import annotations

import json
import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Sequence
from urllib.parse import urlsplit, urlunsplit

from stores.catalog import now_utc

from ...errors import InputError
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


# ---- the run ----------------------------------------------------------------------------
def redact_url(url: str) -> str:
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


class LLMRun:
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
