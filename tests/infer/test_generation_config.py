"""A model folder's generation_config.json sets the generation defaults; flags and requests override it (issue 20 point 2)."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image

from citrus_v import cli
from citrus_v.infer.generation import GenerationSettings
from citrus_v.infer.generation_config import GenerationConfigError, merge_settings, read_generation_config, settings_from_dict
from citrus_v.infer.predictor import Predictor
from citrus_v.serve.predictor_adapter import to_generation_settings
from citrus_v.serve.schemas import SamplingParams
from tests.infer.conftest import ScriptedHead

# the shape of Qwen2.5-VL's generation_config.json: sampling knobs, a penalty and two end tokens
QWEN_STYLE = {"bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
              "repetition_penalty": 1.05, "temperature": 0.1, "top_p": 0.001, "top_k": 1}


def test_a_qwen_style_file_becomes_the_settings():
    s = settings_from_dict(QWEN_STYLE)
    assert (s.do_sample, s.temperature, s.top_p, s.top_k, s.repetition_penalty) == (True, 0.1, 0.001, 1, 1.05)
    assert s.stop_token_ids == (151645, 151643) and s.max_new_tokens == GenerationSettings().max_new_tokens


def test_fields_left_out_take_transformers_defaults():
    s = settings_from_dict({"do_sample": True})
    assert (s.temperature, s.top_p, s.top_k, s.repetition_penalty, s.stop_token_ids) == (1.0, 1.0, 50, 1.0, ())
    assert settings_from_dict({"max_new_tokens": 77, "max_length": 5}).max_new_tokens == 77  # max_length is ignored


@pytest.mark.parametrize("data", [{}, {"do_sample": False, "temperature": 0.7}, {"do_sample": True, "temperature": 0}])
def test_greedy_unless_the_file_samples_at_a_positive_temperature(data):
    assert settings_from_dict(data).do_sample is False


@pytest.mark.parametrize(
    "data, fragment",
    [({"top_p": 0}, "top_p: must be in (0, 1]"), ({"temperature": "hot"}, "temperature must be a finite number"),
     ({"eos_token_id": "x"}, "eos_token_id must be a token id"), ({"do_sample": "yes"}, "do_sample must be true or false"),
     ({"top_k": -1}, "top_k must be an int >= 0"), ({"repetition_penalty": 0}, "repetition_penalty: must be in (0, 10]")],
)
def test_bad_fields_name_the_file_and_field(tmp_path, data, fragment):
    (tmp_path / "generation_config.json").write_text(json.dumps(data))
    with pytest.raises(GenerationConfigError) as err:
        read_generation_config(tmp_path)
    assert str(err.value).startswith(str(tmp_path / "generation_config.json")) and fragment in str(err.value)


def test_no_file_means_no_defaults(tmp_path):
    assert read_generation_config(tmp_path) is None


def test_overrides_replace_single_fields_as_ms_swift_merges_a_request():
    base = settings_from_dict(QWEN_STYLE)
    assert merge_settings(base, temperature=None, top_p=None) == base
    greedy = merge_settings(base, temperature=0)
    assert greedy.do_sample is False and greedy.repetition_penalty == 1.05 and greedy.stop_token_ids == base.stop_token_ids
    hot = merge_settings(GenerationSettings(), temperature=0.7, top_k=5)
    assert (hot.do_sample, hot.temperature, hot.top_k) == (True, 0.7, 5)
    # a request through the server: unset knobs keep the folder's, set ones win
    served = to_generation_settings(SamplingParams(30, top_p=0.5, repetition_penalty=1.2), base)
    assert (served.max_new_tokens, served.do_sample, served.temperature, served.top_p, served.top_k, served.repetition_penalty) == (
        30, True, 0.1, 0.5, 1, 1.2)


def test_generate_kwargs_carry_the_penalty_and_stop_ids():
    kwargs = GenerationSettings(repetition_penalty=1.3, stop_token_ids=(9, 2)).generate_kwargs(eos_token_id=2, pad_token_id=0)
    assert kwargs["repetition_penalty"] == 1.3 and kwargs["eos_token_id"] == [2, 9]
    plain = GenerationSettings().generate_kwargs(eos_token_id=2, pad_token_id=0)
    assert plain["repetition_penalty"] is None and plain["eos_token_id"] == 2


@pytest.fixture()
def folder(tiny_dir, tmp_path):
    """A copy of the tiny model folder (the shared one stays without generation_config.json)."""
    return shutil.copytree(tiny_dir, tmp_path / "model")


def test_the_predictor_reads_the_folder_and_flags_win(folder):
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.1, "max_new_tokens": 40, "top_k": 3}))
    assert Predictor.from_pretrained(folder).settings == GenerationSettings(max_new_tokens=40, top_k=3, repetition_penalty=1.1)
    flagged = Predictor.from_pretrained(folder, generation={"max_new_tokens": 9, "top_k": None})
    assert (flagged.settings.max_new_tokens, flagged.settings.top_k, flagged.settings.repetition_penalty) == (9, 3, 1.1)
    given = GenerationSettings(max_new_tokens=5)
    assert Predictor.from_pretrained(folder, settings=given).settings == given  # explicit settings: the file is not read


def test_a_folder_stop_token_ends_the_answer(folder, image):
    predictor = Predictor.from_pretrained(folder)
    text = predictor.tokenizer.encode("The liver and the spleen. Impression: normal.", add_special_tokens=False)
    cut = next(i for i in range(3, len(text)) if text[i] not in text[:i])  # a token first met mid-answer
    stop = [text[cut]]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": stop[0]}))
    stopping = Predictor.from_pretrained(folder)
    answers = {}
    for name, p in (("plain", predictor), ("stopping", stopping)):
        head = p.model.mllm.lm_head
        p.model.mllm.lm_head = ScriptedHead(head, text + [p.eos_token_id])
        try:
            answers[name] = p.predict([image], "What organ is shown?", settings=None)
        finally:
            p.model.mllm.lm_head = head
    assert answers["plain"].num_generated_tokens == len(text) + 1  # ran to <|im_end|>
    assert answers["stopping"].num_generated_tokens == text.index(stop[0]) + 1  # ended on the folder's stop token
    assert answers["stopping"].answer != answers["plain"].answer and "normal" in answers["plain"].answer


def test_predict_json_reports_the_settings_used(folder, image, tmp_path, capsys):
    (folder / "generation_config.json").write_text(json.dumps({"repetition_penalty": 1.1, "eos_token_id": [2, 7]}))
    png = tmp_path / "scan.png"
    Image.fromarray(image).save(png)
    argv = ["predict", "--image", str(png), "--prompt", "What organ?", "--model", str(folder), "--json",
            "--max-new-tokens", "3", "--top-k", "4"]
    assert cli.main(argv) == 0
    report = json.loads(capsys.readouterr().out)["generation"]
    assert report == {"max_new_tokens": 3, "do_sample": False, "temperature": 1.0, "top_p": 1.0, "top_k": 4, "seed": None,
                      "repetition_penalty": 1.1, "stop_token_ids": [2, 7],
                      "defaults_from": str(folder / "generation_config.json")}


def test_a_bad_flag_is_named(folder, image, tmp_path, capsys):
    png = tmp_path / "scan.png"
    Image.fromarray(image).save(png)
    assert cli.main(["predict", "--image", str(png), "--prompt", "x", "--model", str(folder), "--top-p", "0"]) == 2
    assert "--top-p: must be in (0, 1]" in capsys.readouterr().err
