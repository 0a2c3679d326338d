"""``citrus-v train``: one stage or all four, on your own JSONL, from a model folder.

    citrus-v train --stage 4 --data my.jsonl --init <model folder> --out runs/ft     # a fine-tune (see --schedule)
    citrus-v train --stage all --data suite.jsonl --config tiny --out runs/all
    citrus-v train --stage 0 --data suite/train.jsonl --steps 1200 --out runs/stage0                 # vision warm-up
    citrus-v train --stage 4 --cached --data suite/train.jsonl --val suite/val.jsonl --init runs/stage3/final --out runs/stage4
    torchrun --nproc_per_node 8 -m citrus_v.cli train --stage 3 --data d.jsonl --init m --strategy fsdp2 --out r
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from citrus_v.train.finetune import SCHEDULES


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    from citrus_v.config import PRESETS

    p = subparsers.add_parser("train", help="train one stage (0-4) or stages 1-4 in sequence",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", required=True, choices=["0", "1", "2", "3", "4", "all"],
                   help="0: the dense vision warm-up of a model trained from scratch (as `citrus-v warmup-vision`)")
    p.add_argument("--data", required=True, type=Path, action="append",
                   help="training JSONL (ms-swift format); repeat for several files")
    p.add_argument("--val", type=Path, default=None,
                   help="validation JSONL: its loss is printed before and after (default with --init: a held-out slice of --data)")
    p.add_argument("--val-fraction", type=float, default=0.05,
                   help="share of --data held out for validation, whole images at a time, when no --val is given (a fine-tune only)")
    p.add_argument("--schedule", choices=SCHEDULES, default="auto",
                   help="auto: 'finetune' with --init (small lr, epochs over your data, warm-up), else the preset's "
                        "('smoke' for tiny: lr 1e-3, 20 steps, for tests; 'published' for 8b); with --stage-config, its own")
    p.add_argument("--init", type=Path, default=None, help="model folder to start from (default: a fresh --config model)")
    p.add_argument("--config", choices=sorted(PRESETS), default="tiny",
                   help="model preset and schedule (8b = published; tiny_litemedsam = tiny with the pretrained LiteMedSAM segmenter)")
    p.add_argument("--stage-config", type=Path, default=None, help="a stage JSON/YAML file (configs/train/) instead of the built-in stage")
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps (overrides the stage's length)")
    p.add_argument("--epochs", type=float, default=None, help="passes over the data (overrides the stage's length)")
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--save-every", type=int, default=None)
    p.add_argument("--resume", action="store_true", help="continue from the newest checkpoint under --out")
    p.add_argument("--cached", action="store_true",
                   help="--stage 4 on cached frozen features ([SEG] states, image embeddings), as `citrus-v train-seg-cached`")
    p.add_argument("--strategy", choices=["none", "ddp", "fsdp2"], default="ddp", help="under torchrun: DDP or FSDP2")
    p.add_argument("--lora", action="store_true", help="train LoRA adapters on the MLLM's linear layers (peft)")
    p.add_argument("--workers", type=int, default=0, help="processes that read and collate batches (0: in the training process)")
    p.add_argument("--time-budget-min", type=float, default=None,
                   help="fit the run into this many minutes: after its first steps it is shortened (and its cosine with it) "
                        "to the steps that fit at the measured rate")
    p.add_argument("--template", choices=["auto", "ours", "published"], default="auto",
                   help="how <ref-object>/<bbox>/<boxes> placeholders become text: 'published' is the text the released "
                        "8B was trained on (docs/published_checkpoint.md); auto: published for a published-layout --init "
                        "and the 8b preset, ours otherwise")
    p.add_argument("--report-to", nargs="+", default=["none"], metavar="{none,tensorboard,wandb}",
                   help="also send the metrics to TensorBoard (<out>/tensorboard; pip install 'citrus-v[tensorboard]') "
                        "and/or Weights & Biases (wandb), beside metrics.jsonl and loss_curve.png")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--allow-outside", action="store_true",
                   help="allow image/mask paths outside each JSONL file's folder (as `citrus-v data validate --allow-outside`)")
    p.set_defaults(func=run_train)

    from citrus_v.train import vision_warmup

    w = subparsers.add_parser("warmup-vision", help="stage 0 (train --stage 0) with its data flags: dense ViT + merger warm-up on the suite",
                              description=vision_warmup.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    vision_warmup.add_arguments(w)

    from citrus_v.train import cached_seg

    c = subparsers.add_parser("train-seg-cached", help="stage 4 on cached frozen features (train --stage 4 --cached) with the cache's flags",
                              description=cached_seg.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cached_seg.add_arguments(c)


def _stage_list(args: argparse.Namespace, data: list[Path], schedule: str, n_train: int, world_size: int) -> list:
    from citrus_v.train import finetune
    from citrus_v.train.stages import get_stage, load_stage_config, with_data_file

    # the stage's parts and mixture; its schedule as named (`finetune.choose_schedule`)
    preset = {"smoke": "tiny", "published": "8b"}.get(schedule, args.config)
    if args.stage_config is not None:
        stages = [load_stage_config(args.stage_config)]
        if args.stage != "all" and stages[0].stage != int(args.stage):
            raise SystemExit(f"--stage {args.stage} but {args.stage_config} holds stage {stages[0].stage}")
    elif args.stage == "all":
        stages = [get_stage(k, preset) for k in (1, 2, 3, 4)]  # task mixtures over the --data pool
    else:
        stage = get_stage(int(args.stage), preset)
        # your own file(s): every record trains this stage, whatever its task
        stages = [stage.replace(mixture=with_data_file(stage, data[0]).mixture + tuple(
            with_data_file(stage, d).mixture[0] for d in data[1:]))]
    if schedule == "finetune":
        stages = [finetune.finetune_stage(s, args.config, n_train, world_size) for s in stages]
    changes = {k: v for k, v in (("max_steps", args.steps), ("epochs", args.epochs), ("lr", args.lr),
                                 ("save_every", args.save_every)) if v is not None}
    if args.steps is not None:
        changes["epochs"] = None
    if args.epochs is not None:
        changes["max_steps"] = None
    stages = [s.replace(**changes) for s in stages]
    if schedule == "finetune":  # warm-up: a few % of the steps the run will take
        stages = [finetune.with_warmup(s, n_train, world_size, finetune.FINETUNE[args.config].warmup_fraction) for s in stages]
    return stages


# --- fine-tune validation (citrus_v/train/finetune.py): the held-out slice and its loss before/after ---
def _validation_data(args: argparse.Namespace, schedule: str, ctx) -> tuple[list[Path], Path | None, dict]:
    """(training files, validation file or None, what was held out). A fine-tune of one stage holds
    out a slice of --data unless --val is given; the main process writes it, the others wait."""
    from citrus_v.train import finetune
    from citrus_v.train.distributed import barrier

    if args.val is not None:
        return list(args.data), args.val, {"val_file": str(args.val)}
    if schedule != "finetune" or args.stage == "all":
        return list(args.data), None, {}
    split_dir = args.out / finetune.SPLIT_DIR
    summary: dict = {}
    if ctx.is_main:
        try:
            _, _, summary = finetune.write_split(list(args.data), args.out, fraction=args.val_fraction, seed=0,
                                                 allow_outside=args.allow_outside)
        except ValueError as err:
            raise SystemExit(f"citrus-v train: {err}") from None
    barrier(ctx)
    return [split_dir / "train.jsonl"], split_dir / "val.jsonl", summary


def _validate(model_dir: Path, val_file: Path, stage, ctx, when: str, allow_outside: bool,
              template_style: str = "auto") -> dict | None:
    from citrus_v.train import finetune

    if not ctx.is_main:
        return None
    import torch

    device = f"cuda:{ctx.local_rank}" if torch.cuda.is_available() else "cpu"
    losses = finetune.validation_loss(model_dir, val_file, max_length=stage.max_length, device=device,
                                      template_style=template_style,
                                      allow_outside=allow_outside)
    print(f"validation {when}: {finetune.format_losses(losses)}", flush=True)
    return losses
# --- end fine-tune validation ---


def _own_data_stage(args: argparse.Namespace):
    """The CLI entry of a stage that makes its own data (stage 0's dense targets, cached stage 4's
    feature cache) before the recipe runs it, or None for a stage on --data records."""
    if args.cached and args.stage != "4":
        raise SystemExit(f"--cached applies to --stage 4, not --stage {args.stage}")
    if args.stage == "0":
        from citrus_v.train import vision_warmup

        return vision_warmup.run_train_cli
    if args.cached:
        from citrus_v.train import cached_seg

        return cached_seg.run_train_cli
    return None


def _check_train_args(args: argparse.Namespace) -> None:
    """Refuse, in one line, the files and flag values of a stage 1-4 run that cannot work."""
    for f in [*args.data, *([args.val] if args.val else [])]:
        if not f.is_file():
            raise SystemExit(f"{f}: no such data file")
    if args.init is not None and not args.init.is_dir():
        raise SystemExit(f"{args.init}: --init must be a model folder (config.json + model.safetensors)")
    if args.steps is not None and args.epochs is not None:
        raise SystemExit("--steps and --epochs both set the run's length: give one")
    if not 0 < args.val_fraction < 1:
        raise SystemExit(f"--val-fraction {args.val_fraction}: must be between 0 and 1")
    if args.workers < 0:
        raise SystemExit(f"--workers {args.workers}: must be 0 or more")
    if args.time_budget_min is not None and args.time_budget_min <= 0:
        raise SystemExit(f"--time-budget-min {args.time_budget_min}: must be positive")
    from citrus_v.train.metrics_log import check_report_to

    check_report_to(args.report_to)  # before any work: a missing package is one line now, not after the data loads


def run_train(args: argparse.Namespace) -> int:
    if (entry := _own_data_stage(args)) is not None:
        if any(r != "none" for r in args.report_to):
            raise SystemExit(f"--report-to applies to stages 1-4 on --data records, not to --stage {args.stage}"
                             f"{' --cached' if args.cached else ''} (its metrics are in its own report)")
        return entry(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    _check_train_args(args)
    from citrus_v.train import finetune
    from citrus_v.train.distributed import barrier, init_distributed, shutdown
    from citrus_v.train.pipeline import run_all_stages, run_stage

    schedule = finetune.choose_schedule(args.schedule, args.init, args.config, stage_file=args.stage_config is not None)
    if schedule == "finetune" and args.stage == "all":
        raise SystemExit("--schedule finetune applies to one stage, not --stage all")
    ctx = init_distributed(args.strategy)
    try:
        data, val_file, held_out = _validation_data(args, schedule, ctx)
        n_train = sum(len(_read(f)) for f in data) if schedule == "finetune" else 0
        stages = _stage_list(args, data, schedule, n_train, ctx.world_size)
        # the held-out split holds absolute paths by design; write_split checked them against their own folders
        outside = args.allow_outside or (val_file is not None and args.val is None)  # our own split
        common = dict(data_files=data, init=args.init, preset=args.config, resume=args.resume, dist_ctx=ctx,
                      progress=not args.no_progress, lora=args.lora, allow_outside=outside, template_style=args.template,
                      report_to=tuple(args.report_to))
        if len(stages) == 1:
            s = stages[0]
            if ctx.is_main:
                length = f"{s.max_steps} steps" if s.max_steps is not None else f"{s.epochs:g} epoch(s) over {n_train} records"
                print(f"schedule {schedule}: lr {s.lr:g}, {length}, {s.micro_batch_size * s.grad_accum * ctx.world_size} "
                      f"records a step, {s.warmup_steps} warm-up steps, cosine", flush=True)
            before = _validate(args.init, val_file, s, ctx, "before", outside, args.template) if val_file is not None and args.init else None
            barrier(ctx)
            budget = None if args.time_budget_min is None else 60 * args.time_budget_min
            result = run_stage(s, out_dir=args.out, loader_workers=args.workers, time_budget_s=budget, **common)
            if ctx.is_main:
                print(f"trained {result.steps} steps; model: {args.out / 'final'}; metrics: {result.metrics_path}; plot: {result.plot_path}")
            if val_file is not None:
                after = _validate(args.out / "final", val_file, s, ctx, "after", outside, args.template)
                if ctx.is_main:
                    report = {"schedule": schedule, "stage": s.to_dict() | {"mixture": [str(d) for d in data]},
                              "steps": result.steps, "validation": held_out, "val_before": before, "val_after": after}
                    print(f"validation losses: {finetune.write_report(args.out, report)}")
                barrier(ctx)
        else:
            if args.time_budget_min is not None:
                raise SystemExit("--time-budget-min applies to one stage, not --stage all")
            run_all_stages(stages, out_dir=args.out, **common)
            if ctx.is_main:
                print(f"trained stages 1-4; final model: {args.out / 'stage4' / 'final'}")
    finally:
        shutdown(ctx)
    return 0


def _read(path: Path) -> list:
    from citrus_v.data.schema import read_jsonl

    return read_jsonl(path)
