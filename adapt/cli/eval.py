"""``adapt eval``: metrics of an exported model on a dataset's held-out split."""

from __future__ import annotations

import argparse
import json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "eval",
        help="evaluate a model on a dataset's held-out split (metrics JSON + confusion matrix)",
        description="Runs the exported ONNX classifier (exactly what `adapt serve` serves) over the held-out "
        "test split of --data and reports accuracy, balanced accuracy, macro-F1, per-class precision/recall, "
        "ROC-AUC (two classes) and the confusion matrix.",
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a run folder, or a .onnx file")
    p.add_argument("--data", required=True, help="folder, CSV manifest, elpv[...], or synthetic (its test split is used)")
    p.add_argument("--split", choices=("test", "train"), default="test", help="which split to evaluate (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print the metrics JSON")
    p.add_argument("--output-dir", default=None, help="also write metrics.json and confusion_matrix.png here")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.cli import checks
    from adapt.errors import AdaptError
    from adapt.tracking.resolve import resolve_model

    checks.check_model(args.model, args.tracking_uri)  # user errors first, in milliseconds
    checks.check_data(args.data)
    model = resolve_model(args.model, args.tracking_uri)  # registry lookups before the heavy imports
    if model.onnx_path is None:
        raise AdaptError(f"{args.model} has no exported model.onnx; run `adapt export` first")
    from adapt.data import load_dataset
    from adapt.core.evaluation import compute_metrics, save_confusion_matrix, save_metrics
    from adapt.contract.modelmeta import read_file as read_metadata
    from adapt.core.predict import align_labels, predict_onnx

    meta = read_metadata(model.onnx_path)
    data = load_dataset(args.data)
    images = data.test if args.split == "test" else data.train
    labels = align_labels(images, meta)
    probs = predict_onnx(model.onnx_path, images, meta, progress=not args.quiet)
    metrics = compute_metrics(probs, labels, meta.labels, reject_threshold=meta.reject_threshold)
    metrics.update({"dataset": data.name, "split": args.split, "dataset_fingerprint": data.fingerprint(), "model": args.model})
    if args.output_dir:
        out = Path(args.output_dir)
        out.mkdir(parents=True, exist_ok=True)
        save_metrics(metrics, out / "metrics.json")
        save_confusion_matrix(metrics["confusion_matrix"], meta.labels, out / "confusion_matrix.png", title=f"{data.name} · {args.model}")
    if args.json:
        print(json.dumps(metrics, indent=2, sort_keys=True))
    else:
        print(f"{args.model} on {data.name} ({args.split}, {metrics['n']} images)")
        print(f"  accuracy {metrics['accuracy']:.1%}   balanced accuracy {metrics['balanced_accuracy']:.1%}   macro-F1 {metrics['macro_f1']:.3f}"
              + (f"   ROC-AUC {metrics['roc_auc']:.3f}" if "roc_auc" in metrics else ""))
        print("  confusion matrix (rows = true, columns = predicted; order " + ", ".join(meta.labels) + "):")
        for row in metrics["confusion_matrix"]:
            print("    " + " ".join(f"{v:6d}" for v in row))
    return 0
