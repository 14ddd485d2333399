"""Adaptation cost per method: wall time by phase, peak memory, trainable parameters.

    python experiments/cost/bench_cost.py                         # product default: adapt-effnet-lite0, default weights
    python experiments/cost/bench_cost.py --pretrained none       # same architecture, random init (same cost)
    python experiments/cost/bench_cost.py --quick                 # minutes: adapt-tiny, random init, few epochs

What is measured (issue 7, benchmark 2): ``adapt retrain`` on ELPV binary, 16 shots per class,
seed 1, each method with the product's default hyper-parameters (``--quick`` caps the epochs):
zeroshot, linear, coop, lora, tip-adapter and tip-adapter with ``finetune=true``
("tip-adapter-F"). Each (method, repeat) runs ``adapt.pipelines.retrain.run_retrain`` in a fresh Python
process with a fresh, empty feature cache (``ADAPT_CACHE_DIR``), so

- peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``) belongs to that method alone (the baseline
  after imports is reported beside it);
- the phases are those of ``RetrainResult.timings``: ``load`` (dataset index + backbone),
  ``adapt`` (the method), ``export`` (save + ONNX export + parity check) and ``evaluate`` (the
  exported ONNX model on the 656 held-out test cells); ``adapt`` is split further into
  ``features`` (cold-cache frozen-feature extraction, or LoRA's pixel loading) and ``fit``
  (everything else the method does), by timing ``cached_features`` / ``load_pixels`` inside
  the worker;
- trainable parameters are counted on the module each training method hands to
  ``train_classifier`` (``requires_grad``), and checked against the formula: linear C*(D+1)
  (the exported head; sklearn's binary model has D+1 free numbers), coop n_ctx*width, lora
  the adapters (the method's own count), tip-adapter-F the N*D cache keys, zeroshot and
  training-free tip-adapter 0.

The ELPV image files are read once before the first measurement so that every method meets the
same (warm) OS page cache. Timings are medians over ``--repeats``. The load average at start and
end and the CPU used by *other* processes during the run are recorded; the results carry a
warning when the machine was not quiet (numbers measured under load must not be published).

Outputs (beside this file; ``--quick`` writes ``*_quick.*``): ``results.md``, ``results.json``,
``cost.png``; and one MLflow run in experiment ``benchmarks`` (``--tracking-uri``, default
``$MLFLOW_TRACKING_URI`` or ``sqlite:///mlflow.db`` in the working directory).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]

from machine import CpuWatch, command_line, load_average, machine_facts, peak_rss_mb, quietness_warnings  # this folder is sys.path[0]

logger = logging.getLogger("bench_cost")

DATA, SHOTS, SEED = "elpv", 16, 1
# name -> (adapt method, hyper-parameter overrides)
METHODS: dict[str, tuple[str, dict[str, str]]] = {
    "zeroshot": ("zeroshot", {}),
    "linear": ("linear", {}),
    "coop": ("coop", {}),
    "lora": ("lora", {}),
    "tip-adapter": ("tip-adapter", {}),
    "tip-adapter-F": ("tip-adapter", {"finetune": "true"}),
}
QUICK_HPARAMS = {"coop": {"epochs": "3"}, "lora": {"epochs": "2"}, "tip-adapter-F": {"epochs": "3"}}
PHASES = ("load_s", "features_s", "fit_s", "export_s", "evaluate_s")
RSS_MARKS = ("rss_after_imports_mb", "rss_after_load_mb", "rss_after_fit_mb", "peak_rss_mb")  # ru_maxrss at phase ends


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backbone", default=None, help="open_clip architecture (default: the product default; adapt-tiny with --quick)")
    p.add_argument("--pretrained", default=None, help="none | default | tag | checkpoint (default: default; none with --quick)")
    p.add_argument("--quick", action="store_true", help="adapt-tiny, random init, 2-3 epochs, one repeat; writes *_quick.* files")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of: " + ", ".join(METHODS))
    p.add_argument("--repeats", type=int, default=None, help="fresh-process runs per method (default 3; 1 with --quick)")
    p.add_argument("--out", default=str(HERE), help="folder for results.md, results.json, cost.png")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec of one measurement
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from adapt.defaults import DEFAULT_ARCH

    args.backbone = args.backbone or ("adapt-tiny" if args.quick else DEFAULT_ARCH)
    args.pretrained = args.pretrained or ("none" if args.quick else "default")
    args.repeats = args.repeats or (1 if args.quick else 3)
    unknown = set(args.methods.split(",")) - set(METHODS)
    if unknown:
        p.error(f"unknown method(s) {sorted(unknown)}; known: {', '.join(METHODS)}")
    return args


# ---------------------------------------------------------------------------------------------
# One measurement, in a fresh process


class _Probe:
    """Wraps a few library functions to time the feature phase, count trainable parameters and
    sample peak RSS at phase boundaries; installed only in the worker process."""

    def __init__(self) -> None:
        self.features_s = 0.0
        self.trained_parameters: int | None = None
        self.train_examples: int | None = None
        self.backbone = None
        self.rss = {}

    def install(self) -> None:
        import adapt.core.classifier as classifier
        import adapt.methods.frozen as frozen
        import adapt.methods.lora as lora
        import adapt.pipelines.retrain as retrain
        import adapt.training.supervised as supervised

        frozen.cached_features = self._timed(frozen.cached_features)
        lora.load_pixels = self._timed(lora.load_pixels)
        supervised.train_classifier = self._counting(supervised.train_classifier)
        retrain.load_backbone = self._capturing(retrain.load_backbone)
        # the method is done when the pipeline saves its classifier (imported there on call)
        classifier.save_classifier = self._before(classifier.save_classifier, "after_fit")

    def _timed(self, fn):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.features_s += time.perf_counter() - t0

        return wrapper

    def _counting(self, fn):
        def wrapper(net, train_data, *args, **kwargs):
            self.trained_parameters = sum(p.numel() for p in net.parameters() if p.requires_grad)
            self.train_examples = len(train_data[1]) if isinstance(train_data, tuple) else len(train_data)
            return fn(net, train_data, *args, **kwargs)

        return wrapper

    def _capturing(self, fn):
        def wrapper(*args, **kwargs):
            self.backbone = fn(*args, **kwargs)
            return self.backbone

        return wrapper

    def _before(self, fn, label: str):
        def wrapper(*args, **kwargs):
            self.rss[label] = peak_rss_mb()
            return fn(*args, **kwargs)

        return wrapper


def expected_trainable(name: str, params: dict, backbone, classes: int) -> int:
    """The trainable-parameter count each method should have, from its definition."""
    from adapt.core.encoders import STAGES, ImageEncoder

    def part_dim(use: str) -> int:
        sizes = ImageEncoder(backbone.model.visual, backbone.encoder_spec(use)).layout(backbone.image_size).sizes
        return sizes.get(STAGES, backbone.embed_dim)

    if name in ("zeroshot", "tip-adapter"):
        return 0
    if name == "linear":
        return classes * (part_dim("probe") + 1)
    if name == "coop":
        return int(params["chosen.n_ctx"]) * backbone.model.token_embedding.embedding_dim
    if name == "tip-adapter-F":
        return SHOTS * classes * part_dim("cache")
    if name == "lora":
        return int(params["chosen.trainable_parameters"])
    raise ValueError(name)


def measure(spec: dict) -> dict:
    """Run one retrain and return its phase timings, peak RSS and trainable parameters."""
    load_start = load_average()
    t0 = time.perf_counter()
    import torch

    from adapt.pipelines.retrain import RetrainConfig, RunHooks, run_retrain

    import_s = time.perf_counter() - t0
    rss_baseline = peak_rss_mb()
    probe = _Probe()
    probe.install()

    class Hooks(RunHooks):
        def started(self, params: dict) -> None:
            probe.rss["after_load"] = peak_rss_mb()

    name = spec["name"]
    method, hparams = METHODS[name][0], spec["hparams"]
    with tempfile.TemporaryDirectory(prefix="bench-cost-out-") as out:
        cfg = RetrainConfig(
            data=DATA, method=method, shots=SHOTS, seed=spec.get("seed", SEED), backbone=spec["backbone"], pretrained=spec["pretrained"],
            output_dir=Path(out), hparams=hparams, progress=False,
        )
        result = run_retrain(cfg, Hooks())
    t = result.timings
    classes = len(result.params["classes"])
    expected = expected_trainable(name, result.params, probe.backbone, classes)
    counted = probe.trained_parameters if probe.trained_parameters is not None else expected
    return {
        "method": name,
        "hparams": hparams,
        "import_s": import_s,
        "load_s": t["load_s"],
        "features_s": probe.features_s,
        "adapt_s": t["adapt_s"],
        "fit_s": t["adapt_s"] - probe.features_s,
        "export_s": t["export_s"],
        "evaluate_s": t["evaluate_s"],
        "total_s": t["total_s"],
        "peak_rss_mb": peak_rss_mb(),
        "rss_after_imports_mb": rss_baseline,
        "rss_after_load_mb": probe.rss.get("after_load"),
        "rss_after_fit_mb": probe.rss.get("after_fit"),
        "trainable_parameters": counted,
        "trainable_parameters_expected": expected,
        "trainable_counted_on_module": probe.trained_parameters is not None,
        "train_examples": probe.train_examples,
        "epochs_run": result.params.get("chosen.epochs_run"),
        "balanced_accuracy": result.metrics.get("balanced_accuracy"),
        "embed_dim": probe.backbone.embed_dim,
        "backbone_weights": result.params["backbone_weights"],
        "torch_threads": torch.get_num_threads(),
        "load_start": load_start,
        "load_end": load_average(),
    }


def worker_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    result = measure(json.loads(args.worker))
    Path(args.worker_out).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# The harness: one fresh process per (method, repeat), then the report


def check_backbone_available(backbone: str, pretrained: str) -> dict[str, str]:
    """Environment for the workers; fail now (not after pretraining in a timed run) when the
    default weights are not there yet."""
    env = {}
    if pretrained.strip().lower() == "default":
        from adapt.core.backbone import CHECKPOINT_NAME
        from adapt.pipelines.default_backbone import default_dir

        folder = default_dir(backbone)  # resolved before the workers get their own ADAPT_CACHE_DIR
        if not (folder / CHECKPOINT_NAME).is_file():
            raise SystemExit(
                f"the default {backbone} backbone is not cached at {folder} (build it once: `python -c \"from adapt.pipelines.default_backbone import build_default; build_default('{backbone}')\"` "
                f"or pass --pretrained none: a random init of the same architecture costs the same time and memory)"
            )
        env["ADAPT_DEFAULT_BACKBONE_DIR"] = str(folder)
    return env


def warm_page_cache() -> None:
    """Read the ELPV images once so every method starts from the same warm OS page cache."""
    from adapt.data.elpv import data_dir, read_labels

    root = data_dir()
    for rel in read_labels()[0]:
        (root / rel).read_bytes()


def run_worker(spec: dict, env_extra: dict[str, str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-cost-cache-") as cache, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        env = {**os.environ, **env_extra, "ADAPT_CACHE_DIR": cache}
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(out)]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{spec['name']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict[str, dict]:
    by_method: dict[str, list[dict]] = {}
    for r in runs:
        by_method.setdefault(r["method"], []).append(r)
    summary = {}
    for name, rs in by_method.items():
        row = {k: statistics.median(r[k] for r in rs) for k in (*PHASES, "import_s", "adapt_s", "total_s", *RSS_MARKS)}
        row["total_s_min"], row["total_s_max"] = min(r["total_s"] for r in rs), max(r["total_s"] for r in rs)
        row["trainable_parameters"] = rs[0]["trainable_parameters"]
        row["trainable_parameters_expected"] = rs[0]["trainable_parameters_expected"]
        row["epochs_run"] = rs[0]["epochs_run"]
        row["balanced_accuracy"] = statistics.median(r["balanced_accuracy"] for r in rs)
        row["repeats"] = len(rs)
        summary[name] = row
    return summary


def write_markdown(path: Path, report: dict) -> None:
    s, m, cfg = report["summary"], report["machine"], report["config"]
    lines = [f"# Adaptation cost per method ({cfg['backbone']} @ {cfg['pretrained']}, ELPV binary, {SHOTS} shots, seed {SEED})", ""]
    if report["warnings"]:
        lines += ["> **Not a publishable measurement:**", *[f"> - {w}" for w in report["warnings"]], ""]
    lines += [
        "| method | trainable params | fit s | total s | peak RSS MB |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in s.items():
        lines.append(f"| {name} | {r['trainable_parameters']:,} | {r['fit_s']:.2f} | {r['total_s']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += [
        "",
        f"Medians over {cfg['repeats']} fresh process(es) per method. Phases (seconds):",
        "",
        "| method | load | features (cold cache) | fit | export | evaluate | total (min-max) | imports "
        "| peak RSS MB after imports / load / fit | epochs run | test bal. acc. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in s.items():
        epochs = "-" if r["epochs_run"] is None else str(r["epochs_run"])
        lines.append(
            f"| {name} | {r['load_s']:.2f} | {r['features_s']:.2f} | {r['fit_s']:.2f} | {r['export_s']:.2f} | {r['evaluate_s']:.2f} "
            f"| {r['total_s']:.2f} ({r['total_s_min']:.2f}-{r['total_s_max']:.2f}) | {r['import_s']:.2f} "
            f"| {r['rss_after_imports_mb']:.0f} / {r['rss_after_load_mb']:.0f} / {r['rss_after_fit_mb']:.0f} "
            f"| {epochs} | {r['balanced_accuracy']:.3f} |"
        )
    mismatched = [n for n, r in s.items() if r["trainable_parameters"] != r["trainable_parameters_expected"]]
    w = report["watch"]
    lines += [
        "",
        "- load: dataset index + backbone creation; features: frozen image features of the 2x16 train + 2x16 val",
        "  images with an empty cache (LoRA: decoding those images to pixels); fit: the rest of the method",
        "  (text embeddings, training, hyper-parameter search); export: save + ONNX export + parity check;",
        "  evaluate: the exported ONNX graph on the 656 held-out test cells. total excludes Python imports.",
        "- trainable parameters: counted (`requires_grad`) on the module handed to the training loop; linear:",
        "  C*(D+1) of the exported head (sklearn's binary model has D+1 free numbers); zeroshot, tip-adapter: 0.",
        f"  Formula check: {'all match' if not mismatched else 'MISMATCH for ' + ', '.join(mismatched)}.",
        "- peak RSS: `ru_maxrss` of the method's own process, the imports (torch, open_clip, sklearn, ...) included;",
        "  the same counter read after imports, load and fit shows which phase set the peak.",
        "",
        "## Run",
        "",
        f"- command: `{report['command']}`",
        f"- date: {m['date']}; git {m['git_commit']}; host {m['host']}",
        f"- machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GB; torch threads {report['worker_torch_threads']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- load average (1 min): {w['load_start']:.2f} at start, {w['load_end']:.2f} at end; other processes used "
        f"{w['other_cores']:.2f} cores on average over {w['wall_s']:.0f} s",
        f"- hyper-parameters: product defaults{'; --quick caps: ' + json.dumps(QUICK_HPARAMS) if cfg['quick'] else ''}",
        f"- backbone weights: {report['backbone_weights']}",
        "",
    ]
    path.write_text("\n".join(lines))


def plot(path: Path, report: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s, cfg = report["summary"], report["config"]
    names = list(s)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 0.5 * len(names) + 2.6), sharey=True, gridspec_kw={"width_ratios": [2, 1]})
    left = [0.0] * len(names)
    for phase in PHASES:
        values = [s[n][phase] for n in names]
        ax_t.barh(names, values, left=left, label=phase.removesuffix("_s"))
        left = [a + b for a, b in zip(left, values)]
    ax_t.set_xlabel("seconds (median)")
    ax_t.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=5, fontsize=8, frameon=False)
    ax_t.invert_yaxis()
    left = [0.0] * len(names)
    labels, colors = ("imports", "+load", "+fit", "+export/evaluate"), ("lightgray", "tab:blue", "tab:green", "tab:red")
    for mark, label, color in zip(RSS_MARKS, labels, colors):
        values = [s[n][mark] - base for n, base in zip(names, left)]
        ax_m.barh(names, values, left=left, label=label, color=color)
        left = [s[n][mark] for n in names]
    ax_m.set_xlabel("peak RSS (MB), reached by the end of each phase")
    ax_m.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8, frameon=False)
    title = f"Adaptation cost, ELPV binary {SHOTS}-shot, {cfg['backbone']}@{cfg['pretrained']}, {report['machine']['nproc']} CPU cores"
    if report["warnings"]:
        title += "  [measured under load]"
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def log_to_mlflow(report: dict, files: list[Path], tracking_uri: str | None) -> str:
    from adapt.tracking.runs import start_run
    from adapt.tracking.store import resolve_tracking_uri

    cfg = report["config"]
    name = f"adaptation-cost-{cfg['backbone']}-{cfg['pretrained']}{'-quick' if cfg['quick'] else ''}"
    run = start_run(
        resolve_tracking_uri(tracking_uri), "benchmarks", name,
        params={"benchmark": "adaptation-cost", **cfg, "nproc": report["machine"]["nproc"], "cpu_model": report["machine"]["cpu_model"]},
        tags={"benchmark": "adaptation-cost", "quiet_machine": str(not report["warnings"]).lower()},
        command="benchmark",
    )
    metrics = {k: report["watch"][k] for k in ("load_start", "load_end", "other_cores")}
    for name, r in report["summary"].items():
        for key in (*PHASES, "total_s", "peak_rss_mb", "trainable_parameters"):
            metrics[f"{name}.{key}"] = r[key]
    run.log_metrics(metrics)
    for f in files:
        run.log_artifact(f)
    run.end()
    return run.url


def main(argv=None) -> None:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    command = command_line(__file__, argv)
    env = check_backbone_available(args.backbone, args.pretrained)
    warm_page_cache()
    machine = machine_facts(REPO)
    names = args.methods.split(",")
    watch = CpuWatch().start()
    if watch.load_start > 0.5:
        logger.warning("WARNING: load average %.2f > 0.5 at start: timings will be noisy", watch.load_start)
    runs = []
    for repeat in range(args.repeats):
        for name in names:
            hparams = dict(METHODS[name][1], **(QUICK_HPARAMS.get(name, {}) if args.quick else {}))
            spec = {"name": name, "hparams": hparams, "backbone": args.backbone, "pretrained": args.pretrained}
            r = run_worker(spec, env)
            r["repeat"] = repeat
            runs.append(r)
            logger.info(
                "%-14s repeat %d: total %6.2f s (load %.2f, features %.2f, fit %.2f, export %.2f, evaluate %.2f), peak RSS %4.0f MB, "
                "%d trainable, load avg %.2f->%.2f",
                name, repeat, r["total_s"], r["load_s"], r["features_s"], r["fit_s"], r["export_s"], r["evaluate_s"], r["peak_rss_mb"],
                r["trainable_parameters"], r["load_start"], r["load_end"],
            )
    w = watch.stop()
    warnings = quietness_warnings(w)
    if args.quick:
        warnings.append("--quick: a small model and capped epochs, for checking the harness only")
    report = {
        "benchmark": "adaptation-cost",
        "command": command,
        "config": {"data": DATA, "shots": SHOTS, "seed": SEED, "backbone": args.backbone, "pretrained": args.pretrained,
                   "methods": names, "repeats": args.repeats, "quick": args.quick},
        "machine": machine,
        "worker_torch_threads": runs[0]["torch_threads"],
        "backbone_weights": runs[0]["backbone_weights"],
        "watch": w,
        "warnings": warnings,
        "summary": summarise(runs),
        "runs": runs,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    files = [out / f"results{suffix}.md", out / f"results{suffix}.json", out / f"cost{suffix}.png"]
    write_markdown(files[0], report)
    files[1].write_text(json.dumps(report, indent=2))
    plot(files[2], report)
    for warning in warnings:
        logger.warning("WARNING: %s", warning)
    logger.info("wrote %s", ", ".join(str(f) for f in files))
    if not args.no_tracking:
        try:
            logger.info("MLflow run: %s", log_to_mlflow(report, files, args.tracking_uri))
        except Exception as exc:  # the result files are written; tracking is a copy
            logger.warning("MLflow logging failed (%s); results are in %s", exc, out)


if __name__ == "__main__":
    main()
