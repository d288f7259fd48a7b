"""Dense, training-free patch features of an open_clip ViT from one forward pass.

Plain CLIP patch tokens of the last block localise poorly: the last block's attention mixes
every token with the global context and the residual path carries it on. The training-free
fixes change only one attention block (``block``, the last by default) of the frozen ViT.
Let ``x`` be the token sequence entering that block, ``q, k, v`` the per-head projections of
``ln_1(x)`` (``attn.in_proj_weight``/``in_proj_bias`` split in three) and ``d`` the head width.
Each variant yields new tokens ``o``; the features are ``ln_post(o) @ visual.proj`` without the
class token, L2-normalised, in the joint image-text space (compare them with text embeddings
by a dot product):

==============  ======================================================  ===================
variant         attention in the block                                  residual and MLP
==============  ======================================================  ===================
``plain``       ``softmax(q kᵀ/√d) v`` (the block as trained)            kept, later blocks run
``maskclip``    identity, ``o = out_proj(v)`` (Zhou et al., 2022)        dropped
``clearclip``   ``softmax(q qᵀ/√d) v`` (Lan et al., 2024)                dropped
``sclip``       ``(softmax(q qᵀ/√d) + softmax(k kᵀ/√d)) v`` (SCLIP-like)  dropped
``layers``      tokens *leaving* the blocks in ``layers`` (MSCI's idea), each ``ln_post`` + ``proj``,
                averaged over the chosen blocks and re-normalised
==============  ======================================================  ===================

For ``plain`` with ``block=-1`` the tokens equal open_clip's own ``output_tokens`` path
(``visual.output_tokens = True``; ``tokens @ visual.proj``). For the modified variants the
blocks after ``block`` are not run (so ``block=-2`` is "SCLIP at the second-to-last block").

Resolution: pass pixels larger than the model's ``image_size`` (a multiple of the patch
size) and the positional table is resized to the finer grid (bicubic over the 2-D grid, the
class token's entry kept), the usual way to get more, smaller patches without training.

Works with any open_clip ``VisionTransformer`` tower (``ViT-B-32``, the project's
``zsl-tiny``) on CPU or CUDA, in the model's dtype; pass a :class:`pipeline.models.LoadedModel`
or a bare open_clip model.

>>> import torch
>>> from pipeline.models import load_model
>>> lm = load_model("zsl-tiny", "random:0", device="cpu")
>>> f = dense_features(lm, torch.zeros(2, 3, 64, 64), variant="sclip")
>>> tuple(f.tokens.shape), f.grid, round(float(f.tokens.norm(dim=-1).mean()), 4)
((2, 64, 128), (8, 8), 1.0)
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

VARIANTS = ("plain", "maskclip", "clearclip", "sclip", "layers")

__all__ = ["VARIANTS", "DenseFeatures", "check_specs", "dense_feature_sets", "dense_features", "dense_tokens", "resize_pos_embed"]


@dataclass
class DenseFeatures:
    """Result of :func:`dense_features`.

    tokens : (B, L, D) float32, L2-normalised patch features in the joint space (row-major grid)
    pooled : (B, D) float32, L2-normalised image embedding of the *unmodified* model from the same
        pass (equal to ``encode_image(pixels, normalize=True)`` at the model's own resolution)
    grid : (gh, gw), the patch grid (L = gh·gw)
    """

    tokens: torch.Tensor
    pooled: torch.Tensor
    grid: tuple[int, int]


def _visual(model):
    m = getattr(model, "model", model)  # LoadedModel or a bare open_clip model
    visual = getattr(m, "visual", m)
    needed = ("conv1", "class_embedding", "positional_embedding", "ln_pre", "transformer", "ln_post")
    if not all(hasattr(visual, n) for n in needed):
        raise NotImplementedError(
            f"dense features need an open_clip VisionTransformer tower; {type(visual).__name__} is not one "
            "(timm, ResNet and attention-pooled towers are not supported)."
        )
    if getattr(visual, "attn_pool", None) is not None or getattr(visual, "final_ln_after_pool", False):
        raise NotImplementedError("attention-pooled / final-LN-after-pool towers are not supported.")
    return visual


def resize_pos_embed(pos: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Positional table (1 + g·g, C) resized to ``grid`` = (gh, gw): bicubic over the 2-D grid,
    the class-token row kept. Returned unchanged when it already has that size."""
    n = pos.shape[0] - 1
    g0 = int(round(math.sqrt(n)))
    if g0 * g0 != n:
        raise ValueError(f"positional table of {n} patch rows is not a square grid")
    if tuple(grid) == (g0, g0):
        return pos
    cls, patch = pos[:1], pos[1:]
    patch = patch.reshape(1, g0, g0, -1).permute(0, 3, 1, 2).float()
    patch = F.interpolate(patch, size=tuple(grid), mode="bicubic", align_corners=False)
    patch = patch.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([cls, patch])


def _embed(visual, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """open_clip's ``VisionTransformer._embeds`` with the positional table resized to the grid."""
    x = visual.conv1(x)
    gh, gw = x.shape[-2:]
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).reshape(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1)
    x = x + resize_pos_embed(visual.positional_embedding, (gh, gw)).to(x.dtype)
    x = visual.patch_dropout(x)
    return visual.ln_pre(x), (int(gh), int(gw))


def _heads(t: torch.Tensor, n_head: int) -> torch.Tensor:
    b, n, c = t.shape
    return t.reshape(b, n, n_head, c // n_head).transpose(1, 2)  # (B, H, N, hd)


def _modified_block(block, x: torch.Tensor, variant: str) -> torch.Tensor:
    """The attention branch of ``block`` with a training-free attention, no residual, no MLP."""
    attn = block.attn
    if not getattr(attn, "batch_first", True):  # open_clip 3.x blocks are batch-first
        raise NotImplementedError("sequence-first attention blocks are not supported")
    h = block.ln_1(x)
    q, k, v = F.linear(h, attn.in_proj_weight, attn.in_proj_bias).chunk(3, dim=-1)
    n_head = attn.num_heads
    if variant == "maskclip":
        o = v
    else:
        q, k, vh = (_heads(t, n_head) for t in (q, k, v))
        if variant == "clearclip":
            o = F.scaled_dot_product_attention(q, q, vh)
        elif variant == "sclip":
            o = F.scaled_dot_product_attention(q, q, vh) + F.scaled_dot_product_attention(k, k, vh)
        else:  # pragma: no cover - checked by the caller
            raise ValueError(variant)
        o = o.transpose(1, 2).reshape(x.shape)
    o = attn.out_proj(o)
    return block.ls_1(o)


def _project(visual, t: torch.Tensor) -> torch.Tensor:
    t = visual.ln_post(t)
    if visual.proj is not None:
        t = t @ visual.proj
    return t


def _block_index(i: int, n: int, what: str) -> int:
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        raise ValueError(f"{what} {i} is out of range for a tower of {n} blocks")
    return j


def dense_features(
    model,
    pixels: torch.Tensor,
    *,
    variant: str = "sclip",
    block: int = -1,
    layers: Sequence[int] | None = None,
) -> DenseFeatures:
    """Patch features in the joint space from one forward pass (see the module doc for the math).

    Parameters
    ----------
    model : LoadedModel or open_clip model with a ``VisionTransformer`` tower
    pixels : (B, 3, H, W) preprocessed images; H, W multiples of the patch size (larger than the
        model's image size gives a finer grid with a resized positional table)
    variant : one of :data:`VARIANTS`
    block : the block whose attention is modified (``maskclip``, ``clearclip``, ``sclip``) or whose
        output is read (``plain``); negative counts from the end
    layers : for ``variant="layers"``, the blocks whose output tokens are averaged (default: the
        second-to-last block)

    Returns :class:`DenseFeatures` with float32 tensors on the model's device.
    """
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}; use one of {', '.join(VARIANTS)}")
    visual = _visual(model)
    blocks = visual.transformer.resblocks
    n = len(blocks)
    param = next(visual.parameters())
    x = pixels.to(param.device, param.dtype)
    if variant == "layers":
        read = sorted({_block_index(i, n, "layer") for i in (layers if layers is not None else (-2,))})
        stop = n - 1
    else:
        read = []
        stop = _block_index(block, n, "block")
    with torch.inference_mode():
        h, grid = _embed(visual, x)
        collected = []
        dense = None
        for i, blk in enumerate(blocks):
            if i == stop and variant in ("maskclip", "clearclip", "sclip"):
                dense = _modified_block(blk, h, variant)
            h = blk(h)
            if i in read:
                collected.append(F.normalize(_project(visual, h[:, 1:]).float(), dim=-1))
            if variant == "plain" and i == stop:
                dense = h
        pooled = F.normalize(_project(visual, h[:, :1])[:, 0].float(), dim=-1)
        if variant == "layers":
            tokens = F.normalize(torch.stack(collected).mean(0), dim=-1)
        else:
            tokens = F.normalize(_project(visual, dense[:, 1:]).float(), dim=-1)
    return DenseFeatures(tokens=tokens, pooled=pooled, grid=grid)


def check_specs(model, specs: Sequence[dict]) -> None:
    """Raise ValueError / NotImplementedError (one line) unless every spec fits this model's tower."""
    n = len(_visual(model).transformer.resblocks)
    for sp in specs:
        v = sp.get("variant", "sclip")
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; use one of {', '.join(VARIANTS)}")
        for i in (sp.get("layers") or (-2,)) if v == "layers" else (sp.get("block", -1),):
            _block_index(int(i), n, "layer")


def dense_tokens(model, pixels: torch.Tensor, variant: str = "sclip", **kw) -> torch.Tensor:
    """Only the (B, L, D) normalised tokens of :func:`dense_features`."""
    return dense_features(model, pixels, variant=variant, **kw).tokens


def dense_feature_sets(model, pixels: torch.Tensor, specs: Sequence[dict]) -> tuple[list[torch.Tensor], torch.Tensor, tuple[int, int]]:
    """Several token sets from ONE forward pass: ``specs`` are keyword dicts of
    :func:`dense_features` (``variant``, ``block``, ``layers``), e.g.
    ``[{"variant": "sclip", "block": -1}, {"variant": "sclip", "block": -2}]``.

    Returns (list of (B, L, D) normalised token tensors in ``specs`` order, pooled (B, D), grid);
    each equals what :func:`dense_features` gives for that spec alone.
    """
    visual = _visual(model)
    blocks = visual.transformer.resblocks
    n = len(blocks)
    plans = []
    for sp in specs:
        v = sp.get("variant", "sclip")
        if v not in VARIANTS:
            raise ValueError(f"unknown variant {v!r}; use one of {', '.join(VARIANTS)}")
        if v == "layers":
            read = sorted({_block_index(i, n, "layer") for i in (sp.get("layers") or (-2,))})
        else:
            read = [_block_index(sp.get("block", -1), n, "block")]
        plans.append((v, read))
    param = next(visual.parameters())
    with torch.inference_mode():
        h, grid = _embed(visual, pixels.to(param.device, param.dtype))
        got: list[list] = [[] for _ in specs]
        for i, blk in enumerate(blocks):
            for k, (v, read) in enumerate(plans):
                if v in ("maskclip", "clearclip", "sclip") and i == read[0]:
                    got[k].append(_project(visual, _modified_block(blk, h, v)[:, 1:]))
            h = blk(h)
            for k, (v, read) in enumerate(plans):
                if v in ("plain", "layers") and i in read:
                    got[k].append(F.normalize(_project(visual, h[:, 1:]).float(), dim=-1))
        pooled = F.normalize(_project(visual, h[:, :1])[:, 0].float(), dim=-1)
        out = []
        for (v, _), g in zip(plans, got):
            t = torch.stack(g).mean(0) if v == "layers" else g[0]
            out.append(F.normalize(t.float(), dim=-1))
    return out, pooled, grid
