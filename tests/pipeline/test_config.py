"""pipeline.config: presets as data, validation at the edge, and the resolution rule."""
import math
import re

import pytest

from pipeline.config import RegionConfig, get_preset, list_presets, recorded_preset, resolve_region_config
from pipeline.stages.methods import MethodConfig, resolve_method_config
from pipeline.errors import InputError


def test_lazsl_presets_hold_the_published_table():
    def values(name):
        p = get_preset(name)
        return dict(crop_min=p.regions["crop_min"], theta=p.method["theta"], n_crops=p.regions["n_crops"])

    assert values("imagenet-b32") == dict(crop_min=0.6, theta=0.8, n_crops=90)
    assert values("imagenet-l14") == dict(crop_min=0.6, theta=0.8, n_crops=70)
    assert values("cub-b32") == dict(crop_min=0.5, theta=0.95, n_crops=80)
    assert values("pets-b16")["theta"] == 0.2
    assert values("places365-b16") == dict(crop_min=0.4, theta=0.8, n_crops=60)
    assert values("imagenet-a-b16") == dict(crop_min=0.5, theta=0.95, n_crops=90)
    names = {p.name for p in list_presets()}
    assert {"imagenet-v2-b16", "imagenet-r-b16", "imagenet-s-b16", "food101-l14", "toy-demo"} <= names
    assert len([n for n in names if not n.startswith(("toy-", "wca-"))]) == 5 * 3 + 4
    assert (get_preset("toy-all").regions["n_parts"], get_preset("toy-all").regions["n_views"]) == (60, 50)
    # object-bound's default: at most 61 regions per image (LaZSL's cost), scale-free crop sides
    bound = get_preset("toy-bound").region_config()
    assert 1 + bound.n_crops + bound.n_parts + bound.n_views <= 61 and bound.crop_sides == "log-uniform"


@pytest.mark.parametrize("field,value,msg", [
    ("theta", 2.0, "--theta must be >= 0.0 and <= 1.0 (got 2.0)"), ("theta", -0.1, "--theta must be >= 0.0 and <= 1.0 (got -0.1)"),
    ("eps", 0.0, "--eps must be >= 0.001 and <= 100.0 (got 0.0)"), ("eps", math.nan, "finite"), ("top_k", -3, "--top-k must be >= 0 and <= 1000000000 (got -3)"),
    ("tol", 0.0, "--tol must be > 0.0 and <= 1000.0 (got 0.0)"), ("wca_score", "both", "must be one of code, paper"),
])
def test_method_config_refuses_bad_values_with_the_option_name(field, value, msg):
    with pytest.raises(InputError, match=re.escape(msg)):
        MethodConfig(**{field: value})


def test_region_config_validates_and_round_trips():
    cfg = RegionConfig(n_crops=80, crop_min=0.5)
    assert RegionConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(InputError, match=r"--n-crops must be >= 1 and <= 1024 \(got 0\)"):
        RegionConfig(n_crops=0)
    with pytest.raises(InputError, match=r"--crop-min must be > 0.0 and <= 0.9 \(got 0.0\)"):
        RegionConfig(crop_min=0.0)
    with pytest.raises(InputError, match="Unknown RegionConfig"):
        RegionConfig.from_dict({"n_crop": 3})


def test_resolution_options_over_preset_over_store_over_defaults():
    # nothing anywhere: the defaults
    r = resolve_method_config({"theta": None})
    assert r.config == MethodConfig() and r.preset is None and r.notes == ()
    # the store's recorded preset fills what the options leave open, and says so
    stored = recorded_preset([{"preset": None}, {"preset": "cub-b32"}])
    assert stored == "cub-b32"
    r = resolve_method_config({"theta": None, "top_k": 10}, store_preset=stored)
    assert (r.config.theta, r.config.top_k) == (0.95, 10)
    assert r.origins["theta"].startswith("store") and r.origins["top_k"] == "option"
    assert "theta=0.95 from the store's preset cub-b32" in r.notes[0]
    # an explicit option overrides the store's preset, saying so
    r = resolve_method_config({"theta": 0.5}, store_preset="cub-b32")
    assert r.config.theta == 0.5 and "overrides preset cub-b32's theta=0.95" in r.notes[-1]
    # --preset beats the store's preset
    r = resolve_method_config({}, preset="pets-b16", store_preset="cub-b32")
    assert r.config.theta == 0.2 and r.preset == "pets-b16"
    with pytest.raises(InputError, match="Unknown preset"):
        resolve_method_config({}, preset="nope")


def test_region_resolution():
    r = resolve_region_config({"n_crops": None, "crop_min": None}, "imagenet-b32")
    assert (r.config.n_crops, r.config.crop_min) == (90, 0.6)
    r = resolve_region_config({"n_crops": 12}, "imagenet-b32")
    assert r.config.n_crops == 12 and r.notes
