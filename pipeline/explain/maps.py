"""Model-facing map makers for one image: what ``explain``/``faithfulness`` stages call.

The math lives in :mod:`queries.plan_maps`, :mod:`queries.occlusion`, :mod:`queries.contrast`;
this module runs the encoder.

* :func:`crop_attribute_sims` + :func:`plan_maps` (the default map, "plan-dense"): re-encode
  the image's stored crops with :func:`pipeline.dense_features.dense_features` (SCLIP-style
  last block, and the same at the second-to-last block), compare each crop's patch tokens
  with the class's attribute embeddings, and place the stored plan's mass inside each crop
  (:func:`queries.plan_maps.plan_density_map`). One forward pass per crop, as at indexing.
* :class:`LazslScorer` / :class:`GlobalScorer`: torch modules that score perturbed versions of
  one image (B, 3, H, W in [0, 1]) — LaZSL re-run on the full view and the crops at the
  stored boxes, or the global DCLIP score — as softmax probabilities over the classes.
  They are the "model" for deletion/insertion/ROAD and for occlusion maps.
* :func:`occlusion_maps`: sliding-window occlusion of the LaZSL class score and of every
  attribute's contribution (only the views that meet the window are re-encoded, so the
  result is exact and about half the cost of re-encoding everything).
* :func:`gradcam_map`: Grad-CAM (the ``grad-cam`` package) on the CLIP image tower for a
  text embedding, with the ViT reshape transform.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from queries.lazsl import lazsl_scores
from queries.occlusion import occlusion_map, sliding_windows
from queries.plan_maps import plan_class_map, plan_density_map, within_region_weights

from ..dense import dense_feature_sets

#: the measured default (docs/explanations.md): SCLIP-style attention in the last block and in
#: the second-to-last block, attribute-contrasted, at the model's temperature
DEFAULT_DENSE = ({"variant": "sclip", "block": -1}, {"variant": "sclip", "block": -2})
MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)


def _lm_parts(model):
    m = getattr(model, "model", model)
    return m, next(m.parameters()).device


def image_size(model) -> int:
    s = getattr(model, "image_size", None) or _lm_parts(model)[0].visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def logit_scale(model) -> float:
    m, _ = _lm_parts(model)
    return float(m.logit_scale.exp().item()) if hasattr(m, "logit_scale") else 100.0


def to_model_input(x: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, h, w) in [0, 1] -> resized (short side, bicubic antialias), centre-cropped, normalised."""
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top : top + size, left : left + size]
    mean = torch.tensor(MEAN, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x - mean) / std


