"""numpy/torch plumbing shared by the query-stage math (private).

Every public function in ``queries`` accepts numpy arrays or torch tensors and
returns the same kind: torch if any array argument is a tensor (on that tensor's
device), numpy otherwise. Computation always happens in torch.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_FLOATS = (torch.float32, torch.float64)


def any_torch(*xs: Any) -> bool:
    """True if any argument is a torch tensor."""
    return any(isinstance(x, torch.Tensor) for x in xs)


def pick_device(*xs: Any) -> torch.device:
    """Device of the first tensor argument, CPU if there is none."""
    for x in xs:
        if isinstance(x, torch.Tensor):
            return x.device
    return torch.device("cpu")


def as_float(x: Any, device: torch.device, dtype: torch.dtype | None = None) -> torch.Tensor:
    """``x`` as a floating tensor on ``device``.

    float32/float64 keep their dtype unless ``dtype`` is given; every other dtype
    (ints, float16, bfloat16) becomes float32.
    """
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if dtype is None:
        dtype = t.dtype if t.dtype in _FLOATS else torch.float32
    return t.to(device=device, dtype=dtype)


def as_index(x: Any, device: torch.device) -> torch.Tensor:
    """``x`` as an int64 tensor on ``device``; raises if it holds non-integers."""
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.is_floating_point() or t.is_complex():
        raise TypeError(f"expected integer indices, got dtype {t.dtype}")
    return t.to(device=device, dtype=torch.int64)


def out(t: torch.Tensor | None, as_torch: bool):
    """Return ``t`` unchanged for torch callers, as a numpy array otherwise."""
    if t is None or as_torch:
        return t
    return t.detach().cpu().numpy()


# ---- segment arithmetic shared by the scoring modules ------------------------------------


def l2_normalize(x: torch.Tensor) -> torch.Tensor:
    return torch.nn.functional.normalize(x, dim=-1)


def class_counts(cls: torch.Tensor, n_classes: int, what: str) -> torch.Tensor:
    if cls.numel() and (int(cls.min()) < 0 or int(cls.max()) >= n_classes):
        raise ValueError(f"{what} class indices must lie in [0, {n_classes})")
    counts = torch.bincount(cls, minlength=n_classes)
    empty = (counts == 0).nonzero().flatten()
    if empty.numel():
        raise ValueError(
            f"{empty.numel()} class(es) have no {what} (first: {empty[:5].tolist()}); "
            f"every scored class needs at least one (DCLIP turns an empty list into [''] "
            "upstream: do that before embedding)"
        )
    return counts


def segment_mean(values: torch.Tensor, cls: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Mean of ``values[..., a]`` over rows a of each class: (..., A) -> (..., C)."""
    shape = values.shape[:-1] + (counts.numel(),)
    acc = torch.zeros(shape, dtype=values.dtype, device=values.device)
    acc.index_add_(values.ndim - 1, cls, values)
    return acc / counts.to(values.dtype)


def check_dims(**arrays: torch.Tensor) -> int:
    dims = {k: v.shape[-1] for k, v in arrays.items()}
    if len(set(dims.values())) != 1:
        raise ValueError(f"embedding dimensions differ: {dims}")
    return next(iter(dims.values()))


@dataclass(frozen=True)
class CandidateTexts:
    """Each image's candidate classes and their texts, laid out for batched OT.

    ``cand`` (B, K) class indices; ``n_pair`` (B, K) texts of each candidate; ``order``, ``ptr``:
    the class -> text rows CSR (texts in ``attr`` order); ``attr_index`` (B, K, n_max) the text
    rows of each candidate, -1 past its own count (``valid``); ``n_max`` the longest candidate."""

    cand: torch.Tensor
    n_pair: torch.Tensor
    order: torch.Tensor
    ptr: torch.Tensor
    n_max: int
    valid: torch.Tensor
    attr_index: torch.Tensor


def candidate_texts(attr_class: torch.Tensor, candidates: Any, n_images: int, device: torch.device) -> CandidateTexts:
    """The layout of :class:`CandidateTexts`; ``candidates`` None means every class for every
    image. A candidate class without texts, or a negative index, is a ValueError."""
    n_cls = int(attr_class.max()) + 1 if attr_class.numel() else 0
    if candidates is None:
        cand = torch.arange(n_cls, device=device).expand(n_images, -1).contiguous()
    else:
        cand = as_index(candidates, device)
        if cand.ndim != 2 or cand.shape[0] != n_images:
            raise ValueError(f"candidates must be (B, K); got {tuple(cand.shape)}")
        if cand.numel() and int(cand.min()) < 0:
            raise ValueError("candidate class indices must be >= 0")
        n_cls = max(n_cls, int(cand.max()) + 1 if cand.numel() else 0)
    counts = torch.bincount(attr_class, minlength=n_cls)
    n_pair = counts[cand]
    if (n_pair == 0).any():
        raise ValueError(f"candidate classes without descriptors: {torch.unique(cand[n_pair == 0])[:5].tolist()}")
    order = torch.argsort(attr_class, stable=True)
    ptr = torch.zeros(n_cls + 1, dtype=torch.int64, device=device)
    ptr[1:] = torch.cumsum(counts, 0)
    n_max = int(n_pair.max()) if n_pair.numel() else 0
    j = torch.arange(n_max, device=device)
    valid = j < n_pair.unsqueeze(-1)
    attr_index = torch.where(valid, order[torch.where(valid, ptr[cand].unsqueeze(-1) + j, 0)], -1)
    return CandidateTexts(cand, n_pair, order, ptr, n_max, valid, attr_index)
