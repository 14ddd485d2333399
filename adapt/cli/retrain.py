"""``adapt retrain``: few-shot adaptation, held-out evaluation, ONNX export (and tracking)."""

from __future__ import annotations

import argparse
import json
import sys

from adapt.cli import checks, config_file
from adapt.cli.common import add_backbone_options, parse_key_values
from adapt.cli.tracking_options import add_tracking_options, make_hooks
from adapt.contract.imageio import ResizeMode
from adapt.errors import AdaptError
from adapt.methods.configs import help_text, make_config
from adapt.methods.names import Method

METHODS = tuple(m.value for m in Method)

EPILOG_TEMPLATE = """\
examples:
  adapt retrain --data parts/ --method linear --shots 16 --seed 1
  adapt retrain --data elpv --method lora --shots 16 --hp rank=8 --hp epochs=80
  adapt retrain --data labels.csv --method tip-adapter --hp finetune=true --output-dir runs/tip
  adapt retrain --data elpv --method linear --shots 16 --unlabeled elpv      # semi-supervised: + unlabeled images
  adapt retrain --data parts/ --method patchcore --good-label ok --shots 16     # anomaly mode: good parts only

hyper-parameters (--hp KEY=VALUE; lists comma-separated) per method, with their defaults:
{hp_help}
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "retrain",
        help="adapt a backbone on K labelled images per class, evaluate, export ONNX",
        description="Few-shot adaptation: draws --shots images per class (and as many for validation) from the "
        "training pool with --seed, fits --method, chooses hyper-parameters and the reject threshold on the "
        "validation images only, exports model.onnx and evaluates it on the held-out test split.",
        epilog=EPILOG_TEMPLATE.format(hp_help=help_text()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_file.add_option(p)
    p.add_argument("--data", required=True, help="folder ROOT/<label>/*.png, CSV manifest path,label[,split], elpv[:4class][:mono|:poly], or synthetic")
    p.add_argument("--method", choices=METHODS, default="linear", help="adaptation method (default: %(default)s)")
    p.add_argument("--shots", type=int, default=16, help="labelled training images per class (default: %(default)s)")
    p.add_argument("--good-label", default="", metavar="LABEL",
                   help="anomaly methods (patchcore): the class of good parts; --shots good images build the model, every other class is 'defective' and used only for validation and testing")
    p.add_argument("--val-shots", type=int, default=None, help="validation images per class from the training pool (default: same as --shots)")
    p.add_argument("--seed", type=int, default=1, help="seed for the few-shot draw and training (default: %(default)s)")
    p.add_argument("--hp", action="append", metavar="KEY=VALUE", help="method hyper-parameter (repeatable; see below)")
    p.add_argument("--describe", action="append", metavar="CLASS=WORDS", help="words for a class in prompts, e.g. --describe 'crack=cracked surface'")
    p.add_argument("--output-dir", default=None, help="where model.onnx, metrics.json, confusion_matrix.png go (default: runs/retrain/<name>)")
    p.add_argument("--include", action="append", metavar="DIR|CSV", default=[],
                   help="more labelled images for the training pool only (repeatable), e.g. the feedback folder of `adapt serve`")
    p.add_argument("--unlabeled", default=None, metavar="DIR|CSV|elpv",
                   help="unlabeled images of the same line for semi-supervised adaptation (method linear): a folder, a CSV "
                   "with a path column, or elpv (its train pool); held-out test images in it are left out")
    p.add_argument("--resize-mode", choices=[m.value for m in ResizeMode], default=ResizeMode.SQUASH.value,
                   help="how images of any shape become the square model input: squash (scale both sides, nothing is cut "
                   "off) or shortest (scale the shorter side, centre-crop the longer: a defect near its ends is lost); "
                   "recorded in the exported model, which serving follows (default: %(default)s)")
    p.add_argument("--test-fraction", type=float, default=0.25, help="held-out share when the data has no test split (default: %(default)s)")
    p.add_argument("--strict", action="store_true", help="fail on unreadable images instead of skipping them with a warning")
    p.add_argument("--review-accuracy", type=float, default=0.95, help="reject threshold: lowest confidence at which accepted validation predictions reach this accuracy (default: %(default)s)")
    p.add_argument("--reject-threshold", type=float, default=None, help="fixed reject threshold instead of choosing one")
    p.add_argument("--no-cache", action="store_true", help="recompute frozen features instead of using the cache")
    p.add_argument("--json", action="store_true", help="print the metrics JSON instead of a summary")
    add_backbone_options(p)
    add_tracking_options(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:

    checks.check_data(args.data)  # user errors first, in milliseconds
    for extra in args.include:
        checks.check_data(extra, "--include")
    if args.unlabeled:
        checks.check_data(args.unlabeled, "--unlabeled")
    checks.check_weights(args.pretrained)
    hparams, descriptions = parse_key_values(args.hp, "--hp"), parse_key_values(args.describe, "--describe")
    try:
        make_config(args.method, hparams)  # unknown or malformed --hp: one line, before torch is imported
    except (TypeError, ValueError) as exc:
        raise AdaptError(f"--hp: {exc}") from exc
    if args.shots < 1:
        raise AdaptError("--shots must be >= 1")
    if args.method == Method.PATCHCORE.value and not args.good_label:
        raise AdaptError("--method patchcore needs --good-label LABEL (the class of good parts)")
    if args.good_label and args.method != Method.PATCHCORE.value:
        raise AdaptError(f"--good-label is for --method patchcore, not {args.method}")
    hooks = make_hooks(args)  # checks the tracking store in seconds, before heavy imports and any work
    from adapt.pipelines.retrain import RetrainConfig, run_retrain

    try:
        cfg = RetrainConfig(
            data=args.data,
            method=args.method,
            shots=args.shots,
            seed=args.seed,
            val_shots=args.val_shots,
            backbone=args.backbone,
            pretrained=args.pretrained,
            output_dir=args.output_dir,
            hparams=hparams,
            descriptions=descriptions,
            device=args.device,
            review_target_accuracy=args.review_accuracy,
            reject_threshold=args.reject_threshold,
            test_fraction=args.test_fraction,
            resize_mode=args.resize_mode,
            strict_images=args.strict,
            include=args.include,
            unlabeled=args.unlabeled,
            progress=not args.quiet,
            use_feature_cache=not args.no_cache,
            model_name=args.register or "",
            good_label=args.good_label,
        )
    except ValueError as exc:
        raise AdaptError(str(exc)) from exc
    try:
        result = run_retrain(cfg, hooks)
    except ValueError as exc:  # config validation inside methods
        if hooks is not None:
            hooks.aborted(exc)
        raise AdaptError(str(exc)) from exc
    except BaseException as exc:
        if hooks is not None:
            hooks.aborted(exc)
        raise
    if args.json:
        print(json.dumps(result.metrics, indent=2, sort_keys=True))
    else:
        print(summary(result))
    if hooks is not None:
        for line in hooks.report():
            print(line, file=sys.stderr if args.json else sys.stdout)
        if hooks.failure:
            raise AdaptError(hooks.failure)
    return 0


def summary(result) -> str:
    m = result.metrics
    lines = [
        f"{m['dataset']} · {m['method']} · {m['shots']}-shot · seed {m['seed']}  (held-out test: {m['n']} images)",
        f"  accuracy {m['accuracy']:.1%}   balanced accuracy {m['balanced_accuracy']:.1%}   macro-F1 {m['macro_f1']:.3f}"
        + (f"   ROC-AUC {m['roc_auc']:.3f}" if "roc_auc" in m else ""),
        *_anomaly_lines(m),
        f"  needs review: {m.get('needs_review_rate', 0):.1%} of images (threshold {m.get('reject_threshold', 0):.2f})",
        f"  model:   {result.model_path}",
        f"  metrics: {result.output_dir / 'metrics.json'}   confusion matrix: {result.output_dir / 'confusion_matrix.png'}",
        f"  time:    adapt {result.timings['adapt_s']:.1f}s, total {result.timings['total_s']:.1f}s",
    ]
    return "\n".join(lines)


def _anomaly_lines(m: dict) -> list[str]:
    if "anomaly" not in m:
        return []
    recall = m["anomaly"].get("defect_recall") or {}
    rule = [f"  anomaly score: {m['anomaly']['score']}; threshold: {m['anomaly']['threshold_rule']}"] if "threshold_rule" in m["anomaly"] else []
    if not recall:
        return rule + [f"  the data has no class besides '{m['anomaly']['good_label']}': threshold from good validation images only, "
                       "no defect recall measured (add defect images to validate)"]
    return rule + ["  recall per defect class: " + ", ".join(f"{k} {v:.1%}" for k, v in recall.items())]
