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

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Sequence

from stores import tables
from stores.catalog import Catalog, now_utc

from ...errors import InputError
from ...names import clean_class_name, norm_class_name
from ..attributes import add_attributes
from .calls import (
    MAX_ANSWER_BYTES,
    MAX_ITEM_CHARS,
    MAX_ITEMS_PER_CLASS,
    NO_KEY,
    JobResult,
    check_request_options,
    LLMError,
    LLMRun,
    make_client,
    new_ulid,
    redact_url,
    redacting_logs,
    secrets_in_options,
    secrets_in_url,
)
from .prompt_sets import get_prompt_set


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
    max_answer_bytes: int = MAX_ANSWER_BYTES,
    max_item_chars: int = MAX_ITEM_CHARS,
    max_items_per_class: int = MAX_ITEMS_PER_CLASS,
) -> GenerateReport:
    """Ask the LLM for what the cache lacks, log every call, store the attributes.

    ``class_names`` are cleaned and de-duplicated as :func:`read_class_list` does. The
    attributes are added (not encoded): run ``encode_attributes(cat, model)`` afterwards.

    Secrets never reach the store, the report or a log line: the key (``api_key``, the
    client's, ``OPENAI_API_KEY``), credentials in the base URL (userinfo, credential-named
    query values) and in ``options`` (every ``extra_headers`` value, credential-named fields)
    are redacted from every recorded request, response, error, answer and cache row; an
    answer item that quotes one is dropped.
    """
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
        clean = clean_class_name(n, where="a class name")
        if not clean:
            raise InputError("An empty class name; every class needs a name.")
        if clean.lower() not in seen:
            seen.add(clean.lower())
            names.append(clean)

    if client is None:
        client = make_client(base_url, api_key, timeout=timeout, max_retries=max_retries)
    else:
        max_retries = getattr(client, "max_retries", max_retries)
    check_request_options(client, options or {})
    server = redact_url(str(client.base_url))
    secrets = [api_key or "", getattr(client, "api_key", "") or "", os.environ.get("OPENAI_API_KEY", "")]
    for url in (base_url, os.environ.get("OPENAI_BASE_URL"), str(client.base_url)):
        secrets += secrets_in_url(url)
    secrets += secrets_in_options(options or {})
    run = LLMRun(client, llm_model, ps, max_reasks=max_reasks, max_retries=max_retries, options=options,
                 secrets=[s for s in secrets if s != NO_KEY], batch_id=new_ulid(), max_answer_bytes=max_answer_bytes,
                 max_item_chars=max_item_chars)
    server = run.redact(server)  # a key the user also put in the URL's path
    with redacting_logs(run.redact):  # the client libraries' log lines carry URLs and headers
        return _generate(cat, run, names, n_samples, server, refresh=refresh, retry_failed=retry_failed,
                         concurrency=concurrency, progress=progress, max_items_per_class=max_items_per_class)


def _generate(cat: Catalog, run: LLMRun, names: list[str], n_samples: int, server: str, *, refresh: bool,
              retry_failed: bool, concurrency: int, progress: bool, max_items_per_class: int) -> GenerateReport:
    # heavy: imported on use
    from tqdm import tqdm

    ps = run.ps
    llm_model = run.redact(run.llm_model)  # as recorded (a key pasted into the model name stays out too)
    report = GenerateReport(llm_model=llm_model, base_url=server, prompt_version=ps.version, style=ps.style,
                            classes=len(names), samples=len(names) * n_samples)
    key = [llm_model, server, ps.version, ps.style]

    cache = tables.llm_cache_status(cat, key)
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
    by_class: dict[str, list[tuple[int, str, list[str]]]] = {}
    for norm, i, status, items in tables.llm_cache_items(cat, key):
        if i < n_samples:
            by_class.setdefault(norm, []).append((i, status, items))
    mapping: dict[str, list[str]] = {}
    for name in names:
        samples = by_class.get(name.lower(), [])
        texts: list[str] = []
        for _, status, items in samples:
            texts += [t for t in items if t not in texts and len(t) <= run.max_item_chars]
        texts = texts[:max_items_per_class]  # bounded before anything is stored
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
        reasons = tables.llm_failure_reasons(cat, key)
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


def _write_jobs(cat: Catalog, key: list[str], run: LLMRun, results: list[JobResult]) -> None:
    """One transaction for a batch of finished jobs (DuckDB row-by-row inserts are slow)."""
    if not results:
        return
    model, server, version, style = key
    calls = [
        dict(id=c.id, batch_id=run.batch_id, created_at=c.created_at, model=model, base_url=server,
             prompt_version=version, style=style, class_name=c.class_name, sample_index=c.sample_index,
             attempt=c.attempt, response_format=c.response_format, request=c.request, response=c.response,
             status=c.status, error=c.error, prompt_tokens=c.prompt_tokens, completion_tokens=c.completion_tokens,
             latency_ms=c.latency_ms, retries=c.retries)
        for res in results for c in res.calls
    ]
    cache = [
        dict(model=model, base_url=server, prompt_version=version, style=style,
             norm_name=norm_class_name(res.class_name), sample_index=res.sample_index, class_name=res.class_name,
             status=res.status, items=json.dumps(res.items, ensure_ascii=False), call_id=res.decided_by,
             created_at=now_utc())
        for res in results if res.status in ("ok", "short", "failed")
    ]
    tables.write_llm_jobs(cat, calls, cache)
