"""pipeline.dense_features against open_clip's own token path and a hand-written last block."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.dense import VARIANTS, dense_feature_sets, dense_features, resize_pos_embed
from pipeline.models import load_model


@pytest.fixture(scope="module")
def tiny():
    return load_model("zsl-tiny", "random:3", device="cpu")


@pytest.fixture(scope="module")
def pixels():
    return torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))


def _open_clip_tokens(lm, x):
    """open_clip's documented path: output_tokens=True, tokens @ proj (ecosystem-notes §1)."""
    v = lm.model.visual
    v.output_tokens = True
    try:
        with torch.no_grad():
            pooled, tokens = v(x)
    finally:
        v.output_tokens = False
    return torch.nn.functional.normalize(pooled, dim=-1), torch.nn.functional.normalize(tokens @ v.proj, dim=-1)


@pytest.mark.parametrize("name,pretrained", [("zsl-tiny", "toy-clip"), ("ViT-B-32", "random:0")])
def test_shapes_and_plain_equals_output_tokens(name, pretrained):
    lm = load_model(name, pretrained, device="cpu")
    s = lm.image_size
    x = torch.randn(2, 3, s, s, generator=torch.Generator().manual_seed(1))
    ps = lm.model.visual.patch_size
    g = s // int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    pooled, ref = _open_clip_tokens(lm, x)
    f = dense_features(lm, x, variant="plain")
    assert f.grid == (g, g)
    assert torch.allclose(f.tokens, ref, atol=1e-6)
    assert torch.allclose(f.pooled, pooled, atol=1e-6)
    assert torch.allclose(f.pooled, lm.encode_images(x), atol=1e-6)
    for v in VARIANTS:
        t = dense_features(lm, x, variant=v).tokens
        assert t.shape == (2, g * g, lm.embed_dim)
        assert torch.allclose(t.norm(dim=-1), torch.ones(2, g * g), atol=1e-5)


def _ln(x, mod):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + mod.eps) * mod.weight.detach().double().numpy() + mod.bias.detach().double().numpy()


def _softmax(z):
    z = z - z.max(-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(-1, keepdims=True)


@pytest.mark.parametrize("variant", ["maskclip", "clearclip", "sclip"])
def test_modified_last_block_by_hand(tiny, pixels, variant):
    """The last block recomputed in float64 numpy, head by head, from the module doc's formulas."""
    visual = tiny.model.visual
    # tokens entering the last block, from open_clip's own forward_intermediates (block -2's output)
    with torch.no_grad():
        inter = visual.forward_intermediates(pixels, indices=[len(visual.transformer.resblocks) - 2],
                                             output_fmt="NLC", output_extra_tokens=True, intermediates_only=True)
    x = torch.cat([inter["image_intermediates_prefix"][0], inter["image_intermediates"][0]], 1).double().numpy()
    blk = visual.transformer.resblocks[-1]
    W = blk.attn.in_proj_weight.detach().double().numpy()
    b = blk.attn.in_proj_bias.detach().double().numpy()
    Wo = blk.attn.out_proj.weight.detach().double().numpy()
    bo = blk.attn.out_proj.bias.detach().double().numpy()
    H = blk.attn.num_heads
    C = x.shape[-1]
    d = C // H
    h = _ln(x, blk.ln_1)
    out = np.zeros_like(x)
    for bi in range(x.shape[0]):
        q = h[bi] @ W[:C].T + b[:C]
        k = h[bi] @ W[C : 2 * C].T + b[C : 2 * C]
        v = h[bi] @ W[2 * C :].T + b[2 * C :]
        heads = []
        for hh in range(H):
            sl = slice(hh * d, (hh + 1) * d)
            qh, kh, vh = q[:, sl], k[:, sl], v[:, sl]
            if variant == "maskclip":
                heads.append(vh)
            elif variant == "clearclip":
                heads.append(_softmax(qh @ qh.T / math.sqrt(d)) @ vh)
            else:
                heads.append((_softmax(qh @ qh.T / math.sqrt(d)) + _softmax(kh @ kh.T / math.sqrt(d))) @ vh)
        out[bi] = np.concatenate(heads, 1) @ Wo.T + bo
    feats = _ln(out, visual.ln_post) @ visual.proj.detach().double().numpy()
    feats = feats[:, 1:] / np.linalg.norm(feats[:, 1:], axis=-1, keepdims=True)
    got = dense_features(tiny, pixels, variant=variant).tokens.double().numpy()
    np.testing.assert_allclose(got, feats, atol=2e-5)


def test_layers_are_forward_intermediates_projected(tiny, pixels):
    visual = tiny.model.visual
    with torch.no_grad():
        inter = visual.forward_intermediates(pixels, indices=[1, 2], normalize_intermediates=True, output_fmt="NLC",
                                             intermediates_only=True)["image_intermediates"]
    want = torch.stack([torch.nn.functional.normalize(t @ visual.proj, dim=-1) for t in inter]).mean(0)
    want = torch.nn.functional.normalize(want, dim=-1)
    got = dense_features(tiny, pixels, variant="layers", layers=(1, 2)).tokens
    assert torch.allclose(got, want, atol=1e-6)
    # plain at an earlier block is that block's output projected
    one = dense_features(tiny, pixels, variant="plain", block=1).tokens
    assert torch.allclose(one, torch.nn.functional.normalize(inter[0] @ visual.proj, dim=-1), atol=1e-6)


def test_sets_from_one_pass_equal_single_calls(tiny, pixels):
    specs = [dict(variant="sclip"), dict(variant="sclip", block=-2), dict(variant="maskclip", block=0),
             dict(variant="clearclip"), dict(variant="plain"), dict(variant="layers", layers=(0, 3))]
    toks, pooled, grid = dense_feature_sets(tiny, pixels, specs)
    for sp, t in zip(specs, toks):
        assert torch.allclose(t, dense_features(tiny, pixels, **sp).tokens, atol=1e-6), sp
    assert torch.allclose(pooled, tiny.encode_images(pixels), atol=1e-6)


def test_finer_grid_resizes_position_table(tiny):
    pos = tiny.model.visual.positional_embedding.detach()
    assert resize_pos_embed(pos, (8, 8)) is pos
    big = resize_pos_embed(pos, (16, 16))
    assert big.shape == (257, pos.shape[1])
    assert torch.equal(big[0], pos[0])
    f = dense_features(tiny, torch.randn(1, 3, 128, 128), variant="sclip")
    assert f.grid == (16, 16) and f.tokens.shape == (1, 256, tiny.embed_dim)


def test_bad_arguments(tiny, pixels):
    with pytest.raises(ValueError, match="unknown variant"):
        dense_features(tiny, pixels, variant="gem")
    with pytest.raises(ValueError, match="out of range"):
        dense_features(tiny, pixels, variant="sclip", block=9)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(pixels):
    cpu = load_model("zsl-tiny", "random:3", device="cpu")
    gpu = load_model("zsl-tiny", "random:3", device="cuda", precision="fp32")
    for v in VARIANTS:
        a = dense_features(cpu, pixels, variant=v).tokens
        b = dense_features(gpu, pixels, variant=v).tokens.cpu()
        assert torch.allclose(a, b, atol=1e-4), v
