"""A synthetic compositional world: everyday objects in visual states ("a striped cup", "a wet boot").

Every image shows one object (ball, box, cup, bottle, shirt, boot) among clutter (the bird
world's stones, leaves, sticks and pebbles). The object is drawn in a random body colour and
carries one **state** on a patch of its surface (the state's evidence is local: a box inside
the object, recorded in ``boxes.jsonl``):

* fine patterns, 1 px ink every 3 px, erased by the 2x downscale of the 128 px image to the
  64 px model input and resolved in crops of side <= ~85 px (as the bird world's wings):
  ``striped`` (horizontal lines), ``ribbed`` (vertical lines), ``checkered`` (a grid of lines),
  ``dotted`` (a dot every 3 px);
* coarser marks, partly visible in the whole image: ``cracked`` (dark jagged 1 px cracks),
  ``wet`` (blue droplets), ``burnt`` (black charred blotches), ``frozen`` (pale icy tint with
  white frost crystals).

A **pair** is (state, object); 8 x 6 = 48 pairs. ``split_seed`` draws (:func:`make_pair_split`):
24 *seen* pairs (the only ones the tiny model ``toy-compose`` is trained on: every state and
every object occurs in at least 3 of them), 12 *unseen* pairs (test only; every state and every
object occurs among them), and 12 pairs that exist only in the **open world** (no images).
The closed world is seen + unseen (36 pairs), the open world all 48. This is the layout of the
CZSL benchmarks (MIT-States, UT-Zappos: train pairs, test pairs, and all S x O in the open world).

Outputs of :func:`make_compose_world` (``OUT/``):

* ``images/<state>_<object>/<i>.png``: one folder per closed-world pair (seen and unseen);
* ``states.txt``, ``objects.txt``: one name per line; ``pairs.txt`` (closed world),
  ``pairs_open.txt`` (all S x O), ``seen_pairs.txt``, ``unseen_pairs.txt``: ``state object``
  per line (the CZSL ``*_pairs.txt`` format);
* ``attributes_states.json``, ``attributes_objects.json``, ``attributes_pairs.json``: DCLIP
  ``{name: [descriptor]}``; a pair's descriptors are its state's and its object's (the pair
  name is ``"state object"``), for every open-world pair;
* ``concepts.txt``: a concept bank for mutual-knowledge explanations (``pipeline
  mutual-knowledge --bank``): every state and object descriptor and every clutter text, one a
  line, no class names;
* ``boxes.jsonl``: one row per image x evidence: ``kind`` = ``state`` (the patch carrying the
  state), ``object`` (the whole object) or ``object_part`` (the part an object descriptor names),
  with the descriptor ``text`` where one applies; pixel boxes, x1/y1 exclusive;
* ``world.json``: the definition (vocabularies, split, settings, seeds).

Everything is a pure function of the seeds: the same call writes identical bytes.
"""
from __future__ import annotations

import itertools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..stages.attributes import dclip_sentence
from . import world as tw

IMAGE_SIZE = 128
SETTINGS = ("single", "distractors")
# object side in px: one large object in "single"; two smaller ones with "distractors"; the
# union in training.
SINGLE_SIZE = (62, 82)
DISTRACTOR_SIZE = (44, 54)
TRAIN_SIZE = (40, 86)
STATE_FRACTION = (0.5, 0.7)  # side of the state patch / side of the object's body box

STATES: dict[str, tuple[str, str]] = {
    "striped": ("thin horizontal lines", "a striped pattern"),
    "ribbed": ("thin vertical lines", "a ribbed pattern"),
    "checkered": ("a fine grid of lines", "a checkered pattern"),
    "dotted": ("tiny dark dots", "a dotted pattern"),
    "cracked": ("dark jagged cracks", "a broken surface"),
    "wet": ("blue water droplets", "drops of water"),
    "burnt": ("black charred patches", "scorch marks"),
    "frozen": ("white frost crystals", "an icy pale surface"),
}
FINE_STATES = ("striped", "ribbed", "checkered", "dotted")
# object -> (shape descriptor, descriptor of its distinctive part); the part's box is recorded.
OBJECTS: dict[str, tuple[str, str]] = {
    "ball": ("a round shape", "a curved seam"),
    "box": ("a square shape", "a flat lid"),
    "cup": ("a wide rim", "a curved handle"),
    "bottle": ("a narrow neck", "a screw cap"),
    "shirt": ("a collar", "two short sleeves"),
    "boot": ("a tall shaft", "a thick sole"),
}
STATE_NAMES = tuple(STATES)
OBJECT_NAMES = tuple(OBJECTS)

