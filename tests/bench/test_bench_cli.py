"""`citrus-v bench --config tiny` end to end (tiny sizes), and the ratios' arithmetic."""

from __future__ import annotations

import json

import pytest
import torch

from citrus_v.bench import measure
from citrus_v.cli import main


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench")
    assert main(["bench", "--config", "tiny", "--out", str(out), "--reps", "1", "--new-tokens", "4", "--skip", "b8"]) == 0
    return json.loads((out / "bench.json").read_text())


def test_json_has_every_figure(bench_json):
    r = bench_json
    for key in ("command", "model", "device", "machine_before", "prefill_ms_b1", "decode_tok_s_b1",
                "fast_vs_plain_decode_ratio", "predict_with_mask_s", "predict_with_mask_plain_s",
                "sam2_encoder_ms", "sam2_decoder_ms", "train"):  # fmt: skip
        assert key in r, key
    assert r["command"].startswith("citrus-v bench --config tiny --out ")
    assert r["model"].startswith("random tiny") and r["device"] == "cpu"
    assert r["decode_tok_s_b1"]["plain"] > 0 and r["decode_tok_s_b1"]["fast"] > 0
    assert r["segmentation_request"]["answer_tokens"] == r["sizes"]["answer_tokens"] == 16
    assert r["train"]["text_tokens"] == 512 and r["train"]["text_TFLOPs"] > 0
    assert "load_average_1_5_15" in r["machine_before"]


def test_ratios_are_computed_from_the_measured_figures(bench_json):
    d = bench_json["decode_tok_s_b1"]
    assert bench_json["fast_vs_plain_decode_ratio"] == pytest.approx(d["fast"] / d["plain"], abs=2e-3)
    q = bench_json["segmentation_request"]
    assert bench_json["fast_vs_plain_request_ratio"] == pytest.approx(q["plain_s"] / q["fast_s"], abs=2e-3)


def test_decode_rate_arithmetic(monkeypatch):
    """(t(N) - t(1)) / (N - 1) per row, from whatever the timer says."""
    fake = {"plain_n": 1.0, "plain_1": 0.1, "fast_n": 0.5, "fast_1": 0.05}
    monkeypatch.setattr(measure, "best_times", lambda fns, reps, device: {k: fake[k] for k in fns})
    model = torch.nn.Module()
    model.mllm = torch.nn.Linear(1, 1)  # never called: the timer is faked
    monkeypatch.setattr(measure, "synthetic_inputs", lambda *a, **k: {})
    sizes = measure.BenchSizes.for_size(cpu_sized=True)
    monkeypatch.setattr("citrus_v.infer.fast.FastDecoder.__init__", lambda self, mllm, compile=False: None)
    model.config = type("C", (), {"tokens": type("T", (), {"pad_token_id": 0})()})()
    rates = measure.decode_rates(model, sizes, 8, torch.device("cpu"), torch.float32)
    n = sizes.new_tokens
    assert rates["plain"] == pytest.approx(8 * (n - 1) / 0.9, abs=0.1)
    assert rates["fast"] == pytest.approx(8 * (n - 1) / 0.45, abs=0.1)
    assert rates["fast_vs_plain"] == pytest.approx(2.0, abs=1e-3)


def test_unknown_skip_is_refused(tmp_path, capsys):
    assert main(["bench", "--config", "tiny", "--out", str(tmp_path), "--skip", "decode"]) == 2
    assert capsys.readouterr().err == "citrus-v bench: --skip has unknown part(s) ['decode']\n"


def test_main_job_reports_medians_and_their_ratio(monkeypatch):
    """The README's main job on the bench's tiny random model: every figure present, medians of the
    interleaved calls, the ratio computed from them (the timer is faked after one real call each)."""
    import argparse

    from citrus_v.bench.commands import _load

    _, predictor, _ = _load(argparse.Namespace(model=None, config="tiny"), torch.device("cpu"), torch.float32)
    predictor.settings = type(predictor.settings)(max_new_tokens=4)  # a random model need not stop early
    fake = {"with_mask_plain": [0.9, 0.5, 0.7], "with_mask_fast": [0.4, 0.6, 0.5], "generate_alone": [0.2, 0.1, 0.3]}

    def one_real_call_each(fns, reps, device):
        for fn in fns.values():
            fn()
        return {name: fake[name] for name in fns}

    monkeypatch.setattr(measure, "all_times", one_real_call_each)
    job = measure.main_job(predictor, 3, torch.device("cpu"))
    assert job["image"] == "ct_abdomen_liver.dcm" and job["prompt"] == "Please segment the liver."
    assert (job["predict_with_mask_s"], job["predict_with_mask_fast_s"], job["generate_alone_s"]) == (0.7, 0.5, 0.2)
    assert job["with_mask_vs_generate_ratio"] == 3.5
    assert job["aggregate"] == "median" and job["same_answer_fast"] is True and isinstance(job["answer"], str)
    from citrus_v.bench.commands import format_table

    table = format_table({"prefill_ms_b1": 1.0, "fast_vs_plain_decode_ratio": 2.0, "main_job": job})
    assert "README main job, predict with a mask, s" in table and "plain generate alone 0.2 s: x3.5" in table
