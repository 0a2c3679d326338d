"""The one exception type a user's mistake raises.

A ``UserError`` is a problem with what the user gave (a file that is missing, unreadable or not
what it claims; a malformed record or config field; a flag combination that makes no sense), not
a bug. The ``citrus-v`` command turns it into one line on stderr naming the file or field, and
exit status 2; ``citrus-v --debug`` shows the traceback instead. The package's own error types for
such problems (RecordError, MedicalIOError, SourceError, StageConfigError, CheckpointError,
ModelFolderError) derive from it and keep their ValueError / RuntimeError base for callers that
catch those. This module imports nothing, so every layer may use it.
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input; the message names the file, field or flag."""
