"""WaffleCLIP's random descriptors and class-name-free prompts: the controls for descriptor meaning.

Text only: what is encoded (``classify --method waffle`` / ``dclip-nameless`` store these
texts in ``class_prompts``, template sets ``waffle:<seed>:<digest>`` and ``nameless``, and
encode them on first use). The score is :func:`queries.baselines.dclip_scores` (mean cosine per
class), which is WaffleCLIP's ``aggregate="mean"`` scoring.

WaffleCLIP (Roth et al., ICCV 2023; ExplainableML/WaffleCLIP, ``waffle_tools.py``, mode
``waffle``) replaces each class's LLM descriptors by ``count`` (15) pairs of random
descriptors, the same for every class:

* a random-word descriptor: ``n_words`` words drawn from a word list, each cut to
  ``word_length`` characters;
* a random-character descriptor: one random character per ``a`` of a pattern of
  ``n_groups`` groups of ``n_chars / n_groups`` characters, groups joined by ``", "``;

where, from the class names (as the code computes them): ``n_words`` = rounded mean number
of words per name (at least 1), ``word_length`` = rounded mean word length,
``n_groups`` = rounded mean number of spaces + 1, ``n_chars`` = ceil of the mean longest
word, then ``n_chars += n_groups - n_chars % n_groups`` (the code's rounding up, which adds a
whole group when ``n_chars`` is already a multiple). Each descriptor becomes a prompt with
DCLIP's sentence rule (``"{name}, which has {random}"``; ``"which is"`` when it starts with
"a"). The class score is DCLIP's: the mean cosine over the class's prompts.

Differences from the code: draws come from ``numpy.random.default_rng(seed)`` (the code uses
numpy's global legacy RNG, draws descriptors for every class and then copies one randomly
chosen class's set to all classes; here the one shared set is drawn directly); the word list
is passed in (the code ships ``word_list.pkl``; the project ships its own plain-English list,
:func:`load_random_words`); the character set is passed in too (default lowercase ASCII here;
``classify`` passes :func:`characters_from_descriptors` of the store's descriptors, as the
code's "lazy solution" derives it from the descriptor file, unless ``--waffle-characters a-z``).
``classify``'s default prompt is the paper's :data:`WAFFLE_TEMPLATE` (``--waffle-template
dclip``: the store's DCLIP form).

Class-name-free prompts (Ma et al., "Does VLM Classification Benefit from LLM Description
Semantics?", arXiv 2412.11917): the class name appears in one prompt per class only
(``"a photo of a {name}."``); every descriptor prompt is class-name free, so a gain over the
name prompt alone must come from what the descriptors say, not from ensembling noisy copies
of the name. :func:`classname_free_prompts` builds them (and, with ``name_template=None``,
descriptor-only prompts that carry no name at all).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .attributes import dclip_sentence

__all__ = [
    "WAFFLE_TEMPLATE",
    "WaffleTexts",
    "characters_from_descriptors",
    "classname_free_prompts",
    "load_random_words",
    "waffle_prompts",
]

WORD_LISTS = ("random-words-v1",)
PROMPT_DIR = Path(__file__).resolve().parent.parent / "prompts"

#: The paper's prompt: ``label_before_text="A photo of a "``, ``descriptor_separator=", "``,
#: ``label_after_text="."``. The project's DCLIP prompts are ``"{name}, {sentence}"``
#: (plus ``"."`` for ImageNet); pass that template to compare like with like.
WAFFLE_TEMPLATE = "A photo of a {name}, {sentence}."
#: The store's DCLIP form (``build-attributes``' rule), for a like-with-like comparison with dclip.
DCLIP_TEMPLATE = "{name}, {sentence}"


@dataclass
class WaffleTexts:
    """Output of :func:`waffle_prompts`.

    Attributes
    ----------
    descriptors : list[str]
        The shared random descriptors, ``[word_0, chars_0, word_1, chars_1, ...]``.
    prompts : list[str]
        Flat prompts, class-major: class ``c``'s prompts are
        ``prompts[c * len(descriptors):(c + 1) * len(descriptors)]``.
    prompt_class : np.ndarray
        (len(prompts),) int64 class index of each prompt.
    params : dict
        The derived lengths (n_words, word_length, n_groups, n_chars) and the controls.
    """

    descriptors: list
    prompts: list
    prompt_class: np.ndarray
    params: dict


def characters_from_descriptors(descriptors) -> str:
    """The code's character set: every character of the descriptors' words, ``,`` and
    ``.`` removed, unique and sorted.

    >>> characters_from_descriptors(["a red crest.", "orange legs, long"])
    'acdeglnorst'
    """
    chars = set()
    for d in descriptors:
        for w in d.split(" "):
            chars.update(w.replace(",", "").replace(".", ""))
    return "".join(sorted(chars))


def _name_stats(class_names) -> dict:
    names = [n.replace("_", " ") for n in class_names]
    n_words = max(int(np.round(np.mean([len(n.split(" ")) for n in names]))), 1)
    word_length = int(np.round(np.mean([np.mean([len(w) for w in n.split(" ")]) for n in names])))
    # spaces and longest word are counted on the names as given (the code uses the raw keys)
    n_groups = int(np.round(np.mean([n.count(" ") for n in class_names]))) + 1
    n_chars = int(math.ceil(np.mean([max(len(w) for w in n.split(" ")) for n in class_names])))
    n_chars += n_groups - n_chars % n_groups
    return {"n_words": n_words, "word_length": word_length, "n_groups": n_groups, "n_chars": n_chars}


def waffle_prompts(
    class_names,
    words,
    characters: str | None = None,
    *,
    count: int = 15,
    seed: int = 0,
    template: str = WAFFLE_TEMPLATE,
) -> WaffleTexts:
    """WaffleCLIP prompts: ``count`` random-word and ``count`` random-character descriptors,
    shared by every class, each rendered as ``template.format(name=..., sentence=...)`` with
    ``sentence = dclip_sentence(descriptor)``.

    Parameters
    ----------
    class_names : sequence of str
    words : sequence of str
        The word list (cut to the mean class-name word length, as the code does).
    characters : str, optional
        Character set of the random strings; default the lowercase ASCII letters (use
        :func:`characters_from_descriptors` on the real descriptors to follow the code).
    count : int
        Random descriptor pairs (``waffle_count``, 15 -> 30 prompts per class).
    seed : int
        Same seed, same descriptors (the code averages results over several seeds).
    template : str
        With ``{name}`` and ``{sentence}``; default the paper's :data:`WAFFLE_TEMPLATE`.

    Examples
    --------
    >>> w = waffle_prompts(["vorlik", "tessan"], ["apple", "river", "stone"], count=2, seed=0,
    ...                    template="{name}, {sentence}")
    >>> len(w.descriptors), len(w.prompts), w.prompt_class.tolist()
    (4, 8, [0, 0, 0, 0, 1, 1, 1, 1])
    >>> [p.split(", ", 1)[1] for p in w.prompts[:4]] == [p.split(", ", 1)[1] for p in w.prompts[4:]]
    True
    """
    class_names = list(class_names)
    if not class_names:
        raise ValueError("no class names")
    stats = _name_stats(class_names)
    pool = sorted({w[: stats["word_length"]] for w in words if w})
    if not pool:
        raise ValueError("empty word list")
    chars = sorted(set(characters if characters is not None else "abcdefghijklmnopqrstuvwxyz") - {" "})
    if not chars:
        raise ValueError("empty character set")
    rng = np.random.default_rng(seed)
    group = stats["n_chars"] // stats["n_groups"]
    descriptors = []
    for _ in range(count):
        descriptors.append(" ".join(pool[i] for i in rng.integers(0, len(pool), stats["n_words"])))
        groups = ["".join(chars[i] for i in rng.integers(0, len(chars), group)) for _ in range(stats["n_groups"])]
        descriptors.append(", ".join(groups))
    prompts, cls = [], []
    for c, name in enumerate(class_names):
        label = name.replace("_", " ")
        for d in descriptors:
            prompts.append(template.format(name=label, sentence=dclip_sentence(d)))
            cls.append(c)
    params = {**stats, "count": count, "seed": seed, "template": template, "n_word_pool": len(pool), "characters": "".join(chars)}
    return WaffleTexts(descriptors=descriptors, prompts=prompts, prompt_class=np.asarray(cls, np.int64), params=params)


def classname_free_prompts(
    class_names,
    descriptors,
    *,
    name_template: str | None = "a photo of a {name}.",
    descriptor_template: str = "{descriptor}",
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Prompts where the class name appears once per class (arXiv 2412.11917), or never.

    Class ``c`` gets ``name_template.format(name=c)`` (skipped when ``name_template`` is
    None) and, for each of its descriptors ``d``,
    ``descriptor_template.format(descriptor=d, sentence=dclip_sentence(d))``: by default the
    descriptor as written ("striped wings"); ``"{sentence}"`` gives DCLIP's clause without
    the name ("which has striped wings"). Empty descriptors are dropped.

    Returns (prompts, prompt_class (P,) int64, is_name_prompt (P,) bool). Score them with
    :func:`queries.baselines.dclip_scores` (mean cosine per class).

    >>> p, c, isname = classname_free_prompts(["vorlik"], {"vorlik": ["a red crest", "striped wings"]})
    >>> p, c.tolist(), isname.tolist()
    (['a photo of a vorlik.', 'a red crest', 'striped wings'], [0, 0, 0], [True, False, False])
    """
    prompts, cls, isname = [], [], []
    for c, name in enumerate(class_names):
        if name_template is not None:
            prompts.append(name_template.format(name=name.replace("_", " ")))
            cls.append(c)
            isname.append(True)
        for d in descriptors[name]:
            if not d.strip():
                continue
            prompts.append(descriptor_template.format(descriptor=d.strip(), sentence=dclip_sentence(d)))
            cls.append(c)
            isname.append(False)
    counts = np.bincount(np.asarray(cls, np.int64), minlength=len(class_names))
    if (counts == 0).any():
        raise ValueError(f"classes without any prompt: {[class_names[i] for i in np.flatnonzero(counts == 0)[:5]]}")
    return prompts, np.asarray(cls, np.int64), np.asarray(isname, bool)


def load_random_words(name: str = "random-words-v1") -> list[str]:
    """A word list for :func:`waffle_prompts`: ``"random-words-v1"``
    (``pipeline/prompts/random-words-v1.json``), 312 plain English nouns, adjectives and verbs
    written for this project (Apache-2.0, like it); WaffleCLIP's own list is not redistributable.

    >>> words = load_random_words()
    >>> len(words) > 300 and all(w.isalpha() and w.islower() for w in words)
    True
    """
    if name not in WORD_LISTS:
        raise ValueError(f"unknown word list {name!r}; use one of {WORD_LISTS}")
    data = json.loads((PROMPT_DIR / f"{name}.json").read_text(encoding="utf-8"))
    return list(data["words"])
