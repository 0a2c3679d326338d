"""Every subcommand turns a user error into ONE line on stderr naming the file or field, exit status 2,
no traceback; ``--debug`` (before or after the subcommand) shows the traceback instead."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from citrus_v.cli import main
from citrus_v.data.schema import RecordError

ROOT = Path(__file__).resolve().parents[1]
# a record with no assistant message: every reader of records must refuse it
BAD_RECORD = {"messages": [{"role": "user", "content": "<image>Segment the liver."}], "images": ["a.png"]}


@pytest.fixture()
def files(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "bad.jsonl").write_text(json.dumps(BAD_RECORD) + "\n")
    (tmp_path / "notes.txt").write_text("not an image\n")
    (tmp_path / "vqa.json").write_text("[1, 2]")  # VQA-RAD wants a list of objects
    (tmp_path / "empty_model").mkdir()
    return {p.name: p for p in tmp_path.iterdir()} | {"missing": tmp_path / "missing", "tmp": tmp_path}


def cases(f: dict[str, Path]) -> dict[str, tuple[list[str], str]]:
    """subcommand -> (argv, what its one stderr line must say)."""
    bad, out = str(f["bad.jsonl"]), str(f["tmp"] / "out")
    record_error = f"{bad}:1: field 'messages': has no assistant message"
    return {
        "predict missing image": (["predict", "--image", str(f["missing"]), "--prompt", "x"],
                                  f"citrus-v predict: --image {f['missing']}: no such file"),
        "predict unsupported file": (["predict", "--image", str(f["notes.txt"]), "--prompt", "x"],
                                     f"citrus-v predict: {f['notes.txt']}: unsupported file type '.txt'"),
        "predict reserved token": (["predict", "--image", str(f["notes.txt"]), "--prompt", "the liver [SEG]"],
                                   "citrus-v predict: --prompt contains the reserved token [SEG]"),
        "predict flag combination": (["predict", "--image", str(f["notes.txt"]), "--volume", str(f["tmp"]), "--prompt", "x"],
                                     "citrus-v predict: give --image or --volume, not both"),
        "eval": (["eval", "--data", bad, "--out", out], f"citrus-v eval: {record_error}"),
        "train": (["train", "--stage", "3", "--data", bad, "--out", out], f"citrus-v train: {record_error}"),
        "data validate": (["data", "validate", bad], f"citrus-v data validate: {record_error}"),
        "data convert": (["data", "convert", "--format", "vqa-rad", str(f["vqa.json"]), "--out", out],
                         f"citrus-v data convert: {f['vqa.json']}:0: item is int, not an object"),
        "data show": (["data", "show", str(f["missing"])], f"citrus-v data show: [Errno 2] No such file or directory: '{f['missing']}'"),
        "serve": (["serve", "--model", str(f["empty_model"])],
                  f"citrus-v serve: {f['empty_model'] / 'config.json'}: missing (a model folder needs config.json)"),
        "bench": (["bench", "--model", str(f["missing"]), "--out", out], f"citrus-v bench: {f['missing']}: no such model folder"),
        "warmup-vision": (["warmup-vision", "--data", str(f["missing"]), "--out", out],
                          f"citrus-v warmup-vision: {f['missing']}: no such data file"),
        "train-seg-cached": (["train-seg-cached", "--data", str(f["missing"]), "--init", str(f["empty_model"]), "--out", out],
                             f"citrus-v train-seg-cached: {f['empty_model']}: --init must be a model folder"),
    }  # fmt: skip


CASE_NAMES = ["predict missing image", "predict unsupported file", "predict reserved token", "predict flag combination", "eval", "train",
              "data validate", "data convert", "data show", "serve", "bench", "warmup-vision", "train-seg-cached"]  # fmt: skip


@pytest.mark.parametrize("name", CASE_NAMES)
def test_a_user_error_is_one_line_and_status_2(name, files, capsys):
    argv, expected = cases(files)[name]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(expected), err
    assert "Traceback" not in err


def test_a_bad_flag_value_is_one_line_and_status_2(capsys):
    """argparse's own errors (describe's only input is --config) are one line too, not usage + error."""
    with pytest.raises(SystemExit) as exit_:
        main(["describe", "--config", "big"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("citrus-v describe: error: argument --config: invalid choice: 'big'")


def test_debug_shows_the_error_itself(files, capsys):
    argv, _ = cases(files)["data validate"]
    with pytest.raises(RecordError, match="has no assistant message"):
        main(["--debug", *argv])
    with pytest.raises(RecordError):
        main([*argv, "--debug"])  # after the subcommand as well


def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "citrus_v.cli", *argv], cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_the_installed_command_prints_one_line_and_debug_prints_the_traceback(files):
    plain = _run("data", "validate", str(files["bad.jsonl"]))
    assert plain.returncode == 2 and "Traceback" not in plain.stderr
    assert plain.stderr.splitlines() == [f"citrus-v data validate: {files['bad.jsonl']}:1: field 'messages': has no assistant message"]
    debug = _run("--debug", "data", "validate", str(files["bad.jsonl"]))
    assert debug.returncode == 1 and "Traceback (most recent call last)" in debug.stderr
    assert debug.stderr.rstrip().splitlines()[-1].startswith("citrus_v.data.schema.RecordError:")
