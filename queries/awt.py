"""AWT: Augmentation, Weighting, and Transportation (Zhu et al., NeurIPS 2024).

Pure math on embeddings, as ``AWT_zero_shot/evaluate.py`` of MCG-NJU/AWT computes it.
For one image with views ``v = 0..V-1`` (view 0 the original; see
:func:`queries.regions.augmented_view_boxes`) and classes ``c`` with texts ``t = 1..N_c``:

.. math::
    \\ell_{v,c,t} = s \\cos(x_v, y_{c,t}),\\qquad
    \\bar\\ell_{v,c} = \\tfrac{1}{N_c} \\sum_t \\ell_{v,c,t}

* view weights: :math:`H_v = H(\\mathrm{softmax}_c \\bar\\ell_{v,\\cdot})`,
  :math:`a_v = \\mathrm{softmax}_v(-H_v / \\tau_v)`;
* text weights (original view only): :math:`z^{(c,t)}` is :math:`\\bar\\ell_{0,\\cdot}` with its
  entry ``c`` replaced by :math:`\\ell_{0,c,t}`; :math:`H_{c,t} = H(\\mathrm{softmax}\\, z^{(c,t)})`,
  :math:`b_{c,t} = \\mathrm{softmax}_t(-H_{c,t} / \\tau_t)`;
* transport per class: cost :math:`1 - \\cos(x_v, y_{c,t})`, kernel
  :math:`\\exp(-(1-\\cos)/\\varepsilon)`, marginals ``a`` and :math:`b_{c,\\cdot}`, Sinkhorn-Knopp
  from ``r = c = 1`` (as LaZSL's, :mod:`queries.transport`);
* score :math:`\\sum_{v,t} T_{v,t} \\cos(x_v, y_{c,t})`. AWT's code returns
  :math:`\\sum T \\ell = s \\cdot` this score (same ranking).

Defaults are those of the code: ``logit_scale = 100`` (CLIP's ``logit_scale.exp()``),
``view_temperature = text_temperature = 0.5``, ``eps = 0.1``, ``max_iter = 100``,
``tol = 1e-2``; 50 descriptions + the class prompt per class and 1 + 50 views.

Differences from the code, all deliberate and documented:

* Stopping rule. The code stops one image's Sinkhorn when the mean of ``|r - r_prev|``
  over *all classes* of that image is below ``tol`` (one batch = the classes of one image).
  ``stop="image"`` (default) does exactly that; ``stop="pair"`` stops each class on its
  own (:func:`queries.transport.sinkhorn_batch`), as the project's LaZSL does. The weights
  already depend on every class (entropies over classes), so "image" loses nothing here.
* Classes may have different numbers of texts (the code assumes the same N for all):
  means and softmaxes run over each class's own texts (zero-mass padding elsewhere).
* The code computes the weights under CUDA autocast (fp16); here they are computed in
  float64 (inputs in float32 or float64; the rest keeps the input dtype).
* The text-weight entropies are computed in closed form from exclusive prefix/suffix sums
  over classes instead of materialising the (N, C, C) ``anchor`` tensor, so 1,000 classes
  cost O(C N) per image, not O(C^2 N).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from queries._arrays import any_torch, as_float, as_index, check_dims, class_counts, out, pick_device
from queries.result import ScoreResult
from queries.transport import PLAIN_MAX_SCALE, sinkhorn_batch

__all__ = ["AwtResult", "awt_scores", "awt_weights", "AWT_DEFAULTS"]

#: AWT's code defaults (``evaluate.py``, ``scripts/*.sh``).
AWT_DEFAULTS = {
    "logit_scale": 100.0,
    "view_temperature": 0.5,
    "text_temperature": 0.5,
    "eps": 0.1,
    "max_iter": 100,
    "tol": 1e-2,
    "n_views": 50,  # random views besides the original
    "n_descriptions": 50,  # plus the class prompt "a photo of a {c}."
}


@dataclass
class AwtResult(ScoreResult):
    """AWT scores for each (image, class) (:class:`queries.result.ScoreResult`).

    Attributes
    ----------
    scores : (B, C)
        ``sum_vt T_vt cos(x_v, y_ct)`` (AWT's output divided by ``logit_scale``).
    global_scores : (B, C)
        The class prompt's column of the score, ``sum_v T_{v,0} cos(x_v, p_c)`` (0 without
        ``class_prompts``). Also readable as ``prompt_scores``.
    local_scores : (B, C)
        ``scores - global_scores``: what the descriptions carried.
    plan : (B, C, V, N_max) or None
        Transport plans (views x the class's texts; padded columns are 0).
    similarity : (B, C, V, N_max) or None
        ``cos(x_v, y_ct)``: what each unit of plan mass was paid for (0 on padding).
    text_index : (C, N_max) int64
        Row of ``texts`` of each plan column; -2 for the class prompt (column 0 when
        ``class_prompts`` is given), -1 for padding.
    view_weights : (B, V)
        ``a``: softmax over views of ``-H_v / view_temperature``.
    text_weights : (B, C, N_max)
        ``b``: per class, softmax over its texts of ``-H_ct / text_temperature``.
    n_iter : (B, C) int64
        Sinkhorn iterations (with ``stop="image"`` the same for every class of an image).
    converged : (B, C) bool
    """

    view_weights: Any = None
    text_weights: Any = None
    n_iter: Any = None
    converged: Any = None

    @property
    def prompt_scores(self):
        return self.global_scores


def _class_layout(text_class: torch.Tensor, n_classes: int):
    """CSR of texts per class -> (index (C, N_max) into the flat texts, -1 pad; mask)."""
    dev = text_class.device
    counts = class_counts(text_class, n_classes, "texts")
    order = torch.argsort(text_class, stable=True)
    ptr = torch.zeros(n_classes + 1, dtype=torch.int64, device=dev)
    ptr[1:] = torch.cumsum(counts, 0)
    n_max = int(counts.max())
    j = torch.arange(n_max, device=dev)
    mask = j < counts.unsqueeze(1)
    index = torch.where(mask, order[torch.where(mask, ptr[:-1, None] + j, 0)], -1)
    return index, mask


def _entropy_of_logits(z: torch.Tensor, dim: int = -1) -> torch.Tensor:
    logp = torch.log_softmax(z, dim)
    return -(logp.exp() * logp).sum(dim)


def _exclusive_sums(x: torch.Tensor) -> torch.Tensor:
    """``out[..., c] = sum_{c' != c} x[..., c']`` without cancellation (prefix + suffix)."""
    pre = torch.cumsum(x, -1) - x
    suf = torch.flip(torch.cumsum(torch.flip(x, [-1]), -1), [-1]) - x
    return pre + suf


def awt_weights(logits: torch.Tensor, mask: torch.Tensor, *, view_temperature: float, text_temperature: float):
    """AWT's view and text weights from the logits of one chunk of images.

    logits (B, V, C, N) (= ``logit_scale * cos``; padded entries ignored), mask (C, N).
    Returns (view weights (B, V), text weights (B, C, N), class-mean logits (B, V, C)), all
    float64. Entropies are natural-log; see the module docstring for the formulas.
    """
    L = logits.double()
    m = mask.to(L.dtype)
    n = m.sum(1)  # (C,)
    mean = (L * m).sum(-1) / n  # (B, V, C)
    h_view = _entropy_of_logits(mean, -1)  # (B, V)
    w_view = torch.softmax(-h_view / view_temperature, dim=1)

    # text weights: entropy of softmax over classes of the original view's class means with
    # entry c replaced by text t's logit for c. With y = z - shift:
    #   H = log Z - (sum_i e^{y_i} y_i) / Z,  Z = sum_i e^{y_i}
    # where the sums over i != c are exclusive sums over classes.
    m0 = mean[:, 0]  # (B, C)
    shift = m0.amax(1, keepdim=True)
    y = m0 - shift
    e = torch.exp(y)
    z_ex = _exclusive_sums(e)  # (B, C)
    s_ex = _exclusive_sums(e * y)
    yt = L[:, 0] - shift.unsqueeze(2)  # (B, C, N)
    et = torch.exp(yt)
    Z = z_ex.unsqueeze(2) + et
    h_text = torch.log(Z) - (s_ex.unsqueeze(2) + et * yt) / Z
    h_text = torch.where(mask, h_text, float("inf"))
    w_text = torch.softmax(-h_text / text_temperature, dim=2)  # exp(-inf) = 0 on padding
    return w_view, w_text, mean


def _sinkhorn_image_stop(K: torch.Tensor, a: torch.Tensor, b: torch.Tensor, max_iter: int, tol: float):
    """Sinkhorn for (B, C) problems where all C problems of an image stop together.

    K (B, C, V, N), a (B, V), b (B, C, N) (zeros on padding). Stops image b when
    ``mean_{c, v} |r - r_prev| < tol`` (AWT's batch-global test; its batch is one image).
    Returns (T, n_iter (B,), converged (B,)).
    """
    B, C, V, N = K.shape
    bpos = b > 0
    r = torch.ones((B, C, V), dtype=K.dtype, device=K.device)
    c = bpos.to(K.dtype)
    a3 = a.unsqueeze(1).expand(B, C, V)
    live = torch.ones(B, dtype=torch.bool, device=K.device)
    n_iter = torch.full((B,), max_iter, dtype=torch.int64, device=K.device)
    converged = torch.zeros(B, dtype=torch.bool, device=K.device)
    for it in range(1, max_iter + 1):
        idx = live.nonzero().squeeze(1)
        Ki = K[idx]
        r_new = a3[idx] / torch.einsum("kcvn,kcn->kcv", Ki, c[idx])
        Ktr = torch.einsum("kcvn,kcv->kcn", Ki, r_new)
        c_new = torch.where(bpos[idx], b[idx] / Ktr, 0.0)
        err = (r_new - r[idx]).abs().mean((1, 2))
        r[idx], c[idx] = r_new, c_new
        done = err < tol
        if it == max_iter or bool(done.any()):
            fin = idx[done] if it < max_iter else idx
            n_iter[fin] = it
            converged[idx[done]] = True
            live[fin] = False
            if not bool(live.any()):
                break
    T = r.unsqueeze(3) * K * c.unsqueeze(2)
    return T, n_iter, converged


def awt_scores(
    views,
    texts,
    text_class,
    class_prompts=None,
    *,
    n_classes: int | None = None,
    logit_scale: float = 100.0,
    view_temperature: float = 0.5,
    text_temperature: float = 0.5,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-2,
    stop: str = "image",
    return_plan: bool = True,
    chunk_elements: int = 1 << 23,
) -> AwtResult:
    r"""AWT scores of images (each with V views) against every class.

    .. math::
        \mathrm{score}_{c} = \sum_{v,t} T^{(c)}_{v,t}\,\cos(x_v, y_{c,t}),\quad
        T^{(c)} = \mathop{\arg\min}_{T\mathbf 1 = a,\ T^\top\mathbf 1 = b_c}
        \langle T, 1 - \cos \rangle - \varepsilon H(T)

    with the entropy-based weights ``a`` (views) and ``b_c`` (texts) of the module docstring.

    .. note:: Accepts numpy arrays or torch tensors and returns the same kind. float64
       inputs are computed in float64, everything else in float32 (weights in float64).

    Parameters
    ----------
    views : (B, V, D)
        L2-normalised view embeddings; view 0 is the original image (it alone sets the
        text weights).
    texts : (A, D)
        L2-normalised text embeddings (AWT: ``"a photo of a {c}. {description}"``).
    text_class : (A,) int
        Class of each text, ``0..C-1``; every class needs at least one text.
    class_prompts : (C, D), optional
        One more text per class (AWT: ``"a photo of a {c}."``), placed as column 0 of the
        class and treated like every other text (weights, transport, score), as in the code.
    n_classes : int, optional
        ``C``; default ``max(text_class) + 1``.
    logit_scale : float
        ``s`` (CLIP's ``logit_scale.exp()``, 100). Only the weights depend on it.
    view_temperature, text_temperature : float
        Softmax temperatures of the view and text weights (0.5, 0.5).
    eps, max_iter, tol : float, int, float
        Sinkhorn regularisation and stopping (0.1, 100, 1e-2).
    stop : {"image", "pair"}
        ``"image"``: all classes of an image stop together when
        ``mean_{c,v} |r - r_prev| < tol`` (the code). ``"pair"``: each class stops on its own.
    return_plan : bool
        ``False`` skips ``plan`` and ``similarity``.
    chunk_elements : int
        Images are processed in chunks of about this many (V x texts) entries; results do
        not depend on it.

    Returns
    -------
    AwtResult

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
    >>> views = unit(rng.standard_normal((2, 5, 8)))
    >>> texts = unit(rng.standard_normal((6, 8)))
    >>> res = awt_scores(views, texts, np.array([0, 0, 1, 1, 2, 2]))
    >>> res.scores.shape, res.plan.shape
    ((2, 3), (2, 3, 5, 2))
    >>> bool(np.allclose(res.plan.sum(axis=(2, 3)), 1.0, atol=1e-5))
    True
    """
    if stop not in ("image", "pair"):
        raise ValueError(f"stop must be 'image' or 'pair', got {stop!r}")
    as_torch = any_torch(views, texts, text_class, class_prompts)
    dev = pick_device(views, texts, text_class, class_prompts)
    x = as_float(views, dev)
    dt = torch.float64 if x.dtype == torch.float64 else torch.float32
    x = x.to(dt)
    t = as_float(texts, dev, dt)
    tc = as_index(text_class, dev)
    if x.ndim != 3 or t.ndim != 2:
        raise ValueError(f"expected views (B, V, D) and texts (A, D); got {tuple(x.shape)}, {tuple(t.shape)}")
    check_dims(views=x, texts=t)
    if tc.shape != (t.shape[0],):
        raise ValueError("text_class must have one entry per text")
    C = int(n_classes) if n_classes is not None else (int(tc.max()) + 1 if tc.numel() else 0)
    if tc.numel() and (int(tc.min()) < 0 or int(tc.max()) >= C):
        raise ValueError(f"text_class entries must lie in 0..{C - 1}")
    if class_prompts is not None:
        p = as_float(class_prompts, dev, dt)
        if p.shape != (C, t.shape[1]):
            raise ValueError(f"class_prompts must be ({C}, {t.shape[1]}); got {tuple(p.shape)}")
        t_all = torch.cat([p, t])
        c_all = torch.cat([torch.arange(C, device=dev), tc])
    else:
        t_all, c_all = t, tc
    if c_all.numel() == 0:
        raise ValueError("no texts")
    index, mask = _class_layout(c_all, C)  # index into t_all
    text_index = index - (C if class_prompts is not None else 0)
    if class_prompts is not None:
        text_index = torch.where(index < 0, -1, torch.where(index < C, -2, text_index))
    if stop == "image" and 2.01 / eps > PLAIN_MAX_SCALE[dt]:
        raise ValueError(f"eps={eps} is too small for the plain kernel in {dt}; use stop='pair' (log domain)")

    B, V, _ = x.shape
    N = mask.shape[1]
    scores = torch.zeros((B, C), dtype=dt, device=dev)
    w_view_all = torch.zeros((B, V), dtype=torch.float64, device=dev)
    w_text_all = torch.zeros((B, C, N), dtype=torch.float64, device=dev)
    n_iter = torch.zeros((B, C), dtype=torch.int64, device=dev)
    conv = torch.zeros((B, C), dtype=torch.bool, device=dev)
    prompt_part = torch.zeros((B, C), dtype=dt, device=dev)
    plan = torch.zeros((B, C, V, N), dtype=dt, device=dev) if return_plan else None
    simil = torch.zeros((B, C, V, N), dtype=dt, device=dev) if return_plan else None
    gather = torch.where(mask, index, 0)  # (C, N)
    step = max(1, chunk_elements // max(1, V * C * N))
    for s in range(0, B, step):
        e = min(B, s + step)
        cos_flat = torch.einsum("bvd,ad->bva", x[s:e], t_all)  # (b, V, A)
        cos = cos_flat[:, :, gather]  # (b, V, C, N)
        cos = torch.where(mask, cos, 0.0)
        w_view, w_text, _ = awt_weights(
            logit_scale * cos, mask, view_temperature=view_temperature, text_temperature=text_temperature
        )
        a = w_view.to(dt)
        bw = w_text.to(dt)
        cost = (1.0 - cos).permute(0, 2, 1, 3)  # (b, C, V, N)
        cosp = cos.permute(0, 2, 1, 3)
        nb = e - s
        if stop == "image":
            K = torch.exp(-cost / eps)
            T, it, cv = _sinkhorn_image_stop(K, a, bw, max_iter, tol)
            it = it.unsqueeze(1).expand(nb, C)
            cv = cv.unsqueeze(1).expand(nb, C)
        else:
            res = sinkhorn_batch(
                a.unsqueeze(1).expand(nb, C, V).reshape(nb * C, V),
                bw.reshape(nb * C, N),
                cost.reshape(nb * C, V, N),
                eps, max_iter=max_iter, tol=tol, warn=False,
            )
            T = res.plan.reshape(nb, C, V, N)
            it, cv = res.n_iter.reshape(nb, C), res.converged.reshape(nb, C)
        scores[s:e] = (T * cosp).sum((2, 3))
        if class_prompts is not None:  # column 0 of every class is its prompt
            prompt_part[s:e] = (T[..., 0] * cosp[..., 0]).sum(2)
        w_view_all[s:e], w_text_all[s:e] = w_view, w_text
        n_iter[s:e], conv[s:e] = it, cv
        if return_plan:
            plan[s:e], simil[s:e] = T, cosp
    return AwtResult(
        scores=out(scores, as_torch),
        plan=out(plan, as_torch),
        similarity=out(simil, as_torch),
        text_index=out(text_index, as_torch),
        view_weights=out(w_view_all, as_torch),
        text_weights=out(w_text_all, as_torch),
        n_iter=out(n_iter, as_torch),
        converged=out(conv, as_torch),
        global_scores=out(prompt_part, as_torch),
        local_scores=out(scores - prompt_part, as_torch),
    )
