"""The public API is one import, the README's Python example runs, and loading prints nothing."""

from __future__ import annotations

import logging
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_import_citrus_v_is_light_and_names_load_on_use():
    code = (
        "import sys, citrus_v; light = 'torch' not in sys.modules and 'transformers' not in sys.modules; "
        "from citrus_v import Predictor, CitrusV; "
        "from citrus_v.infer.predictor import Predictor as P; from citrus_v.model.citrus_v import CitrusV as C; "
        "print(light, Predictor is P, CitrusV is C, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["True", "True", "True", "True"], out.stderr


def test_an_unknown_name_is_an_attribute_error():
    import citrus_v

    with pytest.raises(AttributeError, match="no attribute 'Predicter'"):
        citrus_v.Predicter  # noqa: B018
    assert {"Predictor", "CitrusV", "CitrusVConfig", "UserError"} <= set(dir(citrus_v))


def test_py_typed_ships():
    assert (ROOT / "citrus_v" / "py.typed").is_file()
    package_data = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["citrus_v"]
    assert "py.typed" in package_data


def readme_python_example() -> str:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("From Python"):]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_the_readme_python_example_runs_and_prints_what_it_says(monkeypatch, capsys):
    code = readme_python_example()
    assert len(code.strip().splitlines()) <= 5 and "from citrus_v import Predictor" in code
    promised = code.strip().splitlines()[-1].split("# ")[-1]  # the comment on the print line
    monkeypatch.chdir(ROOT)  # the example runs from the repository root
    exec(compile(code, "README.md", "exec"), {})
    assert capsys.readouterr().out.strip() == promised


def test_loading_the_default_model_prints_and_logs_no_warning(capfd, caplog):
    from citrus_v import Predictor

    with caplog.at_level(logging.WARNING):
        predictor = Predictor.from_pretrained()
    out, err = capfd.readouterr()
    assert (out, err) == ("", "")
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert predictor.model.config.name  # it did load
