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
from adapt.methods import registry

EPILOG_TEMPLATE = """\
examples:
  adapt retrain --data parts/ --shots 16 --seed 1                      # auto: cross-validates linear, tip-adapter, lora
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
        epilog=EPILOG_TEMPLATE.format(hp_help=registry.help_text()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    config_file.add_option(p)
    p.add_argument("--data", required=True, help="folder ROOT/<label>/*.png, CSV manifest path,label[,split], elpv[:4class][:mono|:poly], or synthetic")
    p.add_argument("--method", choices=(registry.AUTO, *registry.names()), default=registry.AUTO,
                   help="adaptation method; auto cross-validates " + ", ".join(s.name for s in registry.auto_candidates())
                   + " (and patchcore with --good-label) on the labelled images and keeps the best (default: %(default)s)")
    p.add_argument("--budget-minutes", type=float, default=3.0,
                   help="--method auto: minutes for cross-validating the candidates; the refit and the evaluation come on top (default: %(default)s)")
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
    p.add_argument("--review-budget", type=float, default=0.5, metavar="SHARE",
                   help="at most this share of parts goes to human review, e.g. 0.10 (the reject threshold is estimated on "
                   "held-out few-shot images: cross-validation with --method auto) (default: %(default)s)")
    p.add_argument("--target-accuracy", type=float, default=0.95,
                   help="send to review only as many parts as the auto-decided ones need to reach this accuracy, within "
                   "--review-budget (default: %(default)s)")
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
    if hparams and args.method == registry.AUTO:
        raise AdaptError("--hp sets one method's hyper-parameters: name the --method too")
    try:
        if args.method != registry.AUTO:
            registry.make_config(args.method, hparams)  # unknown or malformed --hp: one line, before torch is imported
    except (TypeError, ValueError) as exc:
        raise AdaptError(f"--hp: {exc}") from exc
    if args.budget_minutes <= 0:
        raise AdaptError("--budget-minutes must be positive")
    if not 0 <= args.review_budget <= 1 or not 0 < args.target_accuracy <= 1:
        raise AdaptError("--review-budget must be in [0, 1] and --target-accuracy in (0, 1]")
    if args.shots < 1:
        raise AdaptError("--shots must be >= 1")
    try:
        registry.check_options(args.method, args.good_label, bool(args.unlabeled))
    except ValueError as exc:
        raise AdaptError(str(exc)) from exc
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
            target_accuracy=args.target_accuracy,
            review_budget=args.review_budget,
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
            budget_minutes=args.budget_minutes,
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
        *selection_lines(m),
        *_anomaly_lines(m),
        *review_lines(m),
        f"  model:   {result.model_path}",
        f"  metrics: {result.output_dir / 'metrics.json'}   confusion matrix: {result.output_dir / 'confusion_matrix.png'}",
        f"  time:    adapt {result.timings['adapt_s']:.1f}s"
        + (f" (choosing {result.timings['select_s']:.1f}s)" if "select_s" in result.timings else "")
        + f", total {result.timings['total_s']:.1f}s",
        *(f"  note:    {note}" for note in m.get("notes", [])),
    ]
    return "\n".join(lines)


def selection_lines(m: dict) -> list[str]:
    sel = m.get("selection")
    if not sel:
        return []
    c = sel["candidates"]

    def score(name: str) -> str:
        r = c[name]
        return f"{name} {r['mean']:.1%} ± {r['std']:.1%} ({r['folds']} fold{'s' if r['folds'] != 1 else ''})" if not r["skipped"] else f"{name} ({r['skipped']})"

    cv = f"repeated {sel['folds']}-fold over the {sel['labelled_images']} labelled images"
    others = sorted((n for n in c if n != sel["choice"]), key=lambda n: (bool(c[n]["skipped"]), -(c[n]["mean"] or 0)))
    return [
        f"  method auto chose {sel['choice']}: {sel['reason']}",
        f"    cross-validated balanced accuracy ({cv}): {score(sel['choice'])}" + ("; runners-up: " + ", ".join(map(score, others)) if others else ""),
    ]


def _anomaly_lines(m: dict) -> list[str]:
    if "anomaly" not in m:
        return []
    recall = m["anomaly"].get("defect_recall") or {}
    rule = [f"  anomaly score: {m['anomaly']['score']}; threshold: {m['anomaly']['threshold_rule']}"] if "threshold_rule" in m["anomaly"] else []
    if not recall:
        return rule + [f"  the data has no class besides '{m['anomaly']['good_label']}': threshold from good validation images only, "
                       "no defect recall measured (add defect images to validate)"]
    return rule + ["  recall per defect class: " + ", ".join(f"{k} {v:.1%}" for k, v in recall.items())]


def review_lines(m: dict) -> list[str]:
    """What the reject threshold does: expected on the few-shot images, measured on the held-out test."""
    r = m.get("review") or {}
    lines = [f"  needs review: {m.get('needs_review_rate', 0):.1%} of held-out images (threshold {m.get('reject_threshold', 0):.2f}); "
             f"auto-decided ones {m.get('accuracy_on_accepted', float('nan')):.1%} correct"]
    if "expected_review_rate" in r:
        lines.append(f"    asked: review at most {r['budget']:.0%}, target {r['target_accuracy']:.0%}; expected from the {r['estimated_on']}: "
                     f"{r['expected_review_rate']:.1%} to review, {r['expected_accuracy_on_accepted']:.1%} correct")
    return lines
