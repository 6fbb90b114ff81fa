"""Configs (iris.config): JSON round trip, strict loading, variant sizes against the model card."""

from __future__ import annotations

import dataclasses
import json

import pytest

from iris.config import VARIANTS, GeneratorConfig, IrisConfig, TextConfig, VAEConfig, variant_config
from iris.errors import InvalidInputError, ModelLoadError
from iris.models.generator import IrisGenerator

CARD_GENERATOR_PARAMS = {"tiny": 19e6, "small": 47e6, "base": 135e6}  # seed/iris_model_card.md


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_json_round_trip_for_every_variant(name, tmp_path):
    cfg = variant_config(name)
    again = IrisConfig.from_dict(json.loads(cfg.to_json()))
    assert again == cfg
    assert isinstance(again.vae.channels, tuple) and isinstance(again.generator.train_iterations, tuple)
    cfg.save(tmp_path / "config.json")
    assert IrisConfig.load(tmp_path / "config.json") == cfg


def test_round_trip_keeps_non_default_values(tmp_path):
    cfg = IrisConfig(
        name="custom", resolution=96, distilled=True, adapters=["inpaint", "control_canny"],
        notes="ünïcødé ✓",
        vae=VAEConfig(channels=(8, 16), latent_channels=4, scale=0.7, shift=-0.1),
        text=TextConfig(kind="tiny", dim=64, vocab=[49406, 49407, 320]),
        generator=GeneratorConfig(dim=48, heads=3, patch_size=2, num_classes=10, train_iterations=(3, 5),
                                  latent_channels=4, text_dim=64),
    )
    cfg.save(tmp_path / "c.json")
    loaded = IrisConfig.load(tmp_path / "c.json")
    assert loaded == cfg
    assert loaded.vae.scale == pytest.approx(0.7) and loaded.text.vocab == [49406, 49407, 320]


def test_partial_dict_fills_defaults():
    cfg = IrisConfig.from_dict({"name": "x", "generator": {"dim": 96}})
    assert cfg.generator.dim == 96 and cfg.generator.heads == GeneratorConfig().heads
    assert cfg.vae == VAEConfig()
    assert IrisConfig.from_dict({}) == IrisConfig()


def test_integers_are_accepted_for_float_fields():
    cfg = IrisConfig.from_dict({"vae": {"scale": 2}})
    assert cfg.vae.scale == 2.0 and isinstance(cfg.vae.scale, float)


def test_whole_floats_are_accepted_for_int_fields():
    cfg = IrisConfig.from_dict({"generator": {"dim": 96.0}, "vae": {"channels": [32.0, 64]}})
    assert cfg.generator.dim == 96 and isinstance(cfg.generator.dim, int)
    assert cfg.vae.channels == (32, 64) and all(isinstance(c, int) for c in cfg.vae.channels)


def test_a_long_bad_value_is_shortened_in_the_error():
    with pytest.raises(ModelLoadError) as err:
        IrisConfig.from_dict({"name": ["y" * 500]})
    assert len(str(err.value)) < 200


@pytest.mark.parametrize("data,fragment", [
    ({"bogus": 1}, "bogus"),
    ({"generator": {"dimm": 64}}, "dimm"),
    ({"vae": {"channels": 64}}, "channels"),
    ({"generator": {"dim": "384"}}, "dim"),
    ({"generator": {"dim": True}}, "dim"),
    ({"distilled": "yes"}, "distilled"),
    ({"name": 5}, "name"),
    ({"sampler": {"guidance": None}}, "guidance"),
    ({"text": []}, "text"),
    ({"generator": {"dim": 192.5}}, "whole number"),
    ({"generator": {"dim": float("nan")}}, "whole number"),
    ({"vae": {"channels": [64, "128", 256]}}, r"channels\[1\]"),
    ({"vae": {"channels": [64, 128.5]}}, r"channels\[1\]"),
    ({"vae": {"scale": 10 ** 400}}, "too large"),
])
def test_from_dict_rejects_unknown_keys_and_wrong_types(data, fragment):
    with pytest.raises(ModelLoadError, match=fragment):
        IrisConfig.from_dict(data)


def test_load_rejects_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ModelLoadError, match="bad.json"):
        IrisConfig.load(bad)
    bad.write_text("[1, 2]")
    with pytest.raises(ModelLoadError, match="not a JSON object"):
        IrisConfig.load(bad)
    with pytest.raises(ModelLoadError):
        IrisConfig.load(tmp_path / "missing.json")


def test_variant_names():
    assert variant_config("IRIS-Tiny") == variant_config("tiny")
    assert variant_config("iris-nano").name == "iris-nano"
    with pytest.raises(InvalidInputError, match="unknown variant"):
        variant_config("huge")
    assert VAEConfig().downsample == 16 and VAEConfig(channels=(8,)).downsample == 4


def _generator_params(name: str) -> int:
    gen = IrisGenerator(variant_config(name).generator)
    return sum(p.numel() for p in gen.parameters())


@pytest.mark.parametrize("name", ["tiny", "small", "base"])
def test_variant_generator_sizes_match_the_model_card(name):
    count = _generator_params(name)
    card = CARD_GENERATOR_PARAMS[name]
    assert abs(count - card) / card < 0.10, f"{name}: {count / 1e6:.1f}M vs card {card / 1e6:.0f}M"


def test_nano_has_a_few_million_parameters():
    assert 1e6 <= _generator_params("nano") <= 10e6


def test_variants_are_independent_objects():
    a, b = variant_config("tiny"), variant_config("tiny")
    a.generator.dim = 1
    assert b.generator.dim == 320
    assert dataclasses.asdict(variant_config("nano"))["text"]["kind"] == "tiny"
