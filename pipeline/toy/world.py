"""A synthetic world where local attribute alignment can be measured: birds built of parts.

Every image shows a "bird" (body, head, beak, crest, wings, tail, legs) among clutter (stones,
leaves, sticks, pebbles). Four parts, at four different places on the bird, carry the
attributes, each taking one of four values:

* crest colour   (``a red crest``)       -- a ~20x18 px tuft on top of the head
* wing pattern   (``striped wings``)     -- 1 px lines every 3 px (horizontal, vertical,
  diagonal) or plain in their mean colour: erased by the 2x downscale of the whole 128 px
  image to the 64 px model input, resolved in crops of side <= ~85 px
* tail shape     (``a forked tail``)     -- at the back
* leg colour     (``orange legs``)       -- two ~3 px wide legs under the body

A class is one combination of the four values (4^4 = 256 combinations) and has a made-up name
("vorlik"), so the name carries no information. ``split_seed`` fixes which combinations are
held out for zero-shot evaluation: 3 groups of 4 sibling classes that share crest, tail and
legs and differ only in the wing pattern (:func:`make_split`). The training script
(``pipeline.toy.train``) draws its scenes only from the other combinations, so the held-out
classes are attribute combinations never seen together in training. ``seed`` fixes the images.

Settings:

* ``parts``: one bird of the class among clutter that shares no attribute with any class
  (clutter colours are not attribute colours, clutter has no crest/wings/tail/legs).
* ``distractors``: the same, plus a second bird of a *training* combination that copies two
  attributes of another held-out class, so attribute evidence for a wrong class is present in
  the image and only binding attributes to one object separates the classes.

``object_scale`` (``make-toyworld --object-scale``) multiplies the setting's bird size (0.5x, 1x,
1.5x in the benchmarks), capped where the birds no longer fit (:func:`setting_scale`).

Training captions (:mod:`pipeline.toy.train`): :func:`caption_view` groups the visible
attributes per bird (``toy-clip``); :func:`caption_view_unbound` lists them for the whole view
without saying which bird has which (the weak-binding encoder, ``--captions unbound``).

Outputs of :func:`make_toyworld` (``OUT/``): ``images/<class>/<id>.png`` (the folder is the
label), ``attributes.json`` (DCLIP ``{class: [descriptor]}``), ``boxes.jsonl`` (one row per image
x attribute, pixel boxes of the part that carries the attribute), ``scenes.jsonl`` (every bird
and clutter item of each image, distractors included) and ``world.json``.
Everything is a pure function of the seeds: the same call writes identical bytes.
"""
from __future__ import annotations

import io
import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..stages.attributes import dclip_sentence  # noqa: F401  (the one DCLIP rule; captions and toy_eval use it)

IMAGE_SIZE = 128
SETTINGS = ("parts", "distractors")
# bird scale u (px per geometry unit; a bird is 69u x 48u): one large bird in "parts" (90-110 px
# wide, so a LaZSL crop of side >= 64 px can hold its head without its tail), two smaller ones in
# "distractors" (they must fit side by side), the union of both in training.
PARTS_SCALE = (1.4, 1.7)
DISTRACTOR_SCALE = (0.75, 0.95)
TRAIN_SCALE = (0.7, 1.8)
#: ``make_toyworld(object_scale=...)``: multiplies the setting's bird scale range (0.5x, 1x and 1.5x
#: are the benchmark's three). A range that would not fit the image is capped at the largest
#: scale that does (one bird: MAX_ONE_SCALE; two birds, which must not overlap: MAX_PAIR_SCALE).
OBJECT_SCALES = (0.5, 1.0, 1.5)
MAX_ONE_SCALE = 1.75  # a bird is 69u wide: 121 of 128 px
MAX_PAIR_SCALE = 1.2

# part -> (values, descriptor template). Order matters: a combo is a tuple in this order.
PARTS: dict[str, tuple[tuple[str, ...], str]] = {
    "crest": (("red", "blue", "yellow", "green"), "a {} crest"),
    "wings": (("striped", "barred", "streaked", "plain"), "{} wings"),
    "tail": (("forked", "fan-shaped", "pointed", "square"), "a {} tail"),
    "legs": (("orange", "black", "white", "purple"), "{} legs"),
}
PART_NAMES = tuple(PARTS)