# body colours (not words of any caption) and state inks
OBJECT_RGB = {
    "red": (196, 62, 52), "blue": (62, 92, 196), "yellow": (218, 188, 52), "green": (72, 150, 72),
    "orange": (226, 132, 46), "purple": (132, 74, 160), "teal": (44, 148, 148), "pink": (214, 124, 160),
}
INK_RGB = (40, 30, 28)
DROP_RGB = (150, 205, 250)
CHAR_RGB = (24, 18, 14)
FROST_TINT = (205, 228, 246)


def pair_name(state: str, obj: str) -> str:
    return f"{state} {obj}"


def pair_folder(state: str, obj: str) -> str:
    """The image folder of a pair (``striped_cup``; names hold no underscore)."""
    return f"{state}_{obj}"


def all_pairs() -> list[tuple[str, str]]:
    return list(itertools.product(STATE_NAMES, OBJECT_NAMES))


@dataclass(frozen=True)
class PairSplit:
    """Seen (trained on), unseen (test only) and open-world-only pairs."""

    split_seed: int
    seen: tuple[tuple[str, str], ...]
    unseen: tuple[tuple[str, str], ...]
    open_only: tuple[tuple[str, str], ...]

    @property
    def closed(self) -> tuple[tuple[str, str], ...]:
        """The closed-world pairs: seen then unseen, each in S x O order."""
        return tuple(p for p in all_pairs() if p in set(self.seen) | set(self.unseen))


def make_pair_split(split_seed: int = 0, n_seen: int = 24, n_unseen: int = 12, min_seen: int = 3) -> PairSplit:
    """Draw the split; every state and object is in >= ``min_seen`` seen pairs and >= 1 unseen pair.

    Deterministic in ``split_seed``. Rejection sampling over random permutations of S x O.
    """
    rng = np.random.default_rng([split_seed, 4242])
    pairs = all_pairs()
    for _ in range(100000):
        order = rng.permutation(len(pairs))
        seen = [pairs[i] for i in order[:n_seen]]
        unseen = [pairs[i] for i in order[n_seen:n_seen + n_unseen]]
        ok = all(sum(p[0] == s for p in seen) >= min_seen and any(p[0] == s for p in unseen) for s in STATE_NAMES)
        ok = ok and all(sum(p[1] == o for p in seen) >= min_seen and any(p[1] == o for p in unseen) for o in OBJECT_NAMES)
        if ok:
            break
    else:  # pragma: no cover
        raise RuntimeError("could not draw a pair split")
    seen_s, unseen_s = set(seen), set(unseen)
    return PairSplit(
        split_seed=split_seed,
        seen=tuple(p for p in pairs if p in seen_s),
        unseen=tuple(p for p in pairs if p in unseen_s),
        open_only=tuple(p for p in pairs if p not in seen_s and p not in unseen_s),
    )


def state_attributes() -> dict[str, list[str]]:
    return {s: list(d) for s, d in STATES.items()}


def object_attributes() -> dict[str, list[str]]:
    return {o: list(d) for o, d in OBJECTS.items()}


def pair_attributes(pairs=None) -> dict[str, list[str]]:
    """DCLIP ``{"state object": state descriptors + object descriptors}``."""
    pairs = all_pairs() if pairs is None else pairs
    return {pair_name(s, o): list(STATES[s]) + list(OBJECTS[o]) for s, o in pairs}


def clutter_texts() -> list[str]:
    """Every clutter item's text ("a grey stone", "an olive leaf"), sorted."""
    return sorted({tw.Clutter(k, c, (0, 0, 0, 0)).text for k in tw.CLUTTER_KINDS for c in tw.CLUTTER_RGB[k]})


def concept_bank() -> list[str]:
    """The world's concepts without class names: state and object descriptors, then clutter."""
    texts = [d for v in STATES.values() for d in v] + [d for v in OBJECTS.values() for d in v] + clutter_texts()
    return list(dict.fromkeys(texts))


# --------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------


