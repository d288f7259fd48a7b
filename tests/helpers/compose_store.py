"""A small store of (state, object) pairs: the compositional toy world (one image per closed-world
pair), the shipped ``toy-compose`` model, a few crops, built with the stage functions."""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path


@dataclass
class ComposeStore:
    world: Path
    store: Path


@lru_cache(maxsize=None)
def toy_compose():
    from pipeline.models import load_model

    return load_model(None, "toy-compose", device="cpu")


def build_compose_store(root: Path, *, n_per_pair: int = 1, seed: int = 5, n_crops: int = 8, crop_min: float = 0.4,
                        open_world: bool = True) -> ComposeStore:
    from pipeline.config import RegionConfig
    from pipeline.stages.compositional import build_compositional, read_vocabulary
    from pipeline.stages.index_images import index_images
    from pipeline.toy.compose_world import make_compose_world
    from stores.catalog import Catalog

    world = root / "world"
    make_compose_world(world, n_per_pair=n_per_pair, seed=seed)
    model = toy_compose()
    with Catalog(root / "store") as cat:
        vocab = read_vocabulary(world / "states.txt", world / "objects.txt", world / "pairs.txt", world / "seen_pairs.txt",
                                open_world=open_world)
        build_compositional(cat, model, vocab, attributes_states=world / "attributes_states.json",
                            attributes_objects=world / "attributes_objects.json", progress=False)
        index_images(cat, model, [str(world / "images")], RegionConfig(n_crops=n_crops, crop_min=crop_min), progress=False,
                     dtype="float32")
    return ComposeStore(world, root / "store")