def _crops(x: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
    """(3, H, W) -> (R, 3, size, size): each integer box cut out and prepared like a PIL crop."""
    out = []
    for x0, y0, x1, y1 in np.asarray(boxes).round().astype(int):
        out.append(to_model_input(x[None, :, y0:y1, x0:x1], size))
    return torch.cat(out) if out else x.new_zeros((0, 3, size, size))


def crop_attribute_sims(model, pixels: torch.Tensor, attr_emb, *, dense=DEFAULT_DENSE) -> tuple[np.ndarray, tuple]:
    """Cosines of each crop's dense patch tokens to attributes.

    pixels (R, 3, s, s): the crops as the encoder sees them (e.g. ``model.preprocess(img.crop(b))``
    stacked); attr_emb (N, D). Returns ((V, R, L, N) float32 for the V token sets in ``dense``,
    grid (gh, gw)).
    """
    _, dev = _lm_parts(model)
    A = torch.as_tensor(np.asarray(attr_emb, np.float32), device=dev)
    tokens, _, grid = dense_feature_sets(model, pixels, list(dense))  # one forward pass for every set
    return np.stack([(t @ A.T).cpu().numpy() for t in tokens]), grid


@dataclass
class ImagePlanMaps:
    attribute_maps: np.ndarray  # (N, H, W) mass density per attribute column
    class_map: np.ndarray  # (H, W) contribution density (integrates to Σ T·F)
    within: np.ndarray  # (R, L, N) placement inside each crop


def plan_maps(boxes, plan, fused, sims, grid, height: int, width: int, *, tau: float) -> ImagePlanMaps:
    """The default maps of one (image, class): boxes (R, 4) of the crops with mass, plan and
    fused similarities (R, N), sims (V, R, L, N) from :func:`crop_attribute_sims`."""
    within = within_region_weights(sims, tau=tau, contrast=True)
    pm = plan_density_map(boxes, plan, within, grid, height, width)
    cm = plan_class_map(boxes, plan, fused, within, grid, height, width)
    return ImagePlanMaps(pm.maps, cm, within)


# ---- scorers of perturbed images ----------------------------------------------------------
class GlobalScorer(torch.nn.Module):
    """Softmax over classes of the global DCLIP score (mean cosine to each class's attributes)."""

    def __init__(self, model, attr, attr_class, n_classes: int):
        super().__init__()
        self.lm, dev = _lm_parts(model)
        self.size = image_size(model)
        a = torch.as_tensor(np.asarray(attr, np.float32), device=dev)
        cls = torch.as_tensor(np.asarray(attr_class), device=dev)
        vec = torch.zeros(n_classes, a.shape[1], device=dev).index_add_(0, cls, a)
        self.class_vec = vec / torch.bincount(cls, minlength=n_classes).clamp(min=1)[:, None]
        self.scale = logit_scale(model)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.lm.encode_image(to_model_input(x.to(self.class_vec.device), self.size), normalize=True).float()
        return torch.softmax(self.scale * feats @ self.class_vec.T, -1)


class LazslScorer(torch.nn.Module):
    """Softmax over classes of LaZSL re-run on perturbed images of one image (crops at ``boxes``)."""

    def __init__(self, model, attr, attr_class, boxes, *, theta: float = 0.8, batch: int = 512):
        super().__init__()
        self.lm, self.dev = _lm_parts(model)
        self.size = image_size(model)
        self.attr = np.asarray(attr, np.float32)
        self.attr_class = np.asarray(attr_class)
        self.boxes = np.asarray(boxes)
        self.theta, self.batch = theta, batch
        self.scale = logit_scale(model)

    def encode(self, x: torch.Tensor) -> np.ndarray:
        """(B, 3, H, W) -> (B, 1 + R, D) embeddings of the full view and the crops."""
        views = torch.cat([torch.cat([to_model_input(xi[None], self.size), _crops(xi, self.boxes, self.size)]) for xi in x])
        with torch.no_grad():
            f = torch.cat([self.lm.encode_image(views[i : i + self.batch].to(self.dev), normalize=True).float()
                           for i in range(0, len(views), self.batch)])
        return f.cpu().numpy().reshape(len(x), 1 + len(self.boxes), -1)

    def scores(self, emb: np.ndarray, **kw):
        return lazsl_scores(emb[:, 0], emb[:, 1:], self.attr, self.attr_class, theta=self.theta, **kw)

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        res = self.scores(self.encode(x), return_plan=False)
        return torch.softmax(self.scale * torch.as_tensor(np.asarray(res.scores)), -1)


def occlusion_maps(scorer: LazslScorer, image: torch.Tensor, baseline: torch.Tensor, class_index: int, *,
                   window: int = 16, stride: int = 8, chunk: int = 32, target: str = "probability"):
    """Sliding-window occlusion of one class's LaZSL output and of its attributes' contributions.

    image, baseline (3, H, W) in [0, 1]. The class map is the drop of the class's softmax
    probability over all classes (``target="probability"``, the quantity deletion/insertion
    measure) or of its raw LaZSL score (``target="score"``); attribute maps are the drops of
    each attribute's contribution Σ_r T[r,a]·F[r,a]. Returns (class map (H, W), attribute maps
    (N, H, W), number of encoder passes). Only the full view and the crops that meet a window
    are re-encoded, so the maps equal those from re-encoding every view.
    """
    if target not in ("probability", "score"):
        raise ValueError("target must be 'probability' or 'score'")
    H, W = image.shape[-2:]
    wins = sliding_windows(H, W, window=window, stride=stride)
    base_emb = scorer.encode(image[None])[0]
    cand = np.array([[class_index]])

    def contribs(emb):
        r = scorer.scores(emb, candidates=np.repeat(cand, len(emb), 0))
        T = np.asarray(r.plan)[:, 0]
        cols = np.asarray(r.attr_index)[:, 0]
        # fused similarity F = (1-θ) g + θ S per plan column
        A = scorer.attr[cols]  # (B, N, D)
        S = np.einsum("brd,bnd->brn", emb[:, 1:], A)
        g = np.einsum("bd,bnd->bn", emb[:, 0], A)
        Fm = (1 - scorer.theta) * g[:, None] + scorer.theta * S
        if target == "probability":
            allc = np.asarray(scorer.scores(emb, return_plan=False).scores, np.float64)
            z = scorer.scale * allc
            z = z - z.max(1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
            return p[:, class_index], (T * Fm).sum(1)
        return np.asarray(r.scores)[:, 0], (T * Fm).sum(1)

    base_score, base_attr = contribs(base_emb[None])
    bx = scorer.boxes
    passes = 1 + len(bx)
    out_scores, out_attr = [], []
    for start in range(0, len(wins), chunk):
        views, metas = [], []
        for x0, y0, x1, y1 in wins[start : start + chunk].astype(int):
            occ = image.clone()
            occ[:, y0:y1, x0:x1] = baseline[:, y0:y1, x0:x1]
            meet = (bx[:, 0] < x1) & (bx[:, 2] > x0) & (bx[:, 1] < y1) & (bx[:, 3] > y0)
            views.append(to_model_input(occ[None], scorer.size))
            views.append(_crops(occ, bx[meet], scorer.size))
            metas.append(meet)
        with torch.no_grad():
            v = torch.cat(views)
            e = torch.cat([scorer.lm.encode_image(v[i : i + scorer.batch].to(scorer.dev), normalize=True).float()
                           for i in range(0, len(v), scorer.batch)]).cpu().numpy()
        passes += len(e)
        embs, k = [], 0
        for meet in metas:
            emb = base_emb.copy()
            emb[0] = e[k]
            emb[1:][meet] = e[k + 1 : k + 1 + int(meet.sum())]
            k += 1 + int(meet.sum())
            embs.append(emb)
        s, a = contribs(np.stack(embs))
        out_scores += list(s)
        out_attr += list(a)
    cmap = occlusion_map(float(base_score[0]), np.array(out_scores), wins, H, W)
    out_attr = np.array(out_attr)
    amaps = np.stack([occlusion_map(float(base_attr[0, n]), out_attr[:, n], wins, H, W) for n in range(out_attr.shape[1])])
    return cmap, amaps, passes


# ---- Grad-CAM -------------------------------------------------------------------------------
class _TextLogits(torch.nn.Module):
    def __init__(self, lm, texts: torch.Tensor, scale: float):
        super().__init__()
        self.lm, self.texts, self.scale = lm, texts, scale

    def forward(self, x):
        return self.scale * F.normalize(self.lm.encode_image(x), dim=-1) @ self.texts.T


def vit_reshape(grid: tuple[int, int]):
    """grad-cam reshape transform for open_clip ViT blocks (batch-first (B, 1+L, C) -> (B, C, gh, gw))."""
    def f(t):
        return t[:, 1:, :].reshape(t.shape[0], grid[0], grid[1], t.shape[-1]).permute(0, 3, 1, 2)
    return f


def gradcam_map(model, pixels: torch.Tensor, text_emb, target: int, out_size: tuple[int, int]) -> np.ndarray:
    """Grad-CAM of ``scale·cos(image, text[target])`` at the last block's ``ln_1`` (pytorch_grad_cam).

    pixels (1, 3, s, s) preprocessed; text_emb (K, D). Returns (H, W) in [0, 1], bilinear.
    """
    # heavy: imported on use (an optional extra)
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    lm, dev = _lm_parts(model)
    visual = lm.visual
    ps = visual.patch_size
    ps = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
    grid = (pixels.shape[-2] // ps, pixels.shape[-1] // ps)
    texts = torch.as_tensor(np.asarray(text_emb, np.float32), device=dev)
    wrapper = _TextLogits(lm, texts, logit_scale(model))
    with GradCAM(model=wrapper, target_layers=[visual.transformer.resblocks[-1].ln_1],
                 reshape_transform=vit_reshape(grid)) as cam, warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # numpy 2's __array_wrap__ notice from inside grad-cam
        m = cam(input_tensor=pixels.to(dev), targets=[ClassifierOutputTarget(int(target))])[0]
    t = torch.as_tensor(m, dtype=torch.float32)[None, None]
    return F.interpolate(t, size=out_size, mode="bilinear", align_corners=False)[0, 0].numpy().astype(np.float64)