CREST_RGB = {"red": (215, 35, 35), "blue": (40, 80, 215), "yellow": (235, 205, 30), "green": (40, 160, 60)}
LEGS_RGB = {"orange": (245, 140, 25), "black": (20, 20, 20), "white": (252, 252, 252), "purple": (130, 50, 170)}
# Not attributes: body colours, clutter, background. None of these is an attribute colour.
BODY_RGB = {"brown": (150, 105, 65), "grey": (135, 135, 140), "tan": (185, 155, 110), "slate": (95, 105, 125)}
INK_RGB = (55, 38, 30)
BEAK_RGB = (120, 108, 92)
CLUTTER_KINDS = ("stone", "leaf", "stick", "pebble")
CLUTTER_RGB = {
    "stone": {"grey": (120, 120, 118), "dark grey": (85, 85, 88)},
    "leaf": {"olive": (118, 122, 52), "brown": (125, 88, 52)},
    "stick": {"brown": (110, 78, 48), "dark brown": (80, 58, 40)},
    "pebble": {"tan": (178, 160, 125), "grey": (150, 148, 140)},
}
BACKGROUND_RGB = ((175, 195, 205), (205, 195, 165), (172, 186, 160), (186, 180, 196))

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z", "br", "dr", "gr", "kr", "tr", "th", "sh")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ou")
_CODAS = ("", "", "n", "r", "l", "k", "s", "th", "m")


def descriptor(part: str, value: str) -> str:
    """The attribute text of one part value ("a red crest", "striped wings", "orange legs")."""
    tpl = PARTS[part][1]
    text = tpl.format(value)
    if tpl.startswith("an ") and value[0] not in "aeiou":
        text = "a " + text[3:]
    return text


def combo_descriptors(combo: tuple[str, ...]) -> list[str]:
    return [descriptor(p, v) for p, v in zip(PART_NAMES, combo)]


def all_combos() -> list[tuple[str, ...]]:
    return list(itertools.product(*(PARTS[p][0] for p in PART_NAMES)))


def made_up_names(n: int, rng: np.random.Generator, taken: set[str] = frozenset()) -> list[str]:
    """n distinct pronounceable nonsense words of 2-3 syllables ("vorlik", "tessan")."""
    out: list[str] = []
    seen = set(taken)
    while len(out) < n:
        syl = int(rng.integers(2, 4))
        word = "".join(
            _ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))] for _ in range(syl)
        ) + _CODAS[rng.integers(len(_CODAS))]
        if 4 <= len(word) <= 10 and word not in seen:
            seen.add(word)
            out.append(word)
    return out


@dataclass(frozen=True)
class ClassSplit:
    """Which attribute combinations are held out (zero-shot evaluation) and their names."""

    split_seed: int
    heldout: tuple[tuple[str, ...], ...]
    train: tuple[tuple[str, ...], ...]
    names: dict  # combo -> made-up name (every combo has one)

    def heldout_classes(self) -> dict[str, list[str]]:
        """{name: [descriptors]} of the held-out classes, in split order (the attribute JSON)."""
        return {self.names[c]: combo_descriptors(c) for c in self.heldout}

    def train_classes(self) -> dict[str, list[str]]:
        return {self.names[c]: combo_descriptors(c) for c in self.train}


