"""WaffleCLIP prompts and class-name-free prompts (pipeline/stages/control_prompts.py): the
code's length rules re-derived by hand, and the mean-cosine scoring against a plain loop over
generated prompts."""
from __future__ import annotations

import hashlib
import math

import numpy as np
import pytest

from pipeline.stages.attributes import dclip_sentence
from pipeline.stages.control_prompts import (
    characters_from_descriptors,
    classname_free_prompts,
    load_random_words,
    waffle_prompts,
)
from queries.baselines import dclip_scores


def fake_encode(texts, dim=24):
    """A deterministic stand-in text encoder: unit vectors from a hash of the text."""
    rows = []
    for t in texts:
        seed = int(hashlib.sha256(t.encode()).hexdigest()[:8], 16)
        v = np.random.default_rng(seed).standard_normal(dim)
        rows.append(v / np.linalg.norm(v))
    return np.array(rows, np.float32)


def test_lengths_follow_the_codes_rules():
    names = ["Black footed Albatross", "Laysan Albatross", "Sooty_Albatross", "Crested Auklet"]
    # by hand: words per name 3, 2, 1 (underscore kept in raw name but wordified for counts), 2
    w = waffle_prompts(names, load_random_words(), count=4, seed=3)
    words_per = [3, 2, 2, 2]  # wordify replaces "_" by " ": "Sooty Albatross" has 2 words
    assert w.params["n_words"] == round(np.mean(words_per))
    mean_len = np.mean([np.mean([len(x) for x in n.replace("_", " ").split(" ")]) for n in names])
    assert w.params["word_length"] == round(mean_len)
    # spaces and longest word on the raw names: 2, 1, 0, 1 spaces; longest 9, 9, 15, 7
    assert w.params["n_groups"] == round(np.mean([2, 1, 0, 1])) + 1
    n_chars = math.ceil(np.mean([9, 9, 15, 7]))
    n_chars += w.params["n_groups"] - n_chars % w.params["n_groups"]
    assert w.params["n_chars"] == n_chars
    word_desc, char_desc = w.descriptors[0::2], w.descriptors[1::2]
    for d in word_desc:
        parts = d.split(" ")
        assert len(parts) == w.params["n_words"]
        assert all(len(p) <= w.params["word_length"] for p in parts)
    for d in char_desc:
        groups = d.split(", ")
        assert len(groups) == w.params["n_groups"]
        assert all(len(g) == n_chars // w.params["n_groups"] for g in groups)


def test_shared_descriptors_templates_and_seeds():
    names = ["vorlik", "tessan", "brathoum"]
    words = load_random_words()
    a = waffle_prompts(names, words, count=5, seed=1, template="{name}, {sentence}")
    b = waffle_prompts(names, words, count=5, seed=1, template="{name}, {sentence}")
    c = waffle_prompts(names, words, count=5, seed=2, template="{name}, {sentence}")
    assert a.prompts == b.prompts and a.prompts != c.prompts
    n = len(a.descriptors)
    assert n == 10 and len(a.prompts) == 30
    for k, name in enumerate(names):
        block = a.prompts[k * n:(k + 1) * n]
        assert block == [f"{name}, {dclip_sentence(d)}" for d in a.descriptors]
    paper = waffle_prompts(names, words, count=5, seed=1)
    assert paper.prompts[0] == f"A photo of a vorlik, {dclip_sentence(a.descriptors[0])}."
    chars = "xyz"
    only = waffle_prompts(names, words, chars, count=5, seed=0)
    assert set("".join(only.descriptors[1::2]).replace(", ", "")) <= set(chars)


def test_characters_from_descriptors_and_word_lists():
    assert characters_from_descriptors(["long, hooked bill.", "grey-ish"]) == "-bdeghiklnorsy"
    words = load_random_words()
    assert len(words) == len(set(words)) > 200 and all(w.isalpha() and w.islower() for w in words)
    with pytest.raises(ValueError):
        load_random_words("nope")


def test_classname_free_prompts():
    desc = {"vorlik": ["a red crest", "striped wings", " "], "tessan": ["orange legs"]}
    p, c, isname = classname_free_prompts(["vorlik", "tessan"], desc)
    assert p == ["a photo of a vorlik.", "a red crest", "striped wings", "a photo of a tessan.", "orange legs"]
    assert c.tolist() == [0, 0, 0, 1, 1] and isname.tolist() == [True, False, False, True, False]
    p2, c2, _ = classname_free_prompts(["vorlik", "tessan"], desc, name_template=None, descriptor_template="{sentence}")
    assert p2 == ["which is a red crest", "which has striped wings", "which has orange legs"]
    assert not any("vorlik" in x or "tessan" in x for x in p2)
    with pytest.raises(ValueError, match="without any prompt"):
        classname_free_prompts(["vorlik", "x"], {"vorlik": ["a"], "x": [""]}, name_template=None)


@pytest.mark.parametrize("kind", ["waffle", "namefree"])
def test_scores_match_a_plain_loop(kind):
    names = ["vorlik", "tessan", "brathoum", "kelu"]
    if kind == "waffle":
        w = waffle_prompts(names, load_random_words(), count=4, seed=0)
        prompts, cls = w.prompts, w.prompt_class
    else:
        desc = {n: [f"{n[:3]} part {i}" for i in range(1 + k)] for k, n in enumerate(names)}
        prompts, cls, _ = classname_free_prompts(names, desc)
    T = fake_encode(prompts)
    rng = np.random.default_rng(0)
    img = rng.standard_normal((6, T.shape[1])).astype(np.float32)
    img /= np.linalg.norm(img, axis=1, keepdims=True)
    got = dclip_scores(img, T, cls, len(names))
    for b in range(6):
        for c in range(len(names)):
            rows = [i for i in range(len(prompts)) if cls[i] == c]
            ref = sum(float(np.dot(img[b].astype(np.float64), T[i].astype(np.float64))) for i in rows) / len(rows)
            assert abs(got[b, c] - ref) < 1e-6


def test_doctests():
    import doctest
    import importlib

    res = doctest.testmod(importlib.import_module("pipeline.stages.control_prompts"), raise_on_error=False)
    assert res.attempted > 0 and res.failed == 0
