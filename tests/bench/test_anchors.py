"""The anchors' JSON line is found in their logs, and a failed anchor is reported, not dropped."""

from __future__ import annotations

from citrus_v.bench.anchors import last_json


def test_the_last_json_line_wins_over_earlier_ones_and_chatter(tmp_path):
    log = tmp_path / "hf_baseline.log"
    log.write_text('loading...\n{"decode_tok_s_b1": 1.0}\nwarning: slow\n{"decode_tok_s_b1": 27.7, "gpu": "H200"}\ndone\n')
    assert last_json(log) == {"decode_tok_s_b1": 27.7, "gpu": "H200"}


def test_a_log_without_json_gives_its_tail_as_the_error(tmp_path):
    log = tmp_path / "hf_compiled.log"
    log.write_text("x" * 2000 + "\nTraceback: compile timed out\n")
    out = last_json(log)
    assert list(out) == ["error"] and out["error"].endswith("compile timed out\n") and len(out["error"]) == 1500
    assert last_json(tmp_path / "missing.log") == {"error": "no log"}


def test_call_record_gathers_the_command_commit_gpu_and_both_anchors(tmp_path):
    from citrus_v.bench.anchors import call_record

    (tmp_path / "gpu.txt").write_text("NVIDIA H200, 143771 MiB, 570.1\n")
    (tmp_path / "hf_baseline.log").write_text('loading\n{"decode_tok_s_b1": 27.7}\n')
    rec = call_record(tmp_path, "bash scripts/x.sh")
    assert rec["command"] == "bash scripts/x.sh" and rec["gpu"] == "NVIDIA H200, 143771 MiB, 570.1"
    assert rec["hf_baseline"] == {"decode_tok_s_b1": 27.7}
    assert rec["hf_compiled"] == {"error": "no log"}  # an anchor that wrote nothing is named, not dropped
    assert rec["commit"] is None or len(rec["commit"]) == 40