def make_split(split_seed: int = 0, n_groups: int = 3, fine_part: str = "wings", min_distance: int = 3) -> ClassSplit:
    """Hold out ``n_groups`` x 4 combinations, in groups of sibling classes.

    The classes of a group share every part except ``fine_part`` (the wing pattern, a detail
    that the 2x downscale to the model input erases) and take all of its values, so telling
    siblings apart needs the fine attribute; groups differ from each other in at least
    ``min_distance`` of the other parts. Every held-out combination, and even every held-out
    (crest, tail, legs) triple, is absent from training. Deterministic in ``split_seed``.
    """
    rng = np.random.default_rng([split_seed, 7001])
    combos = all_combos()
    coarse = [p for p in PART_NAMES if p != fine_part]
    fi = PART_NAMES.index(fine_part)
    triples = list(itertools.product(*(PARTS[p][0] for p in coarse)))
    for _ in range(10000):
        groups = [triples[i] for i in rng.choice(len(triples), size=n_groups, replace=False)]
        if all(sum(a != b for a, b in zip(x, y)) >= min_distance for x, y in itertools.combinations(groups, 2)):
            break
    else:  # pragma: no cover
        raise RuntimeError("could not draw a held-out split; lower min_distance")
    held = []
    for t in groups:
        for v in PARTS[fine_part][0]:
            c = list(t)
            c.insert(fi, v)
            held.append(tuple(c))
    held_set = set(held)
    train = tuple(c for c in combos if c not in held_set)
    names_list = made_up_names(len(combos), rng)
    names = {c: n for c, n in zip(held + list(train), names_list)}
    return ClassSplit(split_seed=split_seed, heldout=tuple(held), train=train, names=names)


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass
class Bird:
    combo: tuple[str, ...]
    body: str
    boxes: dict  # part -> (x0, y0, x1, y1) in pixels, x1/y1 exclusive
    bbox: tuple

    def part_texts(self) -> dict[str, str]:
        return {p: descriptor(p, v) for p, v in zip(PART_NAMES, self.combo)}


@dataclass
class Clutter:
    kind: str
    colour: str
    box: tuple

    @property
    def text(self) -> str:
        art = "an" if self.colour[0] in "aeiou" else "a"
        return f"{art} {self.colour} {self.kind}"


@dataclass
class Scene:
    image: Image.Image
    birds: list = field(default_factory=list)  # Bird; birds[0] is the labelled one
    clutter: list = field(default_factory=list)


# Bird geometry in units u (u ~ 0.8-1.2 px at 128 px); x grows toward the head, y downward.
# extent: x in [-36, 33], y in [-28, 20]
_X_MIN, _X_MAX, _Y_MIN, _Y_MAX = -36.0, 33.0, -28.0, 20.0


def _tail_polygon(shape: str) -> list[tuple[float, float]]:
    if shape == "forked":
        return [(-17, -5), (-34, -13), (-27, -1), (-34, 11), (-17, 4)]
    if shape == "fan-shaped":
        pts = [(-17, -3)]
        for a in np.linspace(145, 215, 8):
            r = 17
            pts.append((-17 + r * math.cos(math.radians(a)), -1 + r * math.sin(math.radians(a)) * 1.05))
        pts.append((-17, 3))
        return pts
    if shape == "pointed":
        return [(-17, -5), (-36, 0), (-17, 5)]
    if shape == "square":
        return [(-17, -7), (-31, -7), (-31, 7), (-17, 7)]
    raise ValueError(shape)


def _pattern_mask(kind: str, w: int, h: int, phase: tuple[int, int]) -> np.ndarray | None:
    """Ink mask of a wing pattern in a w x h box, at a fixed pixel scale (not scaled by u).

    All patterns have a 3 px period and 1/3 ink, and "plain" is painted in their mean colour,
    so after the 2x downscale of the whole image (Nyquist period 4 px) the four look alike;
    a crop of side <= ~85 px resolves them.
    """
    yy, xx = np.mgrid[0:h, 0:w]
    xx = xx + phase[0]
    yy = yy + phase[1]
    if kind == "striped":
        return yy % 3 == 0
    if kind == "barred":
        return xx % 3 == 0
    if kind == "streaked":
        return (xx + yy) % 3 == 0
    if kind == "plain":
        return None
    raise ValueError(kind)


def _bounds(pts) -> tuple[float, float, float, float]:
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    return min(xs), min(ys), max(xs), max(ys)


def _int_box(b, size) -> tuple[int, int, int, int]:
    x0, y0, x1, y1 = b
    return (
        max(0, int(math.floor(x0))),
        max(0, int(math.floor(y0))),
        min(size, int(math.ceil(x1)) + 1),
        min(size, int(math.ceil(y1)) + 1),
    )


