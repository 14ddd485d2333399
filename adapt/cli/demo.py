"""``adapt demo``: backbone -> few-shot adaptation on ELPV -> MLflow + registry -> gRPC -> client."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "demo",
        help="run the whole product once on embedded defaults (ELPV solar cells, 16 shots)",
        description="End to end, offline: builds the default backbone on first use (cached afterwards), adapts it "
        "on 16 labelled ELPV solar cells per class, tracks the run in MLflow and registers it as "
        "models:/adapt-demo@champion, starts the gRPC inspection service, classifies the held-out test cells "
        "through it with the inspection client, and prints accuracy, throughput, latency and where to look next.",
    )
    p.add_argument("--data", default="elpv", help="dataset (default: %(default)s; elpv:4class, a folder or a CSV work too)")
    from adapt.methods import registry

    p.add_argument("--method", choices=[registry.AUTO, *(n for n in registry.names() if not registry.get(n).needs_good_label)],
                   default=registry.AUTO, help="adaptation method; auto chooses by cross-validation (default: %(default)s)")
    p.add_argument("--budget-minutes", type=float, default=3.0, help="--method auto: minutes for cross-validating the candidates (default: %(default)s)")
    p.add_argument("--review-budget", type=float, default=0.25, metavar="SHARE",
                   help="at most this share of the cells goes to human review (default: %(default)s)")
    p.add_argument("--shots", type=int, default=16, help="labelled images per class (default: %(default)s)")
    p.add_argument("--seed", type=int, default=1, help="few-shot draw seed (default: %(default)s)")
    from adapt.defaults import DEFAULT_ARCH

    p.add_argument("--backbone", default=DEFAULT_ARCH, help="open_clip architecture (default: %(default)s)")
    p.add_argument("--pretrained", default="default", help="weights: default (built on first use), imagenet, none, a file, or a tag")
    p.add_argument("--port", type=int, default=0, help="port of the demo's gRPC server (default: any free port)")
    p.add_argument("--output-dir", default="runs/demo", help="where the demo's model and metrics go (default: %(default)s)")
    p.add_argument("--model-name", default="adapt-demo", help="registered model name (default: %(default)s)")
    p.add_argument("--max-test-images", type=int, default=0, help="classify only this many held-out images (default: all)")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from adapt.pipelines.demo import DemoConfig, run_demo

    cfg = DemoConfig(
        data=args.data, method=args.method, shots=args.shots, seed=args.seed, backbone=args.backbone,
        pretrained=args.pretrained, output_dir=Path(args.output_dir), tracking_uri=args.tracking_uri,
        model_name=args.model_name, port=args.port, max_test_images=args.max_test_images, progress=not args.quiet,
        budget_minutes=args.budget_minutes, review_budget=args.review_budget,
    )
    r = run_demo(cfg)
    m = r.retrain.metrics
    name = cfg.model_name
    print()
    print(f"adapt demo: {m['dataset']}, {cfg.method}, {cfg.shots} labelled images per class (+{cfg.shots} for validation)")
    from adapt.cli.retrain import selection_lines

    for line in selection_lines(m):
        print(line)
    print(f"  adapted in {r.retrain.timings['adapt_s']:.1f}s; exported {r.retrain.model_path}")
    for line in r.tracking:
        print(f"  {line}")
    print(f"  served models:/{name}@champion (version {r.served_version}) over gRPC at {r.server_address}")
    print(f"  classified {r.n_images} held-out images through the service:")
    print(f"    accuracy {r.accuracy:.1%}   balanced accuracy {r.balanced_accuracy:.1%}   "
          f"(always answering the majority class: {max(m['per_class'][c]['support'] for c in m['per_class']) / m['n']:.1%} / 50.0%)")
    print(f"    at a review budget of {cfg.review_budget:.0%}: {r.needs_review_rate:.1%} of images sent to review "
          f"(reject threshold {m.get('reject_threshold', 0):.2f}), the other {1 - r.needs_review_rate:.1%} decided automatically: "
          f"{r.extra['accuracy_on_accepted']:.1%} correct")
    print(f"    throughput {r.stream_images_per_s:.0f} images/s (one stream); latency p50 {r.latency_ms_p50:.1f} ms, p99 {r.latency_ms_p99:.1f} ms (unary, one client)")
    print()
    print("next:")
    store = r.tracking_uri
    ui = f"mlflow ui --backend-store-uri {store}    (then open http://127.0.0.1:5000)" if store.startswith("sqlite") else f"open {store}"
    uri_flag = "" if store == "sqlite:///mlflow.db" else f" --tracking-uri {store}"
    print(f"  look at the run and the registry:  {ui}")
    print(f"  serve the champion:                adapt serve --model models:/{name}@champion --port 50051{uri_flag}")
    print(f"  classify a folder:                 adapt classify --server localhost:50051 {Path(r.retrain.output_dir).parent / 'sample'}")
    print(f"  retrain on your own images:        adapt retrain --data your_folder/ --method {cfg.method} --shots 16 --register your-model")
    return 0
