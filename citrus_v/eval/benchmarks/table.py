"""The benchmark table: one row per benchmark, one cell per reported number, each with its n,
protocol and aggregation; written as table.json and table.md."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

COMPUTED, NOT_COMPUTED, SKIPPED = "computed", "not computed", "skipped"


@dataclass(frozen=True)
class Cell:
    column: str
    value: float | None  # percent (0-100) except CIDEr (CIDEr-D x10 scale as computed)
    n: int
    protocol: str
    aggregation: str
    status: str = COMPUTED
    note: str = ""
    published: float | None = None  # Citrus-V 8B in the paper, when the paper gives this cell

    def __post_init__(self) -> None:
        if self.status not in (COMPUTED, NOT_COMPUTED, SKIPPED):
            raise ValueError(f"cell {self.column}: status {self.status!r}")
        if self.status != COMPUTED and self.value is not None:
            raise ValueError(f"cell {self.column}: a {self.status} cell has no value")


@dataclass
class Row:
    benchmark: str  # the --only name
    title: str  # the published table's row
    source: str  # the file read, or what was looked for
    cells: list[Cell] = field(default_factory=list)


def to_json(rows: list[Row], meta: dict) -> dict:
    return {"meta": meta, "units": "percent (0-100), except CIDEr (CIDEr-D scale)",
            "rows": [asdict(r) for r in rows]}


def _value(c: Cell) -> str:
    if c.status == COMPUTED:
        return "n/a" if c.value is None else f"{c.value:.1f}"
    return c.status


def to_markdown(rows: list[Row], meta: dict) -> str:
    lines = ["# citrus-v benchmark", "",
             f"Model: {meta.get('model')}. Values in percent except CIDEr; n = items aggregated; "
             "'published' = Citrus-V 8B as the paper reports it (its harness, not this one).", "",
             "| benchmark | column | value | n | published | protocol | aggregation | note |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        for c in r.cells:
            pub = "" if c.published is None else f"{c.published:.1f}"
            lines.append(f"| {r.title} | {c.column} | {_value(c)} | {c.n} | {pub} | {c.protocol} | "
                         f"{c.aggregation} | {c.note} |")
    lines += ["", "Sources: " + "; ".join(f"{r.title}: {r.source}" for r in rows)]
    return "\n".join(lines) + "\n"


def write(rows: list[Row], out: Path, meta: dict) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    pj, pm = out / "table.json", out / "table.md"
    pj.write_text(json.dumps(to_json(rows, meta), indent=2) + "\n", encoding="utf-8")
    pm.write_text(to_markdown(rows, meta), encoding="utf-8")
    return pj, pm
