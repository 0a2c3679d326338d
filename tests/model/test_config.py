import dataclasses

import pytest

from citrus_v.config import CitrusVConfig, LLMConfig, SegmenterConfig


def test_presets_validate_and_round_trip_through_dict():
    for name in ("tiny", "8b"):
        config = CitrusVConfig.preset(name)
        again = CitrusVConfig.from_dict(config.to_dict())
        assert again == config
    assert CitrusVConfig.preset("8b").segmenter.image_size == 1024
    assert CitrusVConfig.preset("tiny").segmenter.image_size < 1024
    assert CitrusVConfig.preset("8b").tokens.seg_token_id == 151665
    assert CitrusVConfig.preset("tiny").tokens.seg_token_id == 10


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match=r"'huge'.*\['8b', 'tiny', 'tiny_litemedsam'\]"):
        CitrusVConfig.preset("huge")


def test_bad_fields_are_named():
    llm = dataclasses.asdict(CitrusVConfig.preset("tiny").llm)
    with pytest.raises(ValueError, match=r"LLMConfig.mrope_section"):
        LLMConfig(**{**llm, "mrope_section": [8, 8, 8]})
    with pytest.raises(ValueError, match=r"LLMConfig.num_key_value_heads"):
        LLMConfig(**{**llm, "num_key_value_heads": 3})
    seg = dataclasses.asdict(CitrusVConfig.preset("tiny").segmenter)
    with pytest.raises(ValueError, match=r"SegmenterConfig.image_size.*250"):
        SegmenterConfig(**{**seg, "image_size": 250})
    data = CitrusVConfig.preset("tiny").to_dict()
    data["tokens"]["seg_token_id"] = 5000
    with pytest.raises(ValueError, match=r"tokens.seg_token_id.*5000.*4096"):
        CitrusVConfig.from_dict(data)
    data = CitrusVConfig.preset("tiny").to_dict()
    data["llm"]["hidden"] = 3
    with pytest.raises(ValueError, match=r"CitrusVConfig.llm: unknown field\(s\) \['hidden'\]"):
        CitrusVConfig.from_dict(data)


def test_presets_are_objects_that_say_what_they_are():
    from citrus_v.config import PRESETS, Preset, get_preset

    assert all(isinstance(p, Preset) and p.name == name for name, p in PRESETS.items())
    assert {name for name, p in PRESETS.items() if p.cpu_sized} == {"tiny", "tiny_litemedsam"}
    assert get_preset("8b").config().llm.hidden_size == 3584
    assert get_preset("tiny").config() is not get_preset("tiny").config()  # a fresh config each call
    with pytest.raises(ValueError, match=r"unknown config preset 'big'; choose one of \['8b', 'tiny', 'tiny_litemedsam'\]"):
        get_preset("big")
