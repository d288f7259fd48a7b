import time

import pytest
import torch

from pipeline.models import ModelLoadError, load_model, sha256_file


def test_tiny_model_is_deterministic_from_seed(tiny_model):
    again = load_model("zsl-tiny", "random:0", device="cpu")
    other = load_model("zsl-tiny", "random:1", device="cpu")
    e0, e1, e2 = (m.encode_texts(["a red crest"]) for m in (tiny_model, again, other))
    assert (e0 == e1).all() and not (e0 == e2).all()
    assert tiny_model.fingerprint == "zsl-tiny/random:0" and tiny_model.embed_dim == 128


def test_weights_file_round_trip_and_fingerprint(tmp_path, tiny_model):
    path = tmp_path / "w.pt"
    torch.save(tiny_model.model.state_dict(), path)
    m = load_model("zsl-tiny", str(path), device="cpu")
    assert m.fingerprint == f"zsl-tiny/sha256:{sha256_file(path)[:16]}"
    assert (m.encode_texts(["x"]) == tiny_model.encode_texts(["x"])).all()


def test_offline_tag_fails_fast_with_instructions():
    t0 = time.perf_counter()
    with pytest.raises(ModelLoadError, match="local-dir:"):
        load_model("ViT-B-32", "openai", device="cpu")
    assert time.perf_counter() - t0 < 20


@pytest.mark.parametrize("name,tag,match", [("ViT-Nope", "openai", "Unknown model"), ("ViT-B-32", "no-such-tag", "neither a file")])
def test_bad_names_are_clear(name, tag, match):
    with pytest.raises(ModelLoadError, match=match):
        load_model(name, tag, device="cpu")


def test_cuda_request_without_cuda_is_clear():
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(ModelLoadError, match="CUDA is not available"):
        load_model("zsl-tiny", "random:0", device="cuda")


def test_shipped_weights_match_their_records_and_load_by_tag():
    """Every data/*.pt is the file its <tag>.json record describes (bytes, sha256, fp16), and
    the two toy bird encoders ship: toy-clip (captions grouped per bird) and toy-clip-unbound
    (scene-level captions, the weak-binding encoder); both load by tag and differ."""
    import json

    from pipeline.models import list_project_weights

    shipped = list_project_weights()
    assert {"toy-clip", "toy-clip-unbound"} <= set(shipped)
    for tag, path in shipped.items():
        record = json.loads(path.with_suffix(".json").read_text())
        assert record["weights"] == path.name and record["dtype"] == "float16"
        assert record["bytes"] == path.stat().st_size and record["sha256"] == sha256_file(path), tag
    assert json.loads(shipped["toy-clip-unbound"].with_suffix(".json").read_text())["views"]["captions"] == "unbound"
    bound, unbound = (load_model(None, tag, device="cpu") for tag in ("toy-clip", "toy-clip-unbound"))
    assert bound.fingerprint != unbound.fingerprint
    e0, e1 = (m.encode_texts(["a bird with a red crest"]) for m in (bound, unbound))
    assert e0.shape == e1.shape and abs(e0 - e1).max() > 1e-3
