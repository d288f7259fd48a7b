"""LLM calls and their cache."""
from __future__ import annotations

import json
from typing import TYPE_CHECKING, Sequence

import pyarrow as pa

from .common import insert_arrow

if TYPE_CHECKING:
    from ..catalog import Catalog


LLM_CALL_SCHEMA = pa.schema([
    ("id", pa.string()), ("batch_id", pa.string()), ("created_at", pa.timestamp("us")), ("model", pa.string()),
    ("base_url", pa.string()), ("prompt_version", pa.string()), ("style", pa.string()), ("class_name", pa.string()),
    ("sample_index", pa.int32()), ("attempt", pa.int32()), ("response_format", pa.string()), ("request", pa.string()),
    ("response", pa.string()), ("status", pa.string()), ("error", pa.string()), ("prompt_tokens", pa.int32()),
    ("completion_tokens", pa.int32()), ("latency_ms", pa.float64()), ("retries", pa.int32()),
])


LLM_CACHE_SCHEMA = pa.schema([
    ("model", pa.string()), ("base_url", pa.string()), ("prompt_version", pa.string()), ("style", pa.string()),
    ("norm_name", pa.string()), ("sample_index", pa.int32()), ("class_name", pa.string()), ("status", pa.string()),
    ("items", pa.string()), ("call_id", pa.string()), ("created_at", pa.timestamp("us")),
])


_LLM_KEY = "model = ? AND base_url = ? AND prompt_version = ? AND style = ?"


def llm_cache_status(cat: Catalog, key: Sequence[str]) -> dict[tuple[str, int], str]:
    """(norm_name, sample_index) -> ok | short | failed, for one (model, server, prompt version, style)."""
    rows = cat.con.execute(f"SELECT norm_name, sample_index, status FROM llm_cache WHERE {_LLM_KEY}", list(key)).fetchall()
    return {(r[0], r[1]): r[2] for r in rows}


def llm_cache_items(cat: Catalog, key: Sequence[str]) -> list[tuple[str, int, str, list[str]]]:
    """(norm_name, sample_index, status, items) of one key, by class and sample."""
    rows = cat.con.execute(
        f"SELECT norm_name, sample_index, status, items FROM llm_cache WHERE {_LLM_KEY} ORDER BY norm_name, sample_index",
        list(key)).fetchall()
    return [(n, i, s, json.loads(items)) for n, i, s, items in rows]


def llm_failure_reasons(cat: Catalog, key: Sequence[str]) -> dict[str, str]:
    """norm_name -> the error of the call that decided a cached failure."""
    return dict(cat.con.execute(
        "SELECT k.norm_name, c.error FROM llm_cache k JOIN llm_calls c ON c.id = k.call_id WHERE k.status = 'failed' "
        "AND k.model = ? AND k.base_url = ? AND k.prompt_version = ? AND k.style = ?", list(key)).fetchall())


def write_llm_jobs(cat: Catalog, calls: list[dict], cache: list[dict]) -> None:
    """One transaction for a batch of finished LLM jobs: their calls and cache rows."""
    with cat.transaction():
        if calls:
            insert_arrow(cat, "llm_calls", pa.Table.from_pylist(calls, schema=LLM_CALL_SCHEMA))
        if cache:
            insert_arrow(cat, "llm_cache", pa.Table.from_pylist(cache, schema=LLM_CACHE_SCHEMA), replace=True)