@dataclass
class Item:
    """One drawn object: its pair, colour and pixel boxes (x0, y0, x1, y1; x1/y1 exclusive)."""

    state: str
    obj: str
    colour: str
    bbox: tuple
    state_box: tuple
    part_box: tuple  # the box of the object's second descriptor (handle, cap, sole, ...)

    @property
    def pair(self) -> str:
        return pair_name(self.state, self.obj)


@dataclass
class ComposeScene:
    image: Image.Image
    items: list = field(default_factory=list)  # Item; items[0] is the labelled one
    clutter: list = field(default_factory=list)  # tw.Clutter


def _poly(pts, cx, cy, r, flip):
    return [(cx + flip * x * r, cy + y * r) for x, y in pts]


def _object_shapes(obj: str, cx: float, cy: float, r: float, flip: int):
    """Unit-geometry of an object: (body polygons or ellipses, detail shapes, part box in units).

    Returns (body, details, part) where body is a list of ("poly"|"ellipse", points) that make
    the surface the state can cover, details a list of (kind, points, colour factor, width) drawn
    on top, and part the (x0, y0, x1, y1) unit box of the distinctive part.
    """
    if obj == "ball":
        body = [("ellipse", [(-0.9, -0.9), (0.9, 0.9)])]
        seam = [(-0.55, -0.72), (-0.2, -0.2), (-0.1, 0.3), (-0.4, 0.78)]
        details = [("line", seam, 0.55, 2)]
        part = (-0.62, -0.78, -0.05, 0.84)
    elif obj == "box":
        body = [("poly", [(-0.82, -0.5), (0.82, -0.5), (0.82, 0.85), (-0.82, 0.85)])]
        details = [("poly", [(-0.9, -0.82), (0.9, -0.82), (0.9, -0.5), (-0.9, -0.5)], 0.7, 0)]
        part = (-0.9, -0.82, 0.9, -0.48)
    elif obj == "cup":
        body = [("poly", [(-0.72, -0.62), (0.48, -0.62), (0.34, 0.9), (-0.58, 0.9)])]
        details = [
            ("ring", [(0.3, -0.35), (0.98, 0.45)], 0.7, 0.16),
            ("ellipse", [(-0.76, -0.76), (0.52, -0.5)], 0.6, 0),
        ]
        part = (0.3, -0.38, 1.0, 0.48)
    elif obj == "bottle":
        body = [("poly", [(-0.46, -0.12), (-0.2, -0.42), (0.2, -0.42), (0.46, -0.12), (0.46, 0.95), (-0.46, 0.95)])]
        details = [
            ("poly", [(-0.15, -0.78), (0.15, -0.78), (0.15, -0.4), (-0.15, -0.4)], 0.85, 0),
            ("poly", [(-0.2, -0.98), (0.2, -0.98), (0.2, -0.76), (-0.2, -0.76)], 0.45, 0),
        ]
        part = (-0.22, -1.0, 0.22, -0.74)
    elif obj == "shirt":
        body = [("poly", [(-0.5, -0.72), (0.5, -0.72), (0.5, 0.92), (-0.5, 0.92)])]
        details = [
            ("poly", [(-0.5, -0.72), (-1.0, -0.3), (-0.78, 0.05), (-0.5, -0.2)], 0.8, 0),
            ("poly", [(0.5, -0.72), (1.0, -0.3), (0.78, 0.05), (0.5, -0.2)], 0.8, 0),
            ("poly", [(-0.22, -0.74), (0.22, -0.74), (0.0, -0.42)], 0.5, 0),
        ]
        part = (-1.0, -0.74, 1.0, 0.08)
    elif obj == "boot":
        body = [("poly", [(-0.62, -0.95), (0.08, -0.95), (0.08, 0.28), (0.92, 0.42), (0.92, 0.72), (-0.62, 0.72)])]
        details = [("poly", [(-0.68, 0.72), (0.98, 0.72), (0.98, 0.96), (-0.68, 0.96)], 0.4, 0)]
        part = (-0.7, 0.7, 1.0, 0.98)
    else:
        raise ValueError(obj)
    return body, details, part


def _unit_box_to_px(b, cx, cy, r, flip, size):
    xs = sorted((cx + flip * b[0] * r, cx + flip * b[2] * r))
    return tw._int_box((xs[0], cy + b[1] * r, xs[1], cy + b[3] * r), size)


