"""One error type for everything a client can get wrong, rendered as an OpenAI-style error body."""

from __future__ import annotations

import math
from typing import Any


class RequestError(Exception):
    """Bad input: an HTTP status (4xx), a message that says what is wrong, and where (``param``).

    ``param`` is a JSON path into the request, e.g. ``messages[0].content[1].image_url.url``.
    """

    def __init__(self, status: int, message: str, param: str | None = None, code: str = "invalid_request"):
        if not 400 <= status < 600:
            raise ValueError(f"RequestError.status: must be an HTTP error status, got {status}")
        self.status = status
        self.message = message
        self.param = param
        self.code = code
        super().__init__(f"{param}: {message}" if param else message)

    def to_body(self) -> dict:
        kind = "invalid_request_error" if self.status < 500 else "server_error"
        text = f"{self.param}: {self.message}" if self.param else self.message
        return {"error": {"message": text, "type": kind, "param": self.param, "code": self.code}}


def json_kind(value: Any) -> str:
    """A parsed JSON value's kind as a client would name it ("object", "array", "number", ...)."""
    return {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}.get(
        type(value), "number" if isinstance(value, (int, float)) else type(value).__name__
    )


def finite_number(value: Any, where: str) -> float:
    """``value`` as a finite float, or a 400 naming ``where``: booleans, strings, NaN, infinities and
    integers too large for a float are refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(400, f"must be a finite number, got {json_kind(value)}", where)
    try:
        number = float(value)  # a JSON integer of 400 digits overflows here
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise RequestError(400, f"must be a finite number, got {str(value)[:40]}", where)
    return number