def draw_bird(img: Image.Image, combo, x: float, y: float, u: float, facing: int, body: str, rng) -> Bird:
    """Draw one bird with its origin at (x, y), scale u px/unit, facing +1 (right) or -1."""
    crest, wings, tail, legs = combo
    size = img.size[0]
    dr = ImageDraw.Draw(img)

    def tr(pts):
        return [(x + facing * px * u, y + py * u) for px, py in pts]

    body_rgb = BODY_RGB[body]
    boxes = {}
    # tail (behind the body)
    tail_pts = tr(_tail_polygon(tail))
    dr.polygon(tail_pts, fill=tuple(int(c * 0.6) for c in body_rgb))
    boxes["tail"] = _int_box(_bounds(tail_pts), size)
    # legs with feet (drawn before the body, which covers their tops)
    leg_pts = []
    for lx in (-4, 4):
        leg = tr([(lx - 1.1, 10), (lx + 1.1, 10), (lx + 1.1, 18.5), (lx + 4, 18.5), (lx + 4, 20), (lx - 1.1, 20)])
        dr.polygon(leg, fill=LEGS_RGB[legs])
        leg_pts += leg
    lb = _bounds(leg_pts)
    boxes["legs"] = _int_box((lb[0], y + 11 * u, lb[2], lb[3]), size)
    # body
    bb = _bounds(tr([(-20, -12), (20, 12)]))
    dr.ellipse(bb, fill=body_rgb)
    # head
    hb = _bounds(tr([(10, -22), (26, -6)]))
    dr.ellipse(hb, fill=body_rgb)
    # crest: three spikes on top of the head
    crest_pts = tr([(12, -18), (13, -26), (16, -21), (18, -28), (20, -21), (23, -25), (24, -17)])
    dr.polygon(crest_pts, fill=CREST_RGB[crest])
    boxes["crest"] = _int_box(_bounds(crest_pts), size)
    # beak (not an attribute)
    dr.polygon(tr([(24, -16), (33, -12), (24, -8)]), fill=BEAK_RGB)
    # eye
    ex, ey = tr([(19, -15)])[0]
    r = max(1.0, 1.4 * u)
    dr.ellipse([ex - r, ey - r, ex + r, ey + r], fill=(15, 15, 15))
    # wing: ellipse on the body, filled with the pattern
    wb = _bounds(tr([(-14, -8), (10, 6)]))
    wbox = _int_box(wb, size)
    w, h = wbox[2] - wbox[0], wbox[3] - wbox[1]
    mask = Image.new("L", (w, h), 0)
    ImageDraw.Draw(mask).ellipse([wb[0] - wbox[0], wb[1] - wbox[1], wb[2] - wbox[0], wb[3] - wbox[1]], fill=255)
    base = np.array(tuple(min(255, int(c * 1.25 + 20)) for c in body_rgb), dtype=np.uint8)
    tile = np.empty((h, w, 3), dtype=np.uint8)
    tile[:] = base
    phase = (int(rng.integers(0, 6)), int(rng.integers(0, 6)))
    m = _pattern_mask(wings, w, h, phase)
    if m is None:
        tile[:] = np.round(base * (2 / 3) + np.array(INK_RGB) / 3).astype(np.uint8)
    else:
        tile[m] = INK_RGB
    img.paste(Image.fromarray(tile), (wbox[0], wbox[1]), mask)
    boxes["wings"] = _int_box(wb, size)
    bbox = _int_box(_bounds(tr([(_X_MIN, _Y_MIN), (_X_MAX, _Y_MAX)])), size)
    return Bird(combo=tuple(combo), body=body, boxes=boxes, bbox=bbox)


def _overlap(a, b, pad=0) -> bool:
    return not (a[2] + pad <= b[0] or b[2] + pad <= a[0] or a[3] + pad <= b[1] or b[3] + pad <= a[1])


