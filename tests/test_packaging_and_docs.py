"""pyproject.toml points only at files that exist, the README's links resolve, and the error lines
docs/troubleshooting.md quotes are the ones the CLI prints (issue 23 point 9)."""

from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import pytest

from citrus_v.cli import main

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    tomllib = pytest.importorskip("tomli")

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = ROOT / "pyproject.toml"
TROUBLESHOOTING = ROOT / "docs" / "troubleshooting.md"


def _project() -> dict:
    return tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))


def test_pyproject_readme_and_license_files_exist():
    project = _project()["project"]
    assert (ROOT / project["readme"]).is_file()
    for pattern in project.get("license-files", []):
        assert list(ROOT.glob(pattern)), f"license-files {pattern!r} matches nothing"
    assert "Apache License" in (ROOT / "LICENSE").read_text(encoding="utf-8")[:200]


def test_pyproject_package_data_globs_match_files():
    data = _project()["tool"]["setuptools"]["package-data"]
    for package, patterns in data.items():
        base = ROOT / package.replace(".", "/")
        for pattern in patterns:
            assert [p for p in base.glob(pattern) if p.is_file()], f"package-data {package}: {pattern!r} matches no file"


def test_pyproject_scripts_resolve_to_callables():
    for name, target in _project()["project"]["scripts"].items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), f"[project.scripts] {name} = {target}"


def test_paths_named_in_pyproject_comments_exist():
    named = re.findall(r"\b((?:docs|scripts|citrus_v|configs|tests)/[\w./-]*\w)", PYPROJECT.read_text(encoding="utf-8"))
    missing = [p for p in named if not (ROOT / p).exists()]
    assert not missing, f"pyproject.toml names paths that do not exist: {missing}"


def test_readme_links_resolve_and_include_troubleshooting():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    links = [link.split("#")[0] for link in re.findall(r"\]\(([^)\s]+)\)", text)]
    local = [link for link in links if link and not link.startswith(("http://", "https://", "mailto:"))]
    assert "docs/troubleshooting.md" in local
    assert all((ROOT / link).exists() for link in local), [link for link in local if not (ROOT / link).exists()]


def _error_line(argv: list[str], capsys) -> str:
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    assert code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return lines[0]


def test_the_error_lines_the_troubleshooting_page_quotes_are_the_real_ones(tmp_path, capsys):
    doc = TROUBLESHOOTING.read_text(encoding="utf-8")
    png, data, model = tmp_path / "X.png", tmp_path / "X.jsonl", tmp_path / "DIR"
    ct = ROOT / "citrus_v" / "assets" / "examples" / "ct_abdomen_liver.dcm"
    prompt = ["--prompt", "Please segment the liver."]
    cases = {
        "missing image": (["predict", "--image", str(png), *prompt], {str(png): "X.png"}),
        "missing data": (["train", "--stage", "4", "--data", str(data), "--out", str(tmp_path / "o")], {str(data): "X.jsonl"}),
        "missing model": (["predict", "--image", str(ct), *prompt, "--model", str(model)], {str(model): "DIR"}),
        "reserved token": (["predict", "--image", str(ct), "--prompt", "Please segment the [SEG] liver."], {}),
    }
    for name, (argv, replace) in cases.items():
        line = _error_line(argv, capsys)
        for real, shown in replace.items():
            line = line.replace(real, shown)
        head = line.split(" (")[0]
        assert head in doc, f"{name}: the page does not quote {line!r}"
