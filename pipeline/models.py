"""Load an open_clip model by the names users already know, and fingerprint it.

``--model NAME --pretrained TAG|FILE|local-dir:DIR|hf-hub:ORG/REPO`` resolve exactly as
in ``open_clip.create_model_and_transforms``; two project additions:

* ``random`` / ``random:SEED``: the architecture with deterministic random weights
  (tests, benchmarks of the real architecture's cost, the untrained demo).
* the project's own configs in ``pipeline/model_configs/`` (``zsl-tiny``) are registered
  with ``open_clip.add_model_config`` so they take the same code path as ``ViT-B-32``.

Without network, a tag that is not in the local Hugging Face cache fails within seconds
with :class:`ModelLoadError` saying how to supply the weights offline.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

_logger = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
DEFAULT_MODEL = "ViT-B-32"
DEFAULT_PRETRAINED = "openai"
HF_HOST = ("huggingface.co", 443)

OFFLINE_HELP = (
    "Weights for {model}/{tag} are not available offline. Supply them one of these ways: "
    "--pretrained /path/to/open_clip_pytorch_model.bin (a state dict file), "
    "--pretrained local-dir:/path/to/dir (open_clip_config.json + weights), "
    "or download once on a machine with network (python -c \"import open_clip; "
    "open_clip.create_model_and_transforms('{model}', pretrained='{tag}')\") and copy "
    "~/.cache/huggingface here (HF_HUB_CACHE)."
)


class ModelLoadError(RuntimeError):
    """The model or its weights could not be loaded; the message says what to do."""


@dataclass
class LoadedModel:
    """An open_clip model ready to encode, with everything needed to reproduce it."""

    model: Any
    preprocess: Callable
    tokenizer: Callable
    name: str
    pretrained: str
    fingerprint: str
    device: str
    dtype: Any
    embed_dim: int
    image_size: int
    extra: dict = field(default_factory=dict)

    def encode_images(self, batch):
        """batch: float tensor [B,3,H,W] already preprocessed -> L2-normalised float32 [B,D]."""
        # heavy: imported on use
        import torch

        with torch.inference_mode():
            feats = self.model.encode_image(batch.to(self.device, self.dtype), normalize=True)
        return feats.float().cpu()

    def encode_texts(self, texts: list[str], batch_size: int = 256):
        """texts -> L2-normalised float32 numpy [N,D]."""
        # heavy: imported on use
        import numpy as np
        import torch

        out = []
        with torch.inference_mode():
            for i in range(0, len(texts), batch_size):
                tokens = self.tokenizer(texts[i : i + batch_size]).to(self.device)
                feats = self.model.encode_text(tokens, normalize=True)
                out.append(feats.float().cpu().numpy())
        if not out:
            return np.zeros((0, self.embed_dim), dtype=np.float32)
        return np.concatenate(out).astype(np.float32)

    def describe(self) -> dict:
        return {
            "name": self.name,
            "pretrained": self.pretrained,
            "fingerprint": self.fingerprint,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "embed_dim": self.embed_dim,
            "image_size": self.image_size,
            **self.extra,
        }


def register_project_configs() -> None:
    """Make the project's JSON configs visible to open_clip (idempotent)."""
    # heavy: imported on use
    import open_clip

    if "zsl-tiny" not in open_clip.list_models():
        open_clip.add_model_config(str(MODEL_CONFIG_DIR))


def data_dir() -> Path:
    """Where the shipped weights are: the installed ``pipeline.data`` package (the repository's
    top-level ``data/``, mapped there by pyproject.toml), or ``data/`` of a source checkout."""
    checkout = Path(__file__).resolve().parent.parent  # a source checkout: its own data/ (the tree being run)
    if (checkout / "pyproject.toml").is_file() and (checkout / "data").is_dir():
        return checkout / "data"
    spec = importlib.util.find_spec("pipeline.data")
    if spec is not None and spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(__file__).resolve().parent.parent / "data"


def list_project_weights() -> dict[str, Path]:
    """Weights the project ships (tag -> file): ``--pretrained toy-clip``."""
    d = data_dir()
    return {p.stem: p for p in sorted(d.glob("*.pt"))} if d.is_dir() else {}