def _shape_bounds(shapes, cx, cy, r, flip):
    pts = []
    for _, p, *rest in shapes:
        pts += _poly(p, cx, cy, r, flip)
    return tw._bounds(pts)


def _state_texture(state: str, base: np.ndarray, w: int, h: int, rng: np.random.Generator) -> np.ndarray:
    """An RGB tile (h, w, 3) of the state's surface over the body colour ``base``."""
    tile = np.empty((h, w, 3), dtype=np.float64)
    tile[:] = base
    yy, xx = np.mgrid[0:h, 0:w]
    px, py = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    ink = np.array(INK_RGB, dtype=np.float64)
    if state in FINE_STATES:
        xs, ys = (xx + px) % 3 == 0, (yy + py) % 3 == 0
        mask = {"striped": ys, "ribbed": xs, "checkered": xs | ys, "dotted": xs & ys}[state]
        tile[mask] = ink
        return tile.astype(np.uint8)
    img = Image.fromarray(tile.astype(np.uint8))
    dr = ImageDraw.Draw(img)
    if state == "cracked":
        for _ in range(max(2, (w * h) // 350)):
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            pts = [(x, y)]
            ang = rng.uniform(0, 2 * math.pi)
            for _ in range(int(rng.integers(3, 6))):
                ang += rng.uniform(-1.0, 1.0)
                step = rng.uniform(3, 7)
                x, y = x + step * math.cos(ang), y + step * math.sin(ang)
                pts.append((x, y))
            dr.line(pts, fill=INK_RGB, width=1)
    elif state == "wet":
        arr = np.asarray(img).astype(np.float64) * 0.82
        img = Image.fromarray(arr.astype(np.uint8))
        dr = ImageDraw.Draw(img)
        for _ in range(max(3, (w * h) // 45)):
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            rr = float(rng.uniform(1.2, 2.2))
            dr.ellipse([x - rr, y - rr * 1.3, x + rr, y + rr * 1.3], fill=DROP_RGB)
            dr.point([(x - 0.5, y - rr * 0.6)], fill=(255, 255, 255))
    elif state == "burnt":
        for _ in range(max(2, (w * h) // 260)):
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            n = 7
            ang = np.sort(rng.uniform(0, 2 * math.pi, n))
            rad = rng.uniform(2.5, 5.5, n)
            pts = [(x + q * math.cos(a), y + q * math.sin(a)) for a, q in zip(ang, rad)]
            dr.polygon(pts, fill=CHAR_RGB)
    elif state == "frozen":
        arr = np.asarray(img).astype(np.float64) * 0.45 + np.array(FROST_TINT) * 0.55
        img = Image.fromarray(arr.astype(np.uint8))
        dr = ImageDraw.Draw(img)
        for _ in range(max(3, (w * h) // 70)):
            x, y = float(rng.uniform(0, w)), float(rng.uniform(0, h))
            dr.line([(x - 2, y), (x + 2, y)], fill=(255, 255, 255))
            dr.line([(x, y - 2), (x, y + 2)], fill=(255, 255, 255))
    else:
        raise ValueError(state)
    return np.asarray(img)


def draw_item(img: Image.Image, state: str, obj: str, cx: float, cy: float, side: float, flip: int,
              colour: str, rng: np.random.Generator) -> Item:
    """Draw one object of side ``side`` px centred at (cx, cy) with its state patch."""
    size = img.size[0]
    r = side / 2
    body, details, part = _object_shapes(obj, cx, cy, r, flip)
    base = np.array(OBJECT_RGB[colour], dtype=np.float64)
    mask = Image.new("L", img.size, 0)
    md = ImageDraw.Draw(mask)
    for kind, p in body:
        pts = _poly(p, cx, cy, r, flip)
        if kind == "poly":
            md.polygon(pts, fill=255)
        else:
            (x0, y0), (x1, y1) = pts
            md.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=255)
    dr = ImageDraw.Draw(img)
    img.paste(tuple(int(c) for c in base), (0, 0), mask)
    # state patch: a random sub-box of the body's bounding box, clipped to the body
    bb = tw._int_box(_shape_bounds(body, cx, cy, r, flip), size)
    bw, bh = bb[2] - bb[0], bb[3] - bb[1]
    sw = max(6, int(round(bw * rng.uniform(*STATE_FRACTION))))
    sh = max(6, int(round(bh * rng.uniform(*STATE_FRACTION))))
    mask_arr = np.asarray(mask) > 0
    for _ in range(20):  # a patch that lies mostly on the body
        sx = bb[0] + int(rng.integers(0, max(1, bw - sw + 1)))
        sy = bb[1] + int(rng.integers(0, max(1, bh - sh + 1)))
        if mask_arr[sy:sy + sh, sx:sx + sw].mean() >= 0.6:
            break
    else:
        sx, sy = bb[0] + (bw - sw) // 2, bb[1] + (bh - sh) // 2
    tile = _state_texture(state, base, sw, sh, rng)
    patch_mask = mask.crop((sx, sy, sx + sw, sy + sh))
    img.paste(Image.fromarray(tile), (sx, sy), patch_mask)
    pm = np.asarray(patch_mask) > 0
    ys, xs = np.nonzero(pm)
    state_box = (sx + int(xs.min()), sy + int(ys.min()), sx + int(xs.max()) + 1, sy + int(ys.max()) + 1)
    # details on top (handle, lid, neck, cap, sleeves, sole, seam)
    for kind, p, factor, width in details:
        rgb = tuple(int(c * factor) for c in base)
        pts = _poly(p, cx, cy, r, flip)
        if kind == "poly":
            dr.polygon(pts, fill=rgb)
        elif kind == "line":
            dr.line(pts, fill=rgb, width=max(1, int(round(width * r / 30))))
        elif kind == "ellipse":
            (x0, y0), (x1, y1) = pts
            dr.ellipse([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)], fill=rgb)
        elif kind == "ring":
            (x0, y0), (x1, y1) = pts
            box = [min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)]
            dr.ellipse(box, outline=rgb, width=max(2, int(round(width * r))))
    shapes = body + [(k, p) for k, p, *_ in details]
    bbox = tw._int_box(_shape_bounds(shapes, cx, cy, r, flip), size)
    part_box = _unit_box_to_px(part, cx, cy, r, flip, size)  # may pass the bbox by 1 px (as trained)
    return Item(state=state, obj=obj, colour=colour, bbox=bbox, state_box=state_box, part_box=part_box)


def render_scene(pairs, rng: np.random.Generator, size: int = IMAGE_SIZE, side=SINGLE_SIZE,
                 n_clutter: tuple[int, int] = (3, 6)) -> ComposeScene:
    """Objects of the given (state, object) pairs (the first is the labelled one) among clutter.

    Objects never overlap each other and lie inside the image; clutter avoids them.
    """
    bg = np.array(tw.BACKGROUND_RGB[rng.integers(len(tw.BACKGROUND_RGB))]) + rng.integers(-10, 11, 3)
    grad = np.linspace(1.04, 0.94, size)[:, None, None]
    arr = np.clip(bg[None, None, :] * grad + np.zeros((size, size, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr)
    placed, plan = [], []
    for _attempt in range(100):
        placed, plan = [], []
        for st, ob in pairs:
            for _ in range(50):
                s = float(rng.uniform(*side))
                half = s / 2 + 2
                cx, cy = float(rng.uniform(half, size - half)), float(rng.uniform(half, size - half))
                box = (cx - half, cy - half, cx + half, cy + half)
                if not any(tw._overlap(box, b, pad=2) for b in placed):
                    break
            else:
                break
            placed.append(box)
            flip = int(rng.choice([-1, 1]))
            colour = list(OBJECT_RGB)[rng.integers(len(OBJECT_RGB))]
            plan.append((st, ob, cx, cy, s, flip, colour))
        if len(plan) == len(pairs):
            break
    else:
        raise RuntimeError("could not place the objects; lower the size")
    clutter = []
    for _ in range(int(rng.integers(n_clutter[0], n_clutter[1] + 1))):
        kind = tw.CLUTTER_KINDS[rng.integers(len(tw.CLUTTER_KINDS))]
        colour = list(tw.CLUTTER_RGB[kind])[rng.integers(len(tw.CLUTTER_RGB[kind]))]
        for _ in range(30):
            s = float(rng.uniform(6, 12))
            cx, cy = float(rng.uniform(0, size)), float(rng.uniform(0, size))
            cbox = (cx - s, cy - s, cx + s, cy + s)
            if not any(tw._overlap(cbox, b) for b in placed):
                break
        else:
            continue
        b = tw._draw_clutter(img, kind, colour, cx, cy, s, rng)
        placed.append(cbox)
        clutter.append(tw.Clutter(kind=kind, colour=colour, box=tw._int_box(b, size)))
    items = [draw_item(img, st, ob, cx, cy, s, flip, colour, rng) for st, ob, cx, cy, s, flip, colour in plan]
    return ComposeScene(image=img, items=items, clutter=clutter)


def distractor_pair(true_pair, seen, rng: np.random.Generator) -> tuple[str, str]:
    """A seen pair that shares neither the state nor the object of ``true_pair``."""
    cands = [p for p in seen if p[0] != true_pair[0] and p[1] != true_pair[1]]
    return cands[rng.integers(len(cands))]


def render_example(pair, setting: str, split: PairSplit, rng: np.random.Generator) -> ComposeScene:
    """One evaluation image of ``pair`` in a setting (``single`` or ``distractors``)."""
    if setting == "single":
        return render_scene([pair], rng, side=SINGLE_SIZE)
    if setting == "distractors":
        return render_scene([pair, distractor_pair(pair, split.seen, rng)], rng, side=DISTRACTOR_SIZE)
    raise ValueError(f"setting must be one of {SETTINGS}, not {setting!r}")


def example_rng(seed: int, setting: str, pair_index: int, i: int) -> np.random.Generator:
    """The generator of image ``i`` of closed-world pair ``pair_index`` (what the files hold)."""
    return np.random.default_rng([seed, 77, SETTINGS.index(setting), pair_index, i])


# --------------------------------------------------------------------------------------------
# Captions of training views
# --------------------------------------------------------------------------------------------


def caption_view(scene: ComposeScene, view, rng: np.random.Generator, nonce: str | None = None,
                 p_dclip: float = 0.15, min_inside: float = 0.6) -> str:
    """A caption of what ``view`` (x0, y0, x1, y1) shows: objects whole or in part, states, clutter.

    * an object whose box is >= 85% inside: "a striped cup", "a photo of a striped cup",
      "a cup with thin horizontal lines", "a striped cup with a curved handle";
    * else, its state patch >= ``min_inside`` inside: "part of a striped cup" (when >= 40% of
      the object is in view), "a close-up of thin horizontal lines", "a striped surface",
      "something striped";
    * else its part (handle, sole...) inside: "part of a cup", "a curved handle";
    * with probability ``p_dclip`` the DCLIP form of one visible descriptor behind a made-up
      name ("tovrin, which has thin horizontal lines").
    """
    phrases, singles = [], []
    for it in scene.items:
        whole = tw._inside_fraction(it.bbox, view)
        st_in = tw._inside_fraction(it.state_box, view) >= min_inside
        part_in = tw._inside_fraction(it.part_box, view) >= min_inside
        sd = STATES[it.state][rng.integers(2)]
        od = OBJECTS[it.obj][1] if part_in else OBJECTS[it.obj][0]
        if whole >= 0.85:
            singles += [sd, OBJECTS[it.obj][0], OBJECTS[it.obj][1]]
            k = rng.integers(5)
            phrases.append((f"a {it.state} {it.obj}", f"a photo of a {it.state} {it.obj}",
                            f"a {it.obj} with {sd}", f"a {it.state} {it.obj} with {od}",
                            f"a {it.obj} that is {it.state}")[k])
        elif st_in:
            singles.append(sd)
            if whole >= 0.4 and rng.random() < 0.5:
                phrases.append(f"part of a {it.state} {it.obj}")
            else:
                k = rng.integers(3)
                phrases.append((f"a close-up of {sd}", f"a {it.state} surface", f"something {it.state}")[k])
        elif part_in:
            singles.append(OBJECTS[it.obj][1])
            phrases.append((f"part of a {it.obj}", OBJECTS[it.obj][1], f"a close-up of {OBJECTS[it.obj][1]}")[rng.integers(3)])
    things = list(dict.fromkeys(c.text for c in scene.clutter if tw._inside_fraction(c.box, view) >= min_inside))
    if singles and nonce is not None and rng.random() < p_dclip:
        return f"{nonce}, {dclip_sentence(singles[rng.integers(len(singles))])}"
    if phrases:
        cap = " and ".join(phrases)
        if things and rng.random() < 0.4:
            cap += f", next to {things[rng.integers(len(things))]}"
        return cap
    if things:
        pick = [things[i] for i in rng.permutation(len(things))[:3]]
        return tw._join(pick)
    return "an empty background"


# --------------------------------------------------------------------------------------------
# Writing a world
# --------------------------------------------------------------------------------------------


def _lines(path: Path, rows) -> None:
    path.write_text("".join(f"{r}\n" for r in rows))


def make_compose_world(out_dir, n_per_pair: int = 10, seed: int = 0, setting: str = "single",
                       split_seed: int = 0) -> dict:
    """Write a compositional world to ``out_dir``; returns its description (also ``world.json``).

    Args:
        out_dir: output folder (created).
        n_per_pair: images per closed-world pair (seen and unseen).
        seed: image seed; the pair split does not depend on it.
        setting: ``single`` (one object among clutter) or ``distractors`` (plus an object of a
            seen pair sharing neither its state nor its object).
        split_seed: which pairs are seen/unseen/open-only. ``toy-compose`` was trained on the
            seen pairs of ``split_seed=0``.
    """
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, not {setting!r}")
    split = make_pair_split(split_seed)
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    closed = list(split.closed)
    rows = []
    for pi, (st, ob) in enumerate(closed):
        d = out / "images" / pair_folder(st, ob)
        d.mkdir(parents=True, exist_ok=True)
        for i in range(n_per_pair):
            scene = render_example((st, ob), setting, split, example_rng(seed, setting, pi, i))
            rel = f"images/{pair_folder(st, ob)}/{i:04d}.png"
            (out / rel).write_bytes(tw._png_bytes(scene.image))
            it = scene.items[0]
            base = {"image": rel, "pair": it.pair, "state": st, "object": ob}
            rows.append({**base, "kind": "state", "text": STATES[st][0], "box": list(it.state_box)})
            rows.append({**base, "kind": "object", "text": OBJECTS[ob][0], "box": list(it.bbox)})
            pb, bb = it.part_box, it.bbox  # clipped to the object's box in the file
            part = [max(pb[0], bb[0]), max(pb[1], bb[1]), min(pb[2], bb[2]), min(pb[3], bb[3])]
            rows.append({**base, "kind": "object_part", "text": OBJECTS[ob][1], "box": part})
    _lines(out / "states.txt", STATE_NAMES)
    _lines(out / "objects.txt", OBJECT_NAMES)
    _lines(out / "pairs.txt", [pair_name(*p) for p in closed])
    _lines(out / "pairs_open.txt", [pair_name(*p) for p in all_pairs()])
    _lines(out / "seen_pairs.txt", [pair_name(*p) for p in split.seen])
    _lines(out / "unseen_pairs.txt", [pair_name(*p) for p in split.unseen])
    (out / "attributes_states.json").write_text(json.dumps(state_attributes(), indent=1) + "\n")
    (out / "attributes_objects.json").write_text(json.dumps(object_attributes(), indent=1) + "\n")
    (out / "attributes_pairs.json").write_text(json.dumps(pair_attributes(), indent=1) + "\n")
    _lines(out / "concepts.txt", concept_bank())
    with open(out / "boxes.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")
    world = {
        "generator": "pipeline.toy.compose_world",
        "seed": seed,
        "split_seed": split_seed,
        "setting": setting,
        "n_per_pair": n_per_pair,
        "image_size": IMAGE_SIZE,
        "states": list(STATE_NAMES),
        "objects": list(OBJECT_NAMES),
        "fine_states": list(FINE_STATES),
        "seen_pairs": [pair_name(*p) for p in split.seen],
        "unseen_pairs": [pair_name(*p) for p in split.unseen],
        "open_only_pairs": [pair_name(*p) for p in split.open_only],
        "object_side_px": {"single": SINGLE_SIZE, "distractors": DISTRACTOR_SIZE, "train": TRAIN_SIZE},
        "boxes": "boxes.jsonl: per image, kind state|object|object_part, box [x0, y0, x1, y1] (x1/y1 exclusive)",
    }
    (out / "world.json").write_text(json.dumps(world, indent=1) + "\n")
    return world
