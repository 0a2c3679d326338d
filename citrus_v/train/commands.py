"""``citrus-v train``: one stage or all four, on your own JSONL, from a model folder.

    citrus-v train --stage 4 --data my.jsonl --init <model folder> --out runs/ft
    citrus-v train --stage all --data suite.jsonl --config tiny --out runs/all
    torchrun --nproc_per_node 8 -m citrus_v.cli train --stage 3 --data d.jsonl --init m --strategy fsdp2 --out r
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from citrus_v.config import PRESETS

    p = subparsers.add_parser("train", help="train one stage (1-4) or all four in sequence",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=["1", "2", "3", "4", "all"])
    p.add_argument("--data", required=True, type=Path, action="append",
                   help="training JSONL (ms-swift format); repeat for several files")
    p.add_argument("--val", type=Path, default=None, help="validation JSONL (checked for format; evaluate with citrus-v eval)")
    p.add_argument("--init", type=Path, default=None, help="model folder to start from (default: a fresh --config model)")
    p.add_argument("--config", choices=sorted(PRESETS), default="tiny",
                   help="model preset and schedule (8b = published; tiny_litemedsam = tiny with the pretrained LiteMedSAM segmenter)")
    p.add_argument("--stage-config", type=Path, default=None, help="a stage JSON/YAML file (configs/train/) instead of the built-in stage")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides the stage's length)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument("--strategy", choices=["none", "ddp", "fsdp2"], default="ddp", help="under torchrun: DDP or FSDP2")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the MLLM's linear layers (peft)")
    p.add_argument("--workers", type=int, default=0, help="processes that read and collate batches (0: in the training process)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="fit the run into this many minutes: after its first steps it is shortened (and its cosine with it) "
                        "to the steps that fit at the measured rate")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_train)

    from citrus_v.train import vision_warmup

    w = subparsers.add_parser("warmup-vision", help="stage 0 for from-scratch models: dense ViT + merger warm-up on the suite",
                              description=vision_warmup.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vision_warmup.add_arguments(w)

    from citrus_v.train import cached_seg

    c = subparsers.add_parser("train-seg-cached", help="stage 4 on cached frozen features ([SEG] states, image embeddings)",
                              description=cached_seg.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cached_seg.add_arguments(c)


def _stage_list(args: argparse.Namespace) -> list:
    from citrus_v.train.stages import get_stage, load_stage_config, with_data_file

    if args.stage_config is not None:
        stages = [load_stage_config(args.stage_config)]
        if args.stage != "all" and stages[0].stage != int(args.stage):
            raise SystemExit(f"--stage {args.stage} but {args.stage_config} holds stage {stages[0].stage}")
    elif args.stage == "all":
        stages = [get_stage(k, args.config) for k in (1, 2, 3, 4)]  # task mixtures over the --data pool
    else:
        stage = get_stage(int(args.stage), args.config)
        # your own file(s): every record trains this stage, whatever its task
        stages = [stage.replace(mixture=with_data_file(stage, args.data[0]).mixture + tuple(
            with_data_file(stage, d).mixture[0] for d in args.data[1:]))]
    changes = {k: v for k, v in (("max_steps", args.steps), ("lr", args.lr), ("save_every", args.save_every)) if v is not None}
    if args.steps is not None:
        changes["epochs"] = None
    return [s.replace(**changes) for s in stages]


def run_train(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for f in [*args.data, *([args.val] if args.val else [])]:
        if not f.is_file():
            raise SystemExit(f"{f}: no such data file")
    if args.init is not None and not args.init.is_dir():
        raise SystemExit(f"{args.init}: --init must be a model folder (config.json + model.safetensors)")
    if args.val is not None:
        from citrus_v.data.schema import read_jsonl

        logging.getLogger(__name__).info("%s: %d validation records", args.val, len(read_jsonl(args.val)))
    stages = _stage_list(args)

    from citrus_v.train.distributed import init_distributed, shutdown
    from citrus_v.train.pipeline import run_all_stages, run_stage
    from citrus_v.train.recipe import TrainingRefused

    if args.workers < 0:
        raise SystemExit(f"--workers {args.workers}: must be 0 or more")
    if args.time_budget_min is not None and args.time_budget_min <= 0:
        raise SystemExit(f"--time-budget-min {args.time_budget_min}: must be positive")
    ctx = init_distributed(args.strategy)
    try:
        common = dict(data_files=args.data, init=args.init, preset=args.config, resume=args.resume, dist_ctx=ctx,
                      progress=not args.no_progress, lora=args.lora)
        if len(stages) == 1:
            budget = None if args.time_budget_min is None else 60 * args.time_budget_min
            result = run_stage(stages[0], out_dir=args.out, loader_workers=args.workers, time_budget_s=budget, **common)
            if ctx.is_main:
                print(f"trained {result.steps} steps; model: {args.out / 'final'}; metrics: {result.metrics_path}; plot: {result.plot_path}")
        else:
            if args.time_budget_min is not None:
                raise SystemExit("--time-budget-min applies to one stage, not --stage all")
            run_all_stages(stages, out_dir=args.out, **common)
            if ctx.is_main:
                print(f"trained stages 1-4; final model: {args.out / 'stage4' / 'final'}")
    except TrainingRefused as err:  # a stage with no record to train on, a resume past the steps asked for
        raise SystemExit(f"citrus-v train: {err}") from None
    finally:
        shutdown(ctx)
    return 0
