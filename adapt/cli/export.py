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
    p.add_argument("--out", required=True, help="output .onnx file (--format triton: the model repository folder)")
    p.add_argument(
        "--format",
        choices=("onnx", "triton"),
        default="onnx",
        help="onnx (default): one .onnx file; triton: a Triton Inference Server model repository "
        "(OUT/NAME/config.pbtxt, labels.txt, 1/model.onnx); --model may then also be an exported .onnx file",
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="--format triton: Triton's max_batch_size (default: %(default)s)")
    p.add_argument("--reject-threshold", type=float, default=None, help="override the reject threshold stored in the model")
    p.add_argument("--name", default=None, help="model name to record in the metadata")
    p.add_argument("--version", default=None, help="model version to record in the metadata")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI for models:/ URIs")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from adapt.cli import checks
    from adapt.errors import AdaptError
    from adapt.tracking.resolve import resolve_model

    if args.format == "triton":
        return _run_triton(args)
    checks.check_model(args.model, args.tracking_uri)  # user errors first, in milliseconds
    checks.check_output_folder(args.out, "--out")
    if args.reject_threshold is not None and not 0.0 <= args.reject_threshold <= 1.0:
        raise AdaptError("--reject-threshold must be between 0 and 1")
    model = resolve_model(args.model, args.tracking_uri)  # registry lookups before the heavy imports
    if model.torch_path is None:
        raise AdaptError(f"{args.model} has no classifier.pt to export from")
    from adapt.core.classifier import load_classifier
    from adapt.core.export import export_checked

    classifier = load_classifier(model.torch_path)
    if args.reject_threshold is not None:
        classifier.info.reject_threshold = args.reject_threshold
    out, err = export_checked(classifier, args.out, model_name=args.name or model.name, model_version=args.version or model.version)
    print(f"wrote {out} ({len(classifier.labels)} classes, input {classifier.info.image_size}px; ONNX vs torch max |dp| = {err:.1e})")
    return 0


def _run_triton(args: argparse.Namespace) -> int:
    """``--format triton``: the ONNX export (or a given exported .onnx file) as a Triton model repository."""
    import tempfile
    from pathlib import Path

    from adapt.contract.triton import write_repository
    from adapt.errors import AdaptError

    if args.max_batch_size < 0:
        raise AdaptError("--max-batch-size must be >= 0")
    given = Path(args.model).expanduser()
    with tempfile.TemporaryDirectory() as tmp:
        if given.suffix == ".onnx" and given.is_file():
            onnx_path = given
        else:
            onnx_path = Path(tmp) / "model.onnx"
            run(argparse.Namespace(**{**vars(args), "format": "onnx", "out": str(onnx_path)}))
        folder = write_repository(onnx_path, args.out, name=args.name or "", max_batch_size=args.max_batch_size)
    print(f"wrote Triton model repository {args.out} (model {folder.name}: config.pbtxt, labels.txt, 1/model.onnx); "
          f"serve it with a Triton server: tritonserver --model-repository {args.out}")
    return 0
