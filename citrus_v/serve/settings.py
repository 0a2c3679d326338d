"""``ServeConfig``: every limit the server enforces, validated at construction."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


FALLBACK_MAX_TOKENS = 2_048  # the max_tokens limit for a predictor that does not tell its context


@dataclass
class ServeConfig:
    """Limits and switches of ``citrus-v serve``. Each limit turns bad input into a 4xx, never a crash.

    ``allowed_image_dirs`` is the allow-list for ``file://`` / plain-path image URLs; empty (the default)
    means only ``data:`` URLs are accepted. Remote (http/https) URLs are never fetched.
    """

    max_images_per_request: int = 4
    max_image_bytes: int = 20 * 1024 * 1024  # one decoded base64 payload
    max_request_bytes: int = 64 * 1024 * 1024  # the whole HTTP body
    max_image_pixels: int = 40_000_000  # width x height (x frames for DICOM), checked from the header
    # decoded-pixel budget (citrus_v/serve/budget.py), counted from headers before decoding: one request's
    # images together (else 413) and everything the server holds at once (else 429); a budgeted pixel costs
    # at most budget.BYTES_PER_PIXEL = 8 bytes of memory (3 as RGB, the rest while decoding and predicting)
    max_request_pixels: int = 40_000_000
    max_pixels_in_flight: int = 120_000_000
    max_prompt_chars: int = 8_000
    max_messages: int = 32
    # the largest ``max_tokens`` a client may ask for; None: the model's context (its max_position_embeddings,
    # set when the model is loaded), FALLBACK_MAX_TOKENS for a model that does not say
    max_tokens_limit: int | None = None
    default_max_tokens: int = 512
    max_batch: int = 8  # requests per predict_batch call
    batch_wait_ms: float = 5.0  # how long the worker waits to fill a batch
    max_queue: int = 256  # pending requests; beyond it -> 503 + Retry-After
    request_timeout_s: float = 300.0
    # tiles of one "tiles" request: they run one after another on the one model worker, so a 40 MP image in
    # 300 px tiles (441) would hold every other request for minutes; 64 is a 2,400 px image (~35 s here)
    max_tiles: int = 64
    api_key: str | None = None  # when set, requests need "Authorization: Bearer <key>"
    allowed_image_dirs: list[Path] = field(default_factory=list)
    model_name: str | None = None  # overrides the predictor's name in responses and /v1/models
    # names a request's "model" may also use (what the published client and our examples send); others -> 404
    model_aliases: list[str] = field(default_factory=lambda: ["citrus-v", "Citrus-V-8B"])
    # workstation safety (docs/serving.md, Security): the Host header must name the bound address
    # (loopback names for a loopback bind, any IP literal for 0.0.0.0/::) or one of allowed_hosts ("*": any)
    bind_host: str = "127.0.0.1"
    allowed_hosts: list[str] = field(default_factory=list)
    cors_origins: list[str] = field(default_factory=list)  # none: browsers refuse cross-origin reads
    docs: bool = False  # /openapi.json and /docs

    def __post_init__(self) -> None:
        for name in (
            "max_images_per_request",
            "max_image_bytes",
            "max_request_bytes",
            "max_image_pixels",
            "max_request_pixels",
            "max_pixels_in_flight",
            "max_prompt_chars",
            "max_messages",
            "default_max_tokens",
            "max_batch",
            "max_queue",
            "max_tiles",
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"ServeConfig.{name}: must be an int >= 1, got {value!r}")
        limit = self.max_tokens_limit
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
            raise ValueError(f"ServeConfig.max_tokens_limit: must be an int >= 1 or None, got {limit!r}")
        if limit is not None and self.default_max_tokens > limit:
            raise ValueError(f"ServeConfig.default_max_tokens: {self.default_max_tokens} exceeds max_tokens_limit={limit}")
        if self.max_request_pixels > self.max_pixels_in_flight:  # such a request could never be served
            raise ValueError(
                f"ServeConfig.max_request_pixels: {self.max_request_pixels} exceeds max_pixels_in_flight={self.max_pixels_in_flight}"
            )
        if not self.batch_wait_ms >= 0:
            raise ValueError(f"ServeConfig.batch_wait_ms: must be >= 0, got {self.batch_wait_ms!r}")
        if not self.request_timeout_s > 0:
            raise ValueError(f"ServeConfig.request_timeout_s: must be > 0, got {self.request_timeout_s!r}")
        if self.api_key is not None and not self.api_key.strip():
            raise ValueError("ServeConfig.api_key: must be a non-empty string or None")
        for name in ("model_aliases", "allowed_hosts", "cors_origins"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in values):
                raise ValueError(f"ServeConfig.{name}: must be a list of non-empty strings, got {values!r}")
            setattr(self, name, [v.strip() for v in values])
        if not isinstance(self.bind_host, str):
            raise ValueError(f"ServeConfig.bind_host: must be a string, got {self.bind_host!r}")
        dirs = []
        for d in self.allowed_image_dirs:
            p = Path(d).resolve()
            if not p.is_dir():
                raise ValueError(f"ServeConfig.allowed_image_dirs: {d} is not a directory")
            dirs.append(p)
        self.allowed_image_dirs = dirs

    @property
    def tokens_limit(self) -> int:
        """``max_tokens_limit``, or FALLBACK_MAX_TOKENS while it is unset (no model loaded yet)."""
        return self.max_tokens_limit if self.max_tokens_limit is not None else FALLBACK_MAX_TOKENS


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


def host_allowed(host_header: str, config: ServeConfig) -> bool:
    """Whether a request's Host header names this server (the defence against DNS rebinding: a web
    page's own domain, rebound to 127.0.0.1, arrives with that domain as its Host)."""
    import ipaddress
    from urllib.parse import urlsplit

    if "*" in config.allowed_hosts:
        return True
    try:
        parts = urlsplit("//" + host_header)
        name, _ = parts.hostname or "", parts.port  # .port raises on a port that is not a number
    except ValueError:  # a port that is not a number
        return False
    if not name:
        return False
    allowed = {h.lower().strip("[]") for h in [config.bind_host, *config.allowed_hosts]}
    if name in allowed:
        return True
    bind = config.bind_host.strip("[]").lower()
    if bind in LOOPBACK_NAMES or bind.startswith("127."):
        return name in LOOPBACK_NAMES
    if bind in ("", "0.0.0.0", "::"):  # every interface: any address, never a name but localhost
        try:
            ipaddress.ip_address(name)
        except ValueError:
            return name == "localhost"
        return True
    return False
