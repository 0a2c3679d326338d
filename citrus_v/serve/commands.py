"""``citrus-v serve``: run the HTTP API and web viewer around one model."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "serve", help="OpenAI-compatible HTTP API (+ masks as COCO RLE) and a web viewer",
        description="Serve a CitrusV model: POST /v1/chat/completions, GET /v1/models, /healthz, /readyz, viewer at /.",
    )
    p.add_argument("--model", type=Path, default=None, help="model directory (default: the embedded default model)")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1: loopback only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (or set CITRUS_V_API_KEY)")
    p.add_argument("--max-batch", type=int, default=8, help="requests per model call")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="how long to wait to fill a batch")
    p.add_argument("--max-queue", type=int, default=256, help="waiting requests before 503")
    p.add_argument("--max-images", type=int, default=4, help="images per request")
    p.add_argument("--max-image-pixels", type=int, default=40_000_000, help="width x height limit per image")
    p.add_argument("--max-request-pixels", type=int, default=40_000_000,
                   help="decoded pixels of one request's images together, beyond it 413 (default 40M)")
    p.add_argument("--max-pixels-in-flight", type=int, default=120_000_000,
                   help="decoded pixels the server holds at once over all requests, beyond it 429 (default 120M; "
                        "each costs at most 8 bytes of memory, so ~915 MB of decoded images)")
    p.add_argument("--max-tokens-limit", type=int, default=None, metavar="N",
                   help="the largest max_tokens a request may ask for (default: the model's context, its "
                        "max_position_embeddings)")
    p.add_argument("--allow-image-dir", type=Path, action="append", default=[],
                   help="allow local paths / file:// URLs (and {\"type\": \"image\", \"image\": PATH} parts) under "
                        "this directory (repeatable; default: data: URLs only)")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="also accept requests whose Host header is NAME (repeatable; '*' any). Default: the --host "
                        "address only (and localhost names for a loopback bind, IP addresses for 0.0.0.0)")
    p.add_argument("--cors-origin", action="append", default=[], metavar="ORIGIN",
                   help="let web pages from ORIGIN (e.g. https://viewer.example) call the API (repeatable; default none)")
    p.add_argument("--max-tiles", type=int, default=64,
                   help="tiles one \"tiles\" request may ask for (they run one after another; default 64)")
    p.add_argument("--docs", action="store_true", help="serve the OpenAPI schema at /openapi.json and /docs")
    p.add_argument("--model-alias", action="append", default=None, metavar="NAME",
                   help="a name a request's \"model\" may use besides the served model's (repeatable; "
                        "default: citrus-v and Citrus-V-8B, what the published client sends); other names get 404")
    from citrus_v.infer.commands import add_model_arguments

    add_model_arguments(p)  # --device --dtype --min/max-pixels --tighten-boxes/--text-boxes: passed to the predictor
    p.set_defaults(func=run_serve)


def run_serve(args: argparse.Namespace) -> int:
    import os

    import uvicorn

    from citrus_v.errors import UserError
    from citrus_v.model.loading import checkpoint_layout
    from citrus_v.serve.app import create_app
    from citrus_v.serve.settings import ServeConfig

    try:  # a flag out of range is the user's error, named by its flag
        config = ServeConfig(
            max_batch=args.max_batch,
            batch_wait_ms=args.batch_wait_ms,
            max_queue=args.max_queue,
            max_images_per_request=args.max_images,
            max_image_pixels=args.max_image_pixels,
            max_request_pixels=args.max_request_pixels,
            max_pixels_in_flight=args.max_pixels_in_flight,
            max_tokens_limit=args.max_tokens_limit,
            max_tiles=args.max_tiles,
            default_max_tokens=min(512, args.max_tokens_limit) if (args.max_tokens_limit or 0) >= 1 else 512,
            api_key=args.api_key or os.environ.get("CITRUS_V_API_KEY") or None,
            allowed_image_dirs=list(args.allow_image_dir),
            bind_host=args.host,
            allowed_hosts=list(args.allowed_host),
            cors_origins=list(args.cors_origin),
            docs=args.docs,
            **({} if args.model_alias is None else {"model_aliases": list(args.model_alias)}),
        )
    except ValueError as err:
        raise UserError(_flag_names(str(err))) from None
    if args.model is not None:  # a wrong folder is the user's error now, not a server that never gets ready
        from citrus_v.model.loading import resolve_model_path

        args.model = resolve_model_path(args.model)  # a hub id -> its snapshot in the local cache, or one line
        if not args.model.is_dir():
            raise FileNotFoundError(f"--model {args.model}: no such model folder")
        checkpoint_layout(args.model)  # reads config.json: names the file when it is missing or not a model's
    from citrus_v.infer.commands import model_kwargs_from_args

    model_kwargs = model_kwargs_from_args(args)  # a bad flag fails now, before the server starts
    failures: list[str] = []
    server: uvicorn.Server | None = None

    def stop(message: str) -> None:  # a model that cannot be loaded ends the server, not a 503 forever
        failures.append(message)
        server.should_exit = True

    app = create_app(config=config, loader=lambda: _load(args.model, model_kwargs), on_load_error=stop)
    server = uvicorn.Server(uvicorn.Config(app, host=args.host, port=args.port, log_level="info"))
    server.run()
    if failures:
        where = f"--model {args.model}" if args.model is not None else "the default model"
        raise UserError(f"{where}: the model could not be loaded ({failures[0].splitlines()[0][:300]})")
    return 0


def _load(model_dir: Path | None, model_kwargs: dict):
    """``predictor_adapter.load_predictor`` with the model flags passed to ``Predictor.from_pretrained``
    (the served name is the one load_predictor gives)."""
    from citrus_v.infer.predictor import Predictor
    from citrus_v.serve.predictor_adapter import PredictorAdapter

    predictor = Predictor.from_pretrained(model_dir, **model_kwargs)
    pixels = predictor.pixel_range  # said once, as predict does: which image range this server uses
    print(f"[pixels] {pixels['min_pixels']}..{pixels['max_pixels']} ({pixels['source']})", file=sys.stderr)
    name = "citrus-v-default" if model_dir is None else f"citrus-v-{Path(model_dir).resolve().name}"
    return PredictorAdapter(predictor, name)


# ServeConfig's fields as the flags that set them, for its error messages
FLAG_OF_FIELD = {
    "max_batch": "--max-batch", "batch_wait_ms": "--batch-wait-ms", "max_queue": "--max-queue",
    "max_images_per_request": "--max-images", "max_image_pixels": "--max-image-pixels",
    "max_request_pixels": "--max-request-pixels", "max_pixels_in_flight": "--max-pixels-in-flight",
    "api_key": "--api-key", "allowed_image_dirs": "--allow-image-dir", "allowed_hosts": "--allowed-host",
    "cors_origins": "--cors-origin", "model_aliases": "--model-alias", "max_tokens_limit": "--max-tokens-limit",
    "max_tiles": "--max-tiles",
}


def _flag_names(message: str) -> str:
    for name, flag in FLAG_OF_FIELD.items():
        message = message.replace(f"ServeConfig.{name}", flag).replace(f"{name}=", f"{flag} ")
    return message