def shipped_architecture(tag: str) -> str | None:
    """The model config a shipped tag was trained as (its ``<tag>.json`` record), e.g. zsl-tiny."""
    weights = list_project_weights().get(tag)
    if weights is None:
        return None
    record = weights.with_suffix(".json")
    try:
        return json.loads(record.read_text()).get("model") if record.is_file() else None
    except ValueError:
        return None


def resolve_model_name(name: str | None, pretrained: str | None) -> tuple[str, str]:
    """(model name, pretrained) with the shortcuts users expect: a shipped tag implies its
    architecture (``--pretrained toy-clip``), ``hf-hub:``/``local-dir:`` in ``--pretrained``
    name the model themselves."""
    pretrained = pretrained or DEFAULT_PRETRAINED
    implied = shipped_architecture(pretrained)
    if implied is not None:
        if name not in (None, implied):
            raise ModelLoadError(f"--pretrained {pretrained} holds weights for {implied}, not {name}; "
                                 f"drop --model or use --model {implied}.")
        return implied, pretrained
    if pretrained.startswith(("hf-hub:", "local-dir:")):
        return pretrained, pretrained
    return name or DEFAULT_MODEL, pretrained


def pick_device(device: str | None = None) -> str:
    # heavy: imported on use
    import torch

    if device:
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ModelLoadError(f"--device {device} asked for, but CUDA is not available here; use --device cpu.")
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(name: str, pretrained: str) -> str:
    """A stable id of the weights: name/tag for published tags, name/sha256:... for files."""
    if pretrained.startswith("local-dir:"):
        d = Path(pretrained[len("local-dir:") :])
        weights = sorted(p for p in d.iterdir() if p.suffix in {".bin", ".pt", ".pth", ".safetensors"})
        if not weights:
            raise ModelLoadError(f"{d} holds no weights file (.bin/.pt/.safetensors); put the checkpoint beside open_clip_config.json.")
        return f"{name}/sha256:{sha256_file(weights[0])[:16]}"
    if pretrained.startswith("hf-hub:") or name.startswith("hf-hub:"):
        return f"{name}/{pretrained}"
    if os.path.isfile(pretrained):
        return f"{name}/sha256:{sha256_file(pretrained)[:16]}"
    return f"{name}/{pretrained}"


