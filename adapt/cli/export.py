"""``adapt export``: re-export a trained classifier to ONNX, with the parity check."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained classifier to ONNX (uint8 pixels in, probabilities out) with a parity check",
        description="Loads the torch classifier (classifier.pt) behind --model, writes one ONNX graph with "
        "preprocessing inside and labels/input size/reject threshold in its metadata, and checks that ONNX "
        "Runtime matches torch within 1e-4 on random images.",
    )
    p.add_argument("--model", required=True, help="models:/NAME@ALIAS, models:/NAME/VERSION, a run folder, or a classifier.pt")
    p.add_argument("--out", required=True, help="output .onnx file")
    p.add_argument("--reject-threshold", type=float, default=None, help="override the reject threshold stored in the model")
    p.add_argument("--name", default=None, help="model name to record in the metadata")
    p.add_argument("--version", default=None, help="model version to record in the metadata")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adapt.cli import checks
    from adapt.errors import AdaptError
    from adapt.tracking.resolve import resolve_model

    checks.check_model(args.model, args.tracking_uri)  # user errors first, in milliseconds
    checks.check_output_folder(args.out, "--out")
    if args.reject_threshold is not None and not 0.0 <= args.reject_threshold <= 1.0:
        raise AdaptError("--reject-threshold must be between 0 and 1")
    model = resolve_model(args.model, args.tracking_uri)  # registry lookups before the heavy imports
    if model.torch_path is None:
        raise AdaptError(f"{args.model} has no classifier.pt to export from")
    from adapt.core.classifier import load_classifier
    from adapt.core.export import check_parity, export_onnx

    classifier = load_classifier(model.torch_path)
    if args.reject_threshold is not None:
        classifier.info.reject_threshold = args.reject_threshold
    out = export_onnx(classifier, args.out, model_name=args.name or model.name, model_version=args.version or model.version, check=False)
    err = check_parity(classifier, out)
    print(f"wrote {out} ({len(classifier.labels)} classes, input {classifier.info.image_size}px; ONNX vs torch max |dp| = {err:.1e})")
    return 0
