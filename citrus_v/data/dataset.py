"""A torch ``Dataset`` over a JSONL file of records, encoded on access by a ``ChatTemplate``."""

from __future__ import annotations

import logging
from pathlib import Path

from torch.utils.data import Dataset

from citrus_v.data.checks import FileRules, check_record
from citrus_v.data.schema import Record, SkipReport, iter_jsonl_lines
from citrus_v.data.template import ChatTemplate, Example, TooLongError

log = logging.getLogger(__name__)


class JsonlDataset(Dataset):
    """Records from ``path`` (paths inside relative to its folder), encoded lazily.

    ``skip_invalid``: malformed lines are left out at load time and listed in ``self.invalid``.
    ``skip_too_long``: a record the template rejects as too long is replaced by the next one
    (wrapping around) and its index added to ``self.too_long``; this is per process (each
    DataLoader worker keeps its own list), and every skip is logged. Without it, ``TooLongError``
    propagates with the record's file and line.

    ``rules``: each record's files and boxes are checked (``citrus_v.data.checks``, the rule of
    ``citrus-v data validate``) when it is encoded, not at load time, so a large set starts at
    once; a failing record is a ``RecordError`` naming ``file:line: field``.
    """

    def __init__(self, path: str | Path, template: ChatTemplate, *, skip_invalid: bool = False, skip_too_long: bool = False,
                 rules: FileRules = FileRules()):
        self.path = Path(path)
        self.template = template
        self.rules = rules
        self.invalid = SkipReport()
        numbered = list(iter_jsonl_lines(self.path, skip_invalid=skip_invalid, report=self.invalid))
        self.records: list[Record] = [rec for _, rec in numbered]
        self.lines: list[int] = [line for line, _ in numbered]  # the file line of each record
        if not self.records:
            raise ValueError(f"{self.path}: no records")
        self.skip_too_long = skip_too_long
        self.too_long: list[int] = []

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Example:
        for step in range(len(self.records)):
            i = (index + step) % len(self.records)
            try:
                return self.encode(i)
            except TooLongError as err:
                if not self.skip_too_long:
                    raise
                self.too_long.append(i)
                log.warning("skipping record %d of %s: %s", i, self.path, err)
        raise TooLongError(f"{self.path}: every record is too long for max_length={self.template.max_length}")

    def encode(self, i: int) -> Example:
        """Record ``i`` encoded; errors name the file and the record's index."""
        where = f"{self.path}: record {i}"
        check_record(self.records[i], self.path, self.lines[i], self.path.parent, self.rules)
        try:
            return self.template.encode_record(self.records[i], self.path.parent)
        except TooLongError as err:
            raise TooLongError(f"{where}: {err}") from err
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{where}: {err}") from err
        except ValueError as err:
            raise ValueError(f"{where}: {err}") from err
