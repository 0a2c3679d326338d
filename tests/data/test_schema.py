"""The Record schema: one type for every task, JSONL round trip, loud validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from citrus_v.data.schema import Message, Objects, Record, RecordError, SkipReport, read_jsonl, write_jsonl

ONE_PER_TASK = [
    {"messages": [{"role": "user", "content": "<image>Is there a fracture?"}, {"role": "assistant", "content": "no"}], "images": ["a.png"], "task": "vqa_closed"},
    {"messages": [{"role": "user", "content": "<image>What organ?"}, {"role": "assistant", "content": "liver"}], "images": ["a.png"], "task": "vqa_open"},
    {"messages": [{"role": "user", "content": "<image>Why?"}, {"role": "assistant", "content": "<think>x</think><answer>y</answer>"}], "images": ["a.png"], "task": "cot"},
    {"messages": [{"role": "user", "content": "<image>Report."}, {"role": "assistant", "content": "Findings: ok. Impression: normal."}], "images": ["a.png"], "task": "report"},
    {"messages": [{"role": "user", "content": "<image>Find the nodule."}, {"role": "assistant", "content": "```json\n[]\n```"}], "images": ["a.png"],
     "objects": {"ref": ["nodule"], "bbox": [[1, 2, 30, 40]]}, "task": "detection"},
    {"messages": [{"role": "user", "content": "<image>Segment the liver."}, {"role": "assistant", "content": "Sure, it is [SEG]."}], "images": ["a.png"], "masks": ["m.png"], "task": "segmentation", "modality": "CT"},
    {"messages": [{"role": "user", "content": "<image>Date?"}, {"role": "assistant", "content": "2024-01-01"}], "images": ["d.png"], "task": "document"},
    {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is HU?"}, {"role": "assistant", "content": "Hounsfield units."}], "task": "text", "meta": {"k": 1}},
]


def test_jsonl_round_trip_is_exact_for_every_task(tmp_path: Path):
    recs = [Record.from_dict(d) for d in ONE_PER_TASK]
    assert write_jsonl(recs, tmp_path / "d.jsonl") == len(ONE_PER_TASK)
    lines = [json.loads(x) for x in (tmp_path / "d.jsonl").read_text().splitlines()]
    assert lines == ONE_PER_TASK  # the published keys, nothing added or lost
    assert [r.to_dict() for r in read_jsonl(tmp_path / "d.jsonl")] == ONE_PER_TASK


def test_bookkeeping_errors_name_the_field():
    base = dict(ONE_PER_TASK[5])
    with pytest.raises(RecordError, match=r"field 'masks': 1 \[SEG\] tokens in assistant messages but 2 masks"):
        Record.from_dict({**base, "masks": ["a.png", "b.png"]})
    with pytest.raises(RecordError, match=r"field 'images': 1 '<image>' placeholders but 0 images"):
        Record.from_dict({**base, "images": []})
    with pytest.raises(RecordError, match=r"field 'objects': 2 refs but 1 boxes"):
        Record.from_dict({**ONE_PER_TASK[4], "objects": {"ref": ["a", "b"], "bbox": [[0, 0, 1, 1]]}})
    with pytest.raises(RecordError, match=r"field 'objects.bbox\[0\]': box has x2<x1"):
        Record(messages=[Message("user", "x"), Message("assistant", "y")], objects=Objects(["a"], [[5, 0, 1, 1]]))
    with pytest.raises(RecordError, match=r"field 'task'"):
        Record.from_dict({**ONE_PER_TASK[7], "task": "dance"})
    with pytest.raises(RecordError, match=r"field 'messages\[0\].role'"):
        Record.from_dict({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]})
    with pytest.raises(RecordError, match="no assistant message"):
        Record.from_dict({"messages": [{"role": "user", "content": "x"}]})
    with pytest.raises(RecordError, match=r"field 'extra': unknown keys"):
        Record.from_dict({**ONE_PER_TASK[7], "extra": 1})


def test_read_jsonl_reports_file_line_and_skips_only_when_asked(tmp_path: Path):
    f = tmp_path / "d.jsonl"
    f.write_text(json.dumps(ONE_PER_TASK[0]) + "\n\n" + '{"messages": []}\n' + "[1]\n" + json.dumps(ONE_PER_TASK[1]) + "\n")
    with pytest.raises(RecordError, match=rf"^{f}:3: field 'messages': must be a non-empty list") as info:
        read_jsonl(f)
    assert (info.value.line, info.value.field) == (3, "messages")
    report = SkipReport()
    recs = read_jsonl(f, skip_invalid=True, report=report)
    assert len(recs) == 2 and report.count == 2 and [ln for ln, _ in report.skipped] == [3, 4]
    assert "a record must be a JSON object" in report.skipped[1][1]
