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
