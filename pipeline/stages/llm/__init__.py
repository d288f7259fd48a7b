"""Attributes written by an LLM: class lists (:mod:`.classes`), versioned prompt sets
(:mod:`.prompt_sets`), answer parsing (:mod:`.answers`), one request and its record
(:mod:`.calls`), and the cached, logged run over every class (:mod:`.generate`)."""
from .answers import parse_answer
from .calls import LLMError, make_client, new_ulid
from .classes import ClassListReport, read_class_list
from .generate import GenerateReport, generate_attributes
from .prompt_sets import PromptSet, get_prompt_set, list_prompt_sets

__all__ = [
    "ClassListReport",
    "GenerateReport",
    "LLMError",
    "PromptSet",
    "generate_attributes",
    "get_prompt_set",
    "list_prompt_sets",
    "make_client",
    "new_ulid",
    "parse_answer",
    "read_class_list",
]