def _draw_clutter(img: Image.Image, kind: str, colour: str, cx: float, cy: float, s: float, rng) -> tuple:
    dr = ImageDraw.Draw(img)
    rgb = CLUTTER_RGB[kind][colour]
    if kind == "stone":
        n = 7
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        rad = s * rng.uniform(0.7, 1.0, n)
        pts = [(cx + r * math.cos(a), cy + 0.75 * r * math.sin(a)) for a, r in zip(ang, rad)]
    elif kind == "leaf":
        a = rng.uniform(0, math.pi)
        t = np.linspace(0, math.pi, 8)
        side1 = [(s * math.cos(tt), 0.38 * s * math.sin(tt)) for tt in t]
        side2 = [(s * math.cos(tt), -0.38 * s * math.sin(tt)) for tt in t[::-1]]
        pts = [(cx + px * math.cos(a) - py * math.sin(a), cy + px * math.sin(a) + py * math.cos(a)) for px, py in side1 + side2]
    elif kind == "stick":
        a = rng.uniform(0, math.pi)
        dx, dy = s * math.cos(a), s * math.sin(a)
        w = max(2, int(round(s / 5)))
        dr.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=rgb, width=w)
        return (cx - abs(dx) - w / 2, cy - abs(dy) - w / 2, cx + abs(dx) + w / 2, cy + abs(dy) + w / 2)
    elif kind == "pebble":
        r = 0.45 * s
        pts = None
        dr.ellipse([cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r], fill=rgb)
        return (cx - r, cy - 0.8 * r, cx + r, cy + 0.8 * r)
    else:
        raise ValueError(kind)
    dr.polygon(pts, fill=rgb)
    return _bounds(pts)


def _place_birds(combos, rng, size, scale):
    """Random non-overlapping placements, or (None, None) when a bird does not fit."""
    birds, placed = [], []
    for combo in combos:
        for _ in range(50):
            u = float(rng.uniform(*scale))
            facing = int(rng.choice([-1, 1]))
            # origin so that the whole bird is inside the image with a 2 px margin
            if facing == 1:
                xlo, xhi = 2 - _X_MIN * u, size - 2 - _X_MAX * u
            else:
                xlo, xhi = 2 + _X_MAX * u, size - 2 + _X_MIN * u
            ylo, yhi = 2 - _Y_MIN * u, size - 2 - _Y_MAX * u
            if xhi <= xlo or yhi <= ylo:
                continue
            x, y = float(rng.uniform(xlo, xhi)), float(rng.uniform(ylo, yhi))
            if facing == 1:
                box = (x + _X_MIN * u, y + _Y_MIN * u, x + _X_MAX * u, y + _Y_MAX * u)
            else:
                box = (x - _X_MAX * u, y + _Y_MIN * u, x - _X_MIN * u, y + _Y_MAX * u)
            if not any(_overlap(box, b, pad=2) for b in placed):
                break
        else:
            return None, None
        placed.append(box)
        body = list(BODY_RGB)[rng.integers(len(BODY_RGB))]
        birds.append((combo, x, y, u, facing, body))
    return birds, placed


