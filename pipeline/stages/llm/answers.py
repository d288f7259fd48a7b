"""Parsing and validating an LLM's answer into attribute texts (pydantic), tolerant of the
ways chat models wrap JSON (think blocks, code fences, prose, bullets)."""
from __future__ import annotations

import json
import re
from typing import Any

from ...inputs import JSONTooDeep, loads_json
from ...names import norm_class_name, strip_controls
from .prompt_sets import PromptSet


# ---- answers ----------------------------------------------------------------------------
_THINK_RE = re.compile(r"<think>.*?</think>", re.S | re.I)
_FENCE_RE = re.compile(r"^```[a-zA-Z]*\s*|\s*```$")
_BULLET_RE = re.compile(r"^\s*(?:[-*\u2022]+|\d+[.)])\s*")


def _answer_model(key: str):
    # heavy: imported on use
    from pydantic import create_model

    return create_model(f"{key.title()}Answer", **{key: (list[str], ...)})


def _load_json_loose(text: str) -> Any:
    """JSON from a chat answer: tolerate <think> blocks, code fences and prose around it."""
    text = _FENCE_RE.sub("", _THINK_RE.sub("", text).strip()).strip()
    try:
        return loads_json(text)
    except json.JSONDecodeError as first_error:
        for open_, close in (("{", "}"), ("[", "]")):
            i, j = text.find(open_), text.rfind(close)
            if 0 <= i < j:
                try:
                    return loads_json(text[i : j + 1])
                except json.JSONDecodeError:
                    pass
        raise first_error


def parse_answer(content: str | None, ps: PromptSet, class_name: str,
                 max_chars: int | None = None) -> tuple[list[str], str | None]:
    """(usable items, None) or (what could be salvaged, why the answer is unusable). Items longer
    than ``max_chars`` characters (or ``ps.max_words`` words) are dropped."""
    # heavy: imported on use
    from pydantic import ValidationError

    if content is None or not content.strip():
        return [], "the answer was empty"
    try:
        obj = _load_json_loose(content)
    except json.JSONDecodeError as exc:
        return [], f"the answer was not valid JSON ({exc.msg} at char {exc.pos})"
    except JSONTooDeep as exc:
        return [], f"the answer was JSON {exc}"
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
        s = _BULLET_RE.sub("", strip_controls(it)).strip()  # control characters become spaces
        if ps.style == "descriptors":
            s = s.rstrip(".").strip()
        if not s:
            continue
        key = s.lower().strip(" .")
        if key in just_name:
            dropped_name += 1
            continue
        if len(s.split()) > ps.max_words or (max_chars is not None and len(s) > max_chars):
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
            return [], f"every item was longer than {ps.max_words} words" + (
                f" or {max_chars} characters" if max_chars is not None else "")
        return [], "every item was blank"
    if len(items) < ps.min_items:
        return items, f"only {len(items)} usable item(s), at least {ps.min_items} are needed"
    return items, None
