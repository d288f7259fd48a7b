"""Versioned LLM prompt sets: ``pipeline/prompts/<version>.json`` loaded as frozen data.

The version string is the file stem (``descriptors-v1``) and is stored with every call,
cached answer and attribute, so an answer is never reused under a different prompt. Never
edit a prompt file that has been used: copy it to ``<style>-v<N+1>.json`` and change that.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import InputError
from ..attributes import STYLES

PROMPT_DIR = Path(__file__).resolve().parents[2] / "prompts"  # pipeline/prompts: data, like presets
_VERSION_RE = re.compile(r"^(?P<style>[a-z]+)-v(?P<n>\d+)$")


@dataclass(frozen=True)
class PromptSet:
    version: str  # file stem, e.g. "descriptors-v1"
    style: str  # descriptors (DCLIP) | sentences (CuPL)
    description: str
    answer_key: str  # the JSON key of the answer list
    min_items: int  # fewer usable items than this -> re-ask
    max_items: int  # more are cut to this many
    max_words: int  # longer items are dropped
    system: str
    user_template: str  # str.format fields: class_name, a_class, question, min_items, max_items
    reask_template: str  # + reason, answer_key
    few_shot: tuple = ()  # ({"class_name": ..., "answer": [...]}, ...) as user/assistant turns
    questions: tuple = ()  # sentences style: sample i asks questions[i % len]
    default_samples: int = 1
    sampling: dict = field(default_factory=dict)  # temperature, max_tokens, seed (+ sample index)

    # ---- rendering ----------------------------------------------------------------------
    def fields(self, class_name: str, sample_index: int = 0) -> dict[str, Any]:
        f = {
            "class_name": class_name,
            "a_class": with_article(class_name),
            "min_items": self.min_items,
            "max_items": self.max_items,
            "answer_key": self.answer_key,
        }
        if self.questions:
            f["question"] = self.questions[sample_index % len(self.questions)].format(**f)
        return f

    def messages(self, class_name: str, sample_index: int = 0) -> list[dict[str, str]]:
        """The chat messages for one (class, sample): system, few-shot turns, the question."""
        msgs = [{"role": "system", "content": self.system}]
        for shot in self.few_shot:
            msgs.append({"role": "user", "content": self.user_template.format(**self.fields(shot["class_name"], sample_index))})
            msgs.append({"role": "assistant", "content": json.dumps({self.answer_key: list(shot["answer"])})})
        msgs.append({"role": "user", "content": self.user_template.format(**self.fields(class_name, sample_index))})
        return msgs

    def reask(self, class_name: str, reason: str, sample_index: int = 0) -> str:
        return self.reask_template.format(reason=reason, **self.fields(class_name, sample_index))

    def json_schema(self) -> dict:
        """The ``response_format`` json_schema payload (strict: one required list of strings)."""
        return {
            "name": f"{self.answer_key}_answer",
            "strict": True,
            "schema": {
                "type": "object",
                "properties": {
                    self.answer_key: {
                        "type": "array",
                        "items": {"type": "string"},
                        "minItems": self.min_items,
                        "maxItems": self.max_items,
                    }
                },
                "required": [self.answer_key],
                "additionalProperties": False,
            },
        }


def with_article(name: str) -> str:
    """'a lemur', 'an apple' (DCLIP wrote 'a' always; CuPL's questions say 'a(n)')."""
    return f"{'an' if name[:1].lower() in 'aeiou' else 'a'} {name}"


def list_prompt_sets() -> list[str]:
    """Every version shipped, oldest first within a style."""
    return sorted((p.stem for p in PROMPT_DIR.glob("*.json")), key=_sort_key)


def _sort_key(version: str):
    m = _VERSION_RE.match(version)
    return (m["style"], int(m["n"])) if m else (version, 0)


def latest_version(style: str) -> str:
    versions = [v for v in list_prompt_sets() if v.startswith(f"{style}-v")]
    if not versions:
        raise InputError(f"No prompt set for style {style!r} in {PROMPT_DIR}; use one of {', '.join(STYLES)}.")
    return versions[-1]


def get_prompt_set(name: str) -> PromptSet:
    """A version (``descriptors-v1``), or a style name for its latest version."""
    version = latest_version(name) if name in STYLES else name
    path = PROMPT_DIR / f"{version}.json"
    if version not in list_prompt_sets() or not path.is_file():  # a name, never a path ("../x")
        raise InputError(f"Unknown prompt set {name!r}; available: {', '.join(list_prompt_sets())}.")
    data = json.loads(path.read_text(encoding="utf-8"))
    style = data.pop("style")
    if style not in STYLES:
        raise InputError(f"{path}: style {style!r} is not one of {', '.join(STYLES)}.")
    if style == "sentences" and not data.get("questions"):
        raise InputError(f"{path}: a sentences prompt set needs questions.")
    data["few_shot"] = tuple(data.get("few_shot", ()))
    data["questions"] = tuple(data.get("questions", ()))
    return PromptSet(version=version, style=style, **data)