def _network_reachable(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection(HF_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def weights_in_cache(name: str, tag: str) -> bool:
    """Whether open_clip would find the weights of tag ``tag`` offline, in the Hugging Face cache
    (True when open_clip fetches them some other way: then its own load decides)."""
    from open_clip.pretrained import get_pretrained_cfg  # heavy: imported on use

    cfg = get_pretrained_cfg(name, tag)
    hub = cfg.get("hf_hub", "")
    if not hub or "file" in cfg:
        return True
    from huggingface_hub import try_to_load_from_cache  # heavy: imported on use

    model_id, filename = os.path.split(hub)
    filename = filename or "open_clip_pytorch_model.bin"
    candidates = {filename, filename.rsplit(".", 1)[0] + ".safetensors", "open_clip_model.safetensors"}
    return any(isinstance(try_to_load_from_cache(model_id, f), str) for f in candidates)


def _go_offline() -> None:
    """Make huggingface_hub answer from its cache only, so a missing file fails at once.

    HF_HUB_OFFLINE is read when huggingface_hub is imported (ecosystem-notes §1), so set it
    in the environment and also flip the already-imported constant.
    """
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        # heavy: imported on use
        import huggingface_hub.constants as hf_constants

        hf_constants.HF_HUB_OFFLINE = True
    except ImportError:  # pragma: no cover - open_clip depends on it
        pass


def load_model(
    name: str | None = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    device: str | None = None,
    precision: str | None = None,
) -> LoadedModel:
    """Create an open_clip model, its eval preprocess and tokenizer.

    Args:
        name: an open_clip model name (``ViT-B-32``), a project config (``zsl-tiny``),
            or ``hf-hub:ORG/REPO`` / ``local-dir:DIR``; None: implied by ``pretrained``
            (see :func:`resolve_model_name`), else ViT-B-32.
        pretrained: a tag (``openai``), a weights file, ``random[:SEED]``, a shipped tag
            (``toy-clip``, which implies ``zsl-tiny``), ``hf-hub:ORG/REPO`` or
            ``local-dir:DIR``. ``None`` means ``random:0``.
        device: ``cpu``/``cuda``/``cuda:1``; picked automatically when None.
        precision: ``fp32``/``fp16``/``bf16``; fp16 on CUDA, fp32 on CPU when None.
    """
    # heavy: imported on use
    import torch

    register_project_configs()
    # heavy: imported on use
    import open_clip

    device = pick_device(device)
    if precision is None:
        precision = "fp16" if device.startswith("cuda") else "fp32"
    name, pretrained = resolve_model_name(name, pretrained or "random:0")
    shipped = list_project_weights()
    if pretrained in shipped:
        pretrained_arg = str(shipped[pretrained])
    else:
        pretrained_arg = pretrained

    is_scheme = name.startswith(("hf-hub:", "local-dir:"))
    if pretrained_arg.startswith(("local-dir:", "hf-hub:")):
        name, pretrained_arg, is_scheme = pretrained_arg, None, True
    elif is_scheme and pretrained_arg in (DEFAULT_PRETRAINED, name):
        pretrained_arg = None  # the scheme carries its own weights

    if not is_scheme and name not in open_clip.list_models():
        raise ModelLoadError(
            f"Unknown model {name!r}. Pick one of open_clip.list_models() (e.g. ViT-B-32) or zsl-tiny."
        )

    seed = None
    if pretrained_arg and pretrained_arg.startswith("random"):
        tail = pretrained_arg.split(":", 1)[1] if ":" in pretrained_arg else "0"
        if pretrained_arg.split(":", 1)[0] != "random" or not tail.isdigit() or int(tail) >= 2**63:
            raise ModelLoadError(f"--pretrained {pretrained_arg!r}: use random or random:SEED with SEED an integer "
                                 "in [0, 2**63).")
        seed = int(tail)
        pretrained_arg = None
    elif pretrained_arg and not is_scheme and not os.path.isfile(pretrained_arg):
        known = {tag for arch, tag in open_clip.list_pretrained() if arch == name}
        if pretrained_arg not in known:
            raise ModelLoadError(
                f"--pretrained {pretrained_arg!r} is neither a file nor a known tag for {name} "
                f"(known: {', '.join(sorted(known)) or 'none'}; or use random, local-dir:DIR, a .pt/.bin file)."
            )
    if name.startswith("hf-hub:") or (pretrained_arg and not os.path.isfile(pretrained_arg) and not is_scheme):
        if os.environ.get("HF_HUB_OFFLINE") == "1" or not _network_reachable():
            _go_offline()
            if not name.startswith("hf-hub:") and not weights_in_cache(name, pretrained_arg):
                raise ModelLoadError(OFFLINE_HELP.format(model=name, tag=pretrained))  # before building the model

    fingerprint = (
        f"{name}/random:{seed}" if seed is not None else model_fingerprint(name, pretrained_arg or pretrained)
    )
    try:
        if seed is not None:
            torch.manual_seed(seed)
        # open_clip logs through the root logger ("No pretrained weights loaded" for random
        # init, "Failed to download" before raising): our own message replaces both.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.CRITICAL)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model, _, preprocess = open_clip.create_model_and_transforms(
                    name, pretrained=pretrained_arg, device=device, precision=precision
                )
        finally:
            root.setLevel(level)
    except Exception as exc:  # a file that is no checkpoint fails deep inside torch.load: one line instead
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if "download" in msg.lower() or "offline" in msg.lower() or "connect" in msg.lower():
            raise ModelLoadError(OFFLINE_HELP.format(model=name, tag=pretrained)) from exc
        raise ModelLoadError(f"Could not load {name} with --pretrained {pretrained} ({type(exc).__name__}: {msg[:200]}); "
                             "is it an open_clip checkpoint of this architecture?") from exc
    model.eval()
    tokenizer = open_clip.get_tokenizer(name)
    embed_dim = int(model.text_projection.shape[1]) if getattr(model, "text_projection", None) is not None else int(
        model.visual.output_dim
    )
    image_size = model.visual.image_size
    image_size = int(image_size[0] if isinstance(image_size, (tuple, list)) else image_size)
    dtype = next(model.parameters()).dtype
    return LoadedModel(
        model=model,
        preprocess=preprocess,
        tokenizer=tokenizer,
        name=name,
        pretrained=pretrained,
        fingerprint=fingerprint,
        device=device,
        dtype=dtype,
        embed_dim=embed_dim,
        image_size=image_size,
    )