def render_scene(
    combos,
    rng: np.random.Generator,
    size: int = IMAGE_SIZE,
    scale: tuple[float, float] = (0.8, 1.05),
    n_clutter: tuple[int, int] = (3, 6),
) -> Scene:
    """Draw birds of the given combinations (the first is the labelled one) among clutter.

    Birds never overlap each other and are fully inside the image; clutter avoids the birds.
    Returns the image with every bird's part boxes and every clutter item's box.
    """
    bg = np.array(BACKGROUND_RGB[rng.integers(len(BACKGROUND_RGB))]) + rng.integers(-10, 11, 3)
    # a soft vertical gradient so the background is not one flat colour
    grad = np.linspace(1.04, 0.94, size)[:, None, None]
    arr = np.clip(bg[None, None, :] * grad + np.zeros((size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    for _attempt in range(100):
        birds, placed = _place_birds(combos, rng, size, scale)
        if birds is not None:
            break
    else:
        raise RuntimeError("could not place the birds; lower the scale")
    # clutter first (behind), then birds on top
    clutter: list[Clutter] = []
    for _ in range(int(rng.integers(n_clutter[0], n_clutter[1] + 1))):
        kind = CLUTTER_KINDS[rng.integers(len(CLUTTER_KINDS))]
        colour = list(CLUTTER_RGB[kind])[rng.integers(len(CLUTTER_RGB[kind]))]
        for _ in range(30):
            s = float(rng.uniform(6, 13))
            cx, cy = float(rng.uniform(0, size)), float(rng.uniform(0, size))
            cbox = (cx - s, cy - s, cx + s, cy + s)
            if not any(_overlap(cbox, b) for b in placed):
                break
        else:
            continue
        b = _draw_clutter(img, kind, colour, cx, cy, s, rng)
        placed.append(cbox)
        clutter.append(Clutter(kind=kind, colour=colour, box=_int_box(b, size)))
    drawn = [draw_bird(img, combo, x, y, u, facing, body, rng) for combo, x, y, u, facing, body in birds]
    return Scene(image=img, birds=drawn, clutter=clutter)


def distractor_combo(true_combo, heldout, rng: np.random.Generator, n_shared: int = 2) -> tuple[str, ...]:
    """A training combination that copies ``n_shared`` parts of another held-out class; its other
    parts differ from both that class and the true one (evidence for the wrong class only)."""
    held = set(heldout)
    others = [c for c in heldout if c != tuple(true_combo)]
    for _ in range(1000):
        other = others[rng.integers(len(others))]
        keep = set(rng.choice(len(PART_NAMES), size=n_shared, replace=False).tolist())
        combo = []
        for i, p in enumerate(PART_NAMES):
            if i in keep:
                combo.append(other[i])
            else:
                vals = [v for v in PARTS[p][0] if v != other[i] and v != true_combo[i]]
                combo.append(vals[rng.integers(len(vals))])
        combo = tuple(combo)
        if combo not in held:
            return combo
    raise RuntimeError("no distractor combination found")  # pragma: no cover


def setting_scale(setting: str, object_scale: float = 1.0) -> tuple[float, float]:
    """The bird scale range (px per unit) of ``setting`` times ``object_scale``, capped to fit."""
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, not {setting!r}")
    if not (math.isfinite(object_scale) and 0.2 <= object_scale <= 2.0):
        raise ValueError(f"object_scale must be in [0.2, 2], not {object_scale!r}")
    base, cap = (PARTS_SCALE, MAX_ONE_SCALE) if setting == "parts" else (DISTRACTOR_SCALE, MAX_PAIR_SCALE)
    lo, hi = (min(cap, round(v * object_scale, 4)) for v in base)
    return (lo, hi)


def render_example(combo, setting: str, heldout, rng: np.random.Generator, size: int = IMAGE_SIZE,
                   object_scale: float = 1.0) -> Scene:
    """One evaluation image of ``combo`` in a setting ("parts" or "distractors"), birds at
    ``object_scale`` times the setting's size (:func:`setting_scale`)."""
    scale = setting_scale(setting, object_scale)
    if setting == "parts":
        return render_scene([combo], rng, size=size, scale=scale)
    return render_scene([combo, distractor_combo(combo, heldout, rng)], rng, size=size, scale=scale)


# --------------------------------------------------------------------------------------------
# Captions ("what is visible") for training views
# --------------------------------------------------------------------------------------------


def _inside_fraction(box, view) -> float:
    ix = max(0, min(box[2], view[2]) - max(box[0], view[0]))
    iy = max(0, min(box[3], view[3]) - max(box[1], view[1]))
    area = max(1, (box[2] - box[0]) * (box[3] - box[1]))
    return ix * iy / area


def _join(items: list[str]) -> str:
    if len(items) == 1:
        return items[0]
    return ", ".join(items[:-1]) + " and " + items[-1]


def caption_view(scene: Scene, view, rng: np.random.Generator, nonce: str | None = None,
                 p_dclip: float = 0.2, min_inside: float = 0.6) -> str:
    """A caption of what is visible in ``view`` (x0, y0, x1, y1) of ``scene``.

    A part counts as visible when ``min_inside`` of its box is inside the view. Parts are
    grouped by bird (so two birds are not mixed up). With probability ``p_dclip`` (and when a
    part is visible) the caption is the DCLIP sentence of one visible attribute behind a
    made-up name ``nonce`` ("tovrin, which is a red crest"), the form the zero-shot prompts use.
    """
    phrases, singles = [], []
    for bird in scene.birds:
        vis = [p for p in PART_NAMES if _inside_fraction(bird.boxes[p], view) >= min_inside]
        if not vis:
            continue
        texts = [descriptor(p, bird.combo[PART_NAMES.index(p)]) for p in vis]
        order = rng.permutation(len(texts))
        texts = [texts[i] for i in order]
        singles.extend(texts)
        whole = _inside_fraction(bird.bbox, view) >= 0.85
        if whole:
            head = ("a bird with", f"a {bird.body} bird with", "a small bird with")[rng.integers(3)]
        else:
            head = ("part of a bird with", f"part of a {bird.body} bird with", "a close-up of")[rng.integers(3)]
        phrases.append(f"{head} {_join(texts)}")
    things = _visible_clutter(scene, view, min_inside)
    if singles and nonce is not None and rng.random() < p_dclip:
        return f"{nonce}, {dclip_sentence(singles[rng.integers(len(singles))])}"
    if phrases:
        return _next_to(" and ".join(phrases), things, 1 if len(phrases) > 1 else min(2, len(things)), rng)
    return _clutter_caption(things, rng)


def _visible_clutter(scene: Scene, view, min_inside: float) -> list[str]:
    return list(dict.fromkeys(c.text for c in scene.clutter if _inside_fraction(c.box, view) >= min_inside))


def _next_to(cap: str, things: list[str], n: int, rng: np.random.Generator) -> str:
    """Half the time (when clutter is visible), ``cap`` plus ", next to" ``n`` clutter items."""
    if things and rng.random() < 0.5:
        pick = [things[i] for i in rng.permutation(len(things))[:n]]
        cap += f", next to {_join(pick)}"
    return cap


def _clutter_caption(things: list[str], rng: np.random.Generator) -> str:
    """The caption of a view with no bird part in it: up to three clutter items, or the background."""
    if things:
        return _join([things[i] for i in rng.permutation(len(things))[:3]])
    return "an empty background"


CAPTION_MODES = ("bound", "unbound")


def caption_view_unbound(scene: Scene, view, rng: np.random.Generator, nonce: str | None = None,
                         p_dclip: float = 0.2, min_inside: float = 0.6) -> str:
    """A caption of ``view`` that lists the visible attributes without saying which bird has which.

    The weak-binding counterpart of :func:`caption_view` (the way web captions describe a scene):
    the attributes of every visible part of every bird go into one shuffled, de-duplicated list
    ("birds with a blue crest, striped wings, a red crest and orange legs"), so a caption never
    pairs an attribute with its bird. Visibility, the DCLIP form behind a nonce and the clutter
    phrase follow :func:`caption_view` (same probabilities). Besides the grouping one thing
    differs: the head never names the body colour ("a brown bird with ..."), which
    :func:`caption_view` does in a third of its heads (a body colour belongs to one bird).
    """
    texts, n_birds, whole = [], 0, True
    for bird in scene.birds:
        vis = [p for p in PART_NAMES if _inside_fraction(bird.boxes[p], view) >= min_inside]
        if vis:
            n_birds += 1
            whole = whole and _inside_fraction(bird.bbox, view) >= 0.85
            texts.extend(descriptor(p, bird.combo[PART_NAMES.index(p)]) for p in vis)
    texts = list(dict.fromkeys(texts))
    texts = [texts[i] for i in rng.permutation(len(texts))]
    things = _visible_clutter(scene, view, min_inside)
    if texts and nonce is not None and rng.random() < p_dclip:
        return f"{nonce}, {dclip_sentence(texts[rng.integers(len(texts))])}"
    if texts:
        if whole:
            head = ("a bird with", "a small bird with")[rng.integers(2)] if n_birds == 1 else "birds with"
        else:
            head = ("part of a bird with", "a close-up of")[rng.integers(2)] if n_birds == 1 else "parts of birds with"
        return _next_to(f"{head} {_join(texts)}", things, min(2, len(things)), rng)
    return _clutter_caption(things, rng)


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False, compress_level=6)
    return buf.getvalue()


def make_toyworld(
    out_dir,
    n_per_class: int = 20,
    seed: int = 0,
    setting: str = "parts",
    split_seed: int = 0,
    classes: str = "heldout",
    object_scale: float = 1.0,
) -> dict:
    """Write a toy world to ``out_dir``; returns the world description (also in world.json).

    Args:
        out_dir: output folder (created).
        n_per_class: images per class.
        seed: image seed (scenes); the class split does not depend on it.
        setting: ``parts`` (one bird among unrelated clutter) or ``distractors`` (plus a second
            bird sharing two attributes with another held-out class).
        split_seed: which combinations are held out, and the class names. The shipped
            ``toy-clip`` weights were trained on the training side of ``split_seed=0``.
        classes: ``heldout`` (zero-shot evaluation, default) or ``train`` (seen combinations).
        object_scale: bird size relative to the setting's (0.5, 1, 1.5 in the benchmark); capped
            where the birds would no longer fit (:func:`setting_scale`; world.json records the range).
            At 1 the images are those of earlier versions, byte for byte.
    """
    scale = setting_scale(setting, object_scale)
    split = make_split(split_seed)
    if classes == "heldout":
        combos = list(split.heldout)
    elif classes == "train":
        combos = list(split.train)
    else:
        raise ValueError("classes must be 'heldout' or 'train'")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    attributes = {split.names[c]: combo_descriptors(c) for c in combos}
    rows, scenes = [], []
    for ci, combo in enumerate(combos):
        name = split.names[combo]
        d = out / "images" / name
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_class):
            rng = np.random.default_rng([seed, SETTINGS.index(setting), ci, i])
            scene = render_example(combo, setting, split.heldout, rng, object_scale=object_scale)
            rel = f"images/{name}/{i:04d}.png"
            (out / rel).write_bytes(_png_bytes(scene.image))
            scenes.append({
                "image": rel, "class": name,
                "birds": [{"attributes": list(b.part_texts().values()), "bbox": list(b.bbox),
                           "boxes": {p: list(bx) for p, bx in b.boxes.items()}} for b in scene.birds],
                "clutter": [{"text": c.text, "bbox": list(c.box)} for c in scene.clutter],
            })
            bird = scene.birds[0]
            for part, text in bird.part_texts().items():
                x0, y0, x1, y1 = bird.boxes[part]
                rows.append({"image": rel, "class": name, "part": part, "attribute": text,
                             "x0": x0, "y0": y0, "x1": x1, "y1": y1})
    (out / "attributes.json").write_text(json.dumps(attributes, indent=1) + "\n")
    with open(out / "boxes.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    with open(out / "scenes.jsonl", "w") as f:
        for r in scenes:
            f.write(json.dumps(r) + "\n")
    world = {
        "generator": "pipeline.toy.world",
        "seed": seed,
        "split_seed": split_seed,
        "setting": setting,
        "classes": classes,
        "n_per_class": n_per_class,
        "image_size": IMAGE_SIZE,
        "parts": {p: list(v) for p, (v, _) in PARTS.items()},
        "heldout_classes": split.heldout_classes(),
        "train_classes": split.train_classes(),
        "object_scale": object_scale,
        "scale": {"parts": PARTS_SCALE, "distractors": DISTRACTOR_SCALE, "train": TRAIN_SCALE, "used": list(scale)},
        "boxes": "boxes.jsonl: one row per image x attribute of the labelled bird; x1/y1 exclusive",
        "scenes": "scenes.jsonl: one row per image, every bird (the first is the labelled one) and clutter item",
    }
    (out / "world.json").write_text(json.dumps(world, indent=1) + "\n")
    return world
