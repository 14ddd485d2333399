"""``adapt pretrain``: contrastive (CLIP / SigLIP) pretraining with Lightning."""

from __future__ import annotations

import argparse

from adapt.cli import config_file

EPILOG = """\
examples:
  adapt pretrain --data synthetic --model adapt-tiny --epochs 1
  adapt pretrain --preset default                       # adapt-small's self-pretrained default (~15 min on 2 cores)
  adapt pretrain --data pairs.csv --model adapt-effnet-lite0 --init imagenet --lock-image   # LiT on your captions
  adapt pretrain --data pairs.csv --model ViT-B-16 --init /path/open_clip_pytorch_model.bin \\
      --accelerator gpu --devices 8 --num-nodes 2 --strategy ddp --batch-size 256
  adapt pretrain ... --output-dir runs/pt --resume       # continue after an interruption
  adapt pretrain --objective ssl --data elpv --from default   # self-supervised, on unlabeled in-domain images

The product's default backbone (adapt-effnet-lite0: ImageNet EfficientNet-Lite0 + a LiT text tower) is
built once, in minutes, the first time a command needs it; the command says so before it starts.

data (comma-separated, mixed in one epoch):
  synthetic   procedural industrial surfaces with defects and captions (--synthetic-samples per epoch)
  elpv        the ELPV train pool without labels, captioned by module type (domain-adaptive; never the test split)
  FILE        a CSV (image,caption) or JSONL ({"image": ..., "caption": ...}) manifest, paths relative to it
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain",
        help="contrastive pretraining of an open_clip backbone (CLIP or SigLIP loss)",
        description="Pretrains an open_clip model on image-caption pairs with open_clip's losses through "
        "Lightning (CPU, GPUs, multi-node DDP). Writes an open_clip-loadable checkpoint and config to "
        "--output-dir, checkpoints every --checkpoint-every steps for --resume, and reports zero-shot "
        "accuracy on held-out synthetic defects.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--objective", choices=("clip", "ssl"), default="clip",
                   help="clip: contrastive on image-caption pairs; ssl: self-supervised adaptation of the image tower "
                   "on unlabeled images (--data FOLDER|CSV|elpv, --from default|FILE) (default: %(default)s)")
    p.add_argument("--preset", default=None, help="start from a named recipe (default, tiny); other flags override it")
    config_file.add_option(p)
    p.add_argument("--data", default=None, help="comma-separated sources: synthetic, elpv, or manifest files (default: synthetic)")
    p.add_argument("--model", default=None, help="open_clip architecture (default: adapt-small)")
    p.add_argument("--init", default=None, help="start from these weights (checkpoint file, open_clip tag, 'imagenet' for "
                   "adapt-effnet-lite0/2, or 'default') instead of random init")
    p.add_argument("--lock-image", action="store_true", help="LiT: lock the image trunk, train the text tower and the image projection")
    p.add_argument("--loss", choices=("clip", "siglip"), default=None, help="contrastive loss (default: clip)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default: 1)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after this many optimiser steps")
    p.add_argument("--max-minutes", type=float, default=None, help="wall-clock cap; the checkpoint is still written")
    p.add_argument("--batch-size", type=int, default=None, help="pairs per device per step (default: 64)")
    p.add_argument("--lr", type=float, default=None, help="peak learning rate (default: 5e-4)")
    p.add_argument("--weight-decay", type=float, default=None, help="AdamW weight decay (default: 0.1)")
    p.add_argument("--warmup-steps", type=int, default=None, help="linear warmup steps (default: 50)")
    p.add_argument("--synthetic-samples", type=int, default=None, help="synthetic pairs per epoch (default: 20000)")
    p.add_argument("--domain-repeat", type=int, default=None, help="times the in-domain (elpv) images appear per epoch")
    p.add_argument("--seed", type=int, default=None, help="seed (default: 0)")
    p.add_argument("--num-workers", type=int, default=None, help="data-loader workers (default: 1)")
    g = p.add_argument_group("devices (Lightning)")
    g.add_argument("--accelerator", default=None, help="cpu, gpu, auto (default: auto)")
    g.add_argument("--devices", default=None, help="devices per node: a count, a list like 0,1, or auto (default: 1)")
    g.add_argument("--num-nodes", type=int, default=None, help="nodes for multi-node DDP (default: 1)")
    g.add_argument("--strategy", default=None, help="Lightning strategy, e.g. ddp (default: auto)")
    g.add_argument("--precision", default=None, help="32-true, bf16-mixed, 16-mixed, or auto (default: auto)")
    p.add_argument("--checkpoint-every", type=int, default=None, help="steps between resumable checkpoints (default: 100)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT_DIR/checkpoints/last.ckpt")
    p.add_argument("--output-dir", default=None, help="where the checkpoint goes (default: runs/pretrain/<model>-<loss>-<time>)")
    from adapt.cli.tracking_options import add_tracking_options

    add_tracking_options(p, registry=False)
    from adapt.cli.pretrain_ssl import add_ssl_options

    add_ssl_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adapt.cli import checks
    from adapt.errors import AdaptError

    if args.objective == "ssl":
        from adapt.cli.pretrain_ssl import run_ssl

        return run_ssl(args)

    data = [s.strip() for s in args.data.split(",") if s.strip()] if args.data else None
    checks.check_manifests(data or [])  # user errors first, in milliseconds
    if args.init:
        checks.check_weights(args.init, "--init")
    from adapt.pipelines.pretrain import PretrainConfig, preset, run_pretrain

    overrides = {
        "data": data,
        "model": args.model,
        "init": args.init,
        "loss": args.loss,
        "epochs": args.epochs,
        "max_steps": args.max_steps,
        "max_minutes": args.max_minutes,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "warmup_steps": args.warmup_steps,
        "synthetic_samples": args.synthetic_samples,
        "domain_repeat": args.domain_repeat,
        "seed": args.seed,
        "num_workers": args.num_workers,
        "accelerator": args.accelerator,
        "devices": args.devices,
        "num_nodes": args.num_nodes,
        "strategy": args.strategy,
        "precision": args.precision,
        "checkpoint_every": args.checkpoint_every,
        "output_dir": args.output_dir,
        "resume": args.resume or None,
        "vision_lr_scale": 0.0 if args.lock_image else None,
        "progress": not args.quiet,
    }
    try:
        if args.preset:
            cfg = preset(args.preset, **overrides)
        else:
            cfg = PretrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise AdaptError(str(exc)) from exc
    if cfg.resume and args.output_dir is None:
        raise AdaptError("--resume needs the --output-dir of the run to continue")
    if cfg.init.strip().lower() == "default":  # continue from the product's backbone (built first if missing, announced)
        from adapt.pipelines.default_backbone import default_checkpoint

        cfg.init = str(default_checkpoint(cfg.model))
    run = _start_tracking(args, cfg)
    from adapt.cli.tracking_options import run_tracked

    result = run_tracked(run, lambda loggers: run_pretrain(cfg, loggers=loggers))
    if not result.checkpoint.name:
        return 0  # a non-zero DDP rank
    zs = result.zero_shot
    print(f"pretrained {cfg.model} ({cfg.loss}) for {result.steps} steps, {result.samples_per_s:.0f} pairs/s, final loss {result.final_loss:.3f}")
    print(f"  zero-shot on held-out synthetic defects: {zs['accuracy']:.1%} over {zs['classes']} classes (chance {zs['chance']:.1%}); good vs defective {zs['good_vs_defect_balanced_accuracy']:.1%} balanced (chance 50%)")
    print(f"  checkpoint: {result.checkpoint}  (config beside it; open_clip.create_model_and_transforms('local-dir:{result.output_dir}') loads it)")
    print(f"  use it:     adapt retrain --backbone {cfg.model} --pretrained {result.checkpoint} --data ...")
    if run is not None:
        _finish_tracking(run, result)
    return 0


def _start_tracking(args, cfg):
    from dataclasses import asdict

    params = {k: v for k, v in asdict(cfg).items() if k not in ("progress",)}
    from adapt.cli.tracking_options import start_pretrain_run

    return start_pretrain_run(args, params, "+".join(cfg.data), f"{cfg.model}-{cfg.loss}")


def _finish_tracking(run, result) -> None:
    from adapt.cli.tracking_options import finish_pretrain_run

    zs = result.zero_shot
    finish_pretrain_run(run, result, {
        "samples_per_s": result.samples_per_s, "train_seconds": result.train_seconds, "final_loss": result.final_loss,
        "steps": result.steps, "zero_shot_synthetic_accuracy": zs.get("accuracy", float("nan")),
        "zero_shot_synthetic_good_vs_defect_balanced": zs.get("good_vs_defect_balanced_accuracy", float("nan")),
    })
