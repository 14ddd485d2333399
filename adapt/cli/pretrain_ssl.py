"""``adapt pretrain --objective ssl``: the options and the run of in-domain self-supervised adaptation."""

from __future__ import annotations

import argparse


def add_ssl_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("self-supervised adaptation (--objective ssl)")
    g.add_argument("--from", dest="from_weights", default=None,
                   help="backbone whose image tower to adapt: 'default' or a checkpoint file/folder (default: default)")
    g.add_argument("--ssl-loss", choices=("simclr", "vicreg"), default=None, help="lightly loss (default: simclr)")
    g.add_argument("--ssl-image-size", type=int, default=None, help="resolution of the training views (default: 160)")
    g.add_argument("--ssl-min-scale", type=float, default=None, help="smallest crop as a fraction of the image area (default: 0.6)")
    g.add_argument("--trainable-from", type=int, default=None, help="first trainable trunk block; earlier ones stay frozen (default: 4)")


def run_ssl(args: argparse.Namespace) -> int:
    from adapt.cli import checks
    from adapt.errors import AdaptError

    data = args.data or "elpv"
    if "," in data:
        raise AdaptError("--objective ssl takes one --data source: a folder, a CSV with a path column, or elpv")
    if args.preset or args.init or args.lock_image or args.loss:
        raise AdaptError("--preset/--init/--lock-image/--loss belong to contrastive pretraining; with --objective ssl use --from and --ssl-loss")
    from_weights = args.from_weights or "default"
    checks.check_weights(from_weights, "--from")
    from adapt.pipelines.ssl_pretrain import SslPretrainConfig, run_ssl_pretrain

    overrides = {
        "data": data, "init": from_weights, "model": args.model, "loss": args.ssl_loss, "epochs": args.epochs,
        "max_steps": args.max_steps, "max_minutes": args.max_minutes, "batch_size": args.batch_size, "lr": args.lr,
        "weight_decay": args.weight_decay, "warmup_steps": args.warmup_steps, "seed": args.seed,
        "num_workers": args.num_workers, "accelerator": args.accelerator, "devices": args.devices,
        "num_nodes": args.num_nodes, "strategy": args.strategy, "precision": args.precision,
        "checkpoint_every": args.checkpoint_every, "output_dir": args.output_dir, "resume": args.resume or None,
        "image_size": args.ssl_image_size, "min_scale": args.ssl_min_scale, "trainable_from": args.trainable_from,
        "progress": not args.quiet,
    }
    try:
        cfg = SslPretrainConfig(**{k: v for k, v in overrides.items() if v is not None})
    except (TypeError, ValueError) as exc:
        raise AdaptError(str(exc)) from exc
    if cfg.resume and args.output_dir is None:
        raise AdaptError("--resume needs the --output-dir of the run to continue")
    run = _start_tracking(args, cfg)
    from adapt.cli.tracking_options import run_tracked

    result = run_tracked(run, lambda loggers: run_ssl_pretrain(cfg, loggers=loggers))
    if not result.checkpoint.name:
        return 0  # a non-zero DDP rank
    print(f"adapted the image tower self-supervised ({cfg.loss}) on {result.images} unlabeled image(s) "
          f"(fingerprint {result.images_fingerprint}) for {result.steps} steps in {result.train_seconds / 60:.1f} min, final loss {result.final_loss:.3f}")
    print(f"  backbone: {result.output_dir}  (open_clip config beside the weights)")
    print(f"  use it:   adapt retrain --pretrained {result.output_dir} --data ...")
    if run is not None:
        _finish_tracking(run, result)
    return 0


def _start_tracking(args, cfg):
    from dataclasses import asdict

    from adapt.cli.tracking_options import start_pretrain_run

    params = {"objective": "ssl", **{k: v for k, v in asdict(cfg).items() if k != "progress"}}
    return start_pretrain_run(args, params, cfg.data, f"{cfg.model}-ssl-{cfg.loss}")


def _finish_tracking(run, result) -> None:
    from adapt.cli.tracking_options import finish_pretrain_run

    finish_pretrain_run(run, result, {"train_seconds": result.train_seconds, "final_loss": result.final_loss, "steps": result.steps},
                        params={"unlabeled_images": result.images, "unlabeled_fingerprint": result.images_fingerprint})