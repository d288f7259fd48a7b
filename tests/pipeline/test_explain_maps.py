"""pipeline.explain_maps: scorers, occlusion (exact against re-encoding everything), Grad-CAM."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.explain.maps import (
    GlobalScorer,
    LazslScorer,
    crop_attribute_sims,
    gradcam_map,
    occlusion_maps,
    plan_maps,
    to_model_input,
)
from pipeline.models import load_model
from queries.occlusion import occlusion_map, sliding_windows
from queries.baselines import dclip_scores


@pytest.fixture(scope="module")
def world():
    lm = load_model("zsl-tiny", "toy-clip", device="cpu")
    rng = np.random.default_rng(0)
    arr = (rng.random((96, 96, 3)) * 255).astype(np.uint8)
    arr[20:50, 30:70] = (215, 35, 35)
    boxes = np.array([[0, 0, 36, 36], [30, 20, 96, 86], [10, 30, 80, 96]], float)
    attr = lm.encode_texts(["vorlik, which has a red crest", "vorlik, which has plain wings",
                            "tessan, which has a blue crest", "tessan, which has striped wings"])
    return lm, arr, boxes, attr, np.array([0, 0, 1, 1])


def test_torch_crops_match_pil_preprocess(world):
    lm, arr, boxes, attr, cls = world
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    emb = LazslScorer(lm, attr, cls, boxes).encode(x[None])[0]
    im = Image.fromarray(arr)
    ref = lm.encode_images(torch.stack([lm.preprocess(im)] + [lm.preprocess(im.crop(tuple(int(v) for v in b)))
                                                              for b in boxes])).numpy()
    cos = (emb * ref).sum(1)
    assert cos.min() > 0.98  # same boxes, same resize (torch vs PIL bicubic)


def test_global_scorer_is_dclip_softmax(world):
    lm, arr, boxes, attr, cls = world
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float()[None] / 255
    p = GlobalScorer(lm, attr, cls, 2)(x).numpy()
    feats = lm.encode_images(to_model_input(x, lm.image_size)).numpy()
    s = dclip_scores(feats, attr, cls, 2) * float(lm.model.logit_scale.exp().item())
    want = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
    np.testing.assert_allclose(p, want, rtol=1e-5)


def test_occlusion_is_exact(world):
    """Re-encoding only the views that meet a window gives what re-encoding every view gives."""
    lm, arr, boxes, attr, cls = world
    x = torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255
    base = torch.zeros_like(x)
    sc = LazslScorer(lm, attr, cls, boxes)
    cm, am, passes = occlusion_maps(sc, x, base, 0, window=40, stride=28, target="score")
    wins = sliding_windows(96, 96, window=40, stride=28)
    s0 = float(np.asarray(sc.scores(sc.encode(x[None]), candidates=np.array([[0]])).scores)[0, 0])
    scores = []
    for x0, y0, x1, y1 in wins.astype(int):
        occ = x.clone()
        occ[:, y0:y1, x0:x1] = 0
        scores.append(float(np.asarray(sc.scores(sc.encode(occ[None]), candidates=np.array([[0]])).scores)[0, 0]))
    np.testing.assert_allclose(cm, occlusion_map(s0, np.array(scores), wins, 96, 96), atol=1e-5)
    assert passes < len(wins) * (1 + len(boxes)) + 1 + len(boxes)  # the small crop misses some windows
    assert am.shape == (2, 96, 96)
    # the attribute contributions' drops add up to the class score's drop
    np.testing.assert_allclose(am.sum(0), cm, atol=1e-5)
    # the probability target: drop of the softmax over both classes at the model's scale
    pm, _, _ = occlusion_maps(sc, x, base, 0, window=40, stride=28)

    def prob(img):
        s = np.asarray(sc.scores(sc.encode(img[None]), return_plan=False).scores, np.float64)[0] * sc.scale
        return np.exp(s[0] - s.max()) / np.exp(s - s.max()).sum()
    probs = []
    for x0, y0, x1, y1 in wins.astype(int):
        occ = x.clone()
        occ[:, y0:y1, x0:x1] = 0
        probs.append(prob(occ))
    np.testing.assert_allclose(pm, occlusion_map(prob(x), np.array(probs), wins, 96, 96), atol=1e-5)


def test_gradcam_and_plan_maps(world):
    pytest.importorskip("pytorch_grad_cam")  # the [explain] extra
    lm, arr, boxes, attr, cls = world
    px = lm.preprocess(Image.fromarray(arr))[None]
    g0 = gradcam_map(lm, px, attr, 0, (96, 96))
    g1 = gradcam_map(lm, px, attr, 3, (96, 96))
    assert g0.shape == (96, 96) and g0.min() >= 0 and g0.max() <= 1 + 1e-6
    assert not np.allclose(g0, g1)
    im = Image.fromarray(arr)
    crops = torch.stack([lm.preprocess(im.crop(tuple(int(v) for v in b))) for b in boxes])
    sims, grid = crop_attribute_sims(lm, crops, attr[:2])
    assert sims.shape == (2, 3, 64, 2) and grid == (8, 8)
    plan = np.full((3, 2), 1 / 6)
    fused = np.full((3, 2), 0.3)
    m = plan_maps(boxes, plan, fused, sims, grid, 96, 96, tau=0.05)
    np.testing.assert_allclose(m.attribute_maps.sum((1, 2)), [0.5, 0.5], rtol=1e-9)
    assert m.class_map.sum() == pytest.approx(0.3, rel=1e-9)
