"""Ratios, targets, and the outputs of the serving benchmark: results.md/json, throughput.png, MLflow."""

from __future__ import annotations

import json
import math
from pathlib import Path

TARGET_VS_LIMIT = 0.9  # (b) / (a2) at saturation
TARGET_VS_MLFLOW = 3.0  # (b) / (c) at saturation
TARGET_P99_ONE_CLIENT = 1.3  # p99 of one client / one image in-process (p50)

LABELS = {
    ("grpc-unary", 1): "gRPC unary",
    ("grpc-stream", 1): "gRPC stream",
    ("mlflow", 1): "mlflow serve, 1 image/request",
    ("mlflow", 8): "mlflow serve, 8 images/request",
}


def _label(point: dict) -> str:
    key = (point["target"], point["images_per_request"])
    return LABELS.get(key, f"{point['target']} x{point['images_per_request']}")


def _best(points: list[dict], target: str, per_request: int = 1) -> dict | None:
    chosen = [p for p in points if p["target"] == target and p["images_per_request"] == per_request]
    return max(chosen, key=lambda p: p["images_per_s"]) if chosen else None


def _at(points: list[dict], target: str, concurrency: int) -> dict | None:
    return next(
        (
            p
            for p in points
            if p["target"] == target and p["images_per_request"] == 1 and p["concurrency"] == concurrency
        ),
        None,
    )


def ratios(limit: dict, points: list[dict]) -> list[dict]:
    """Each ratio with its definition, value, target (None: shown for context) and verdict."""
    a1, a2 = limit["a1_ort_only"]["images_per_s"], limit["a2_decode_ort"]["images_per_s"]
    a2_cpu = min(r["cpu_ms_per_image"] for r in limit["a2_decode_ort"]["by_config"].values())
    single_p50 = limit["single_image"]["p50_ms"]
    mlflow1, mlflow8 = _best(points, "mlflow"), _best(points, "mlflow", 8)
    rows = []

    def add(name: str, value: float, target: float | None, higher_is_better: bool = True) -> None:
        met = None if target is None else (value >= target if higher_is_better else value <= target)
        op = ">=" if higher_is_better else "<="
        rows.append(
            {"name": name, "value": value, "target": None if target is None else f"{op} {target:g}", "met": met}
        )

    if mlflow1:  # what any server on this model and these threads could reach over mlflow serve
        add(
            "(a2) decode+ORT limit / (c) mlflow 1 image/request: (b)/(c) if (b) reached the limit",
            a2 / mlflow1["images_per_s"],
            None,
        )
    for target, label in (("grpc-unary", "unary"), ("grpc-stream", "stream")):
        best = _best(points, target)
        if best is None:
            continue
        add(
            f"(b) {label} / (a2) decode+ORT limit, at saturation (c={best['concurrency']})",
            best["images_per_s"] / a2,
            TARGET_VS_LIMIT,
        )
        add(f"(b) {label} / (a1) ORT-only limit, at saturation", best["images_per_s"] / a1, None)
        if best["images_per_s"] and best["server_cpu_cores"] > 0:  # robust to other load: CPU per image
            add(
                f"(a2) CPU ms/image (its cheapest configuration) / (b) {label} CPU ms/image at saturation: "
                "about (b)/(a2) where both are CPU-bound",
                a2_cpu / _cpu_per_image(best),
                None,
            )
        if mlflow1:
            add(
                f"(b) {label} / (c) mlflow 1 image/request, both at saturation",
                best["images_per_s"] / mlflow1["images_per_s"],
                TARGET_VS_MLFLOW,
            )
        if mlflow8:
            add(
                f"(b) {label} / (c) mlflow 8 images/request, both at saturation",
                best["images_per_s"] / mlflow8["images_per_s"],
                None,
            )
        one = _at(points, target, 1)
        if one:
            add(
                f"p99 of one {label} client / p50 of one image in-process",
                one["p99_ms"] / single_p50,
                TARGET_P99_ONE_CLIENT,
                higher_is_better=False,
            )
    return rows


# ---------------------------------------------------------------------------- outputs


def write(results: dict, out_dir: Path) -> dict[str, Path]:
    paths = {"json": out_dir / "results.json", "md": out_dir / "results.md", "png": out_dir / "throughput.png"}
    paths["json"].write_text(json.dumps(results, indent=2, default=_json_default) + "\n")
    paths["md"].write_text(markdown(results))
    plot(results, paths["png"])
    return paths


def _json_default(value):
    return None if isinstance(value, float) and math.isnan(value) else str(value)


def _fmt(value: float, digits: int = 1) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"


def markdown(results: dict) -> str:
    facts, limit, points = results["facts"], results["limit"], results["points"]
    single, a1, a2 = limit["single_image"], limit["a1_ort_only"], limit["a2_decode_ort"]
    lines = [f"# Serving benchmark ({facts['mode']} mode)", ""]
    if facts.get("not_quiet"):
        lines += [f"> **Measured on a busy machine** ({facts['not_quiet']}): these numbers are not final.", ""]
    lines += [
        f"Command: `{facts['command']}`  ",
        f"Date: {facts['date']}; git {facts['git_commit']}; MLflow run: {facts.get('mlflow_run', 'not logged')}  ",
        f"Machine: {facts['cpu']}, {facts['logical_cores']} logical / {facts['physical_cores']} physical cores, "
        f"{facts['memory_gb']} GiB; Python {facts['python']}; "
        + ", ".join(f"{k} {v}" for k, v in facts["versions"].items())
        + "  ",
        f"Load average (1/5/15 min) before: {_loads(facts['before'])}, after: {_loads(facts['after'])} "
        "(the 'after' one includes this benchmark's own load); other processes used "
        f"{limit.get('other_cpu_cores', 0):.2f} cores during (a) and up to {facts.get('max_other_cpu_cores', 0):.2f} "
        "during (b)/(c)  ",
        f"Model: `{facts['model']}` (sha256 {facts['model_sha256']}, {facts['model_mb']} MiB; {facts['model_made_by']})  ",
        f"Images: {facts['images']}. ONNX Runtime intra-op threads: {facts['ort_threads']} for (a) and (b); "
        f"(c) uses ONNX Runtime's default, one per physical core = {facts['physical_cores']}.  ",
        f"Each point: {facts['plan']['warmup_s']:g} s warm-up, then {facts['plan']['duration_s']:g} s measured; "
        "closed-loop clients in a separate process.",
        "",
        "## Targets",
        "",
        "| ratio | value | target | met |",
        "|---|---:|---:|:---:|",
    ]
    for row in results["ratios"]:
        met = "–" if row["met"] is None else ("yes" if row["met"] else "**no**")
        lines.append(f"| {row['name']} | {row['value']:.2f} | {row['target'] or '(context)'} | {met} |")
    lines += [
        "",
        "## (a) In-process limit (same model file, same threads, no server)",
        "",
        "Configurations: the server's session options (`services.model.OnnxClassifier`) with ONNX Runtime's "
        "thread spin-waiting set three ways: `spin` (ORT's default: idle threads spin-wait for work, also for a "
        "while after a run), `spinstop` (`session.force_spinning_stop=1`: spin only during a run), `nospin` "
        f"(`session.intra_op.allow_spinning=0`). The server uses **{limit.get('server_spinning', '?')}**. "
        "CPU = this process's CPU time per image, ORT's threads included.",
        "",
        "| measurement | images/s | latency p50 / p99 (ms) | CPU ms/image | best configuration |",
        "|---|---:|---:|---:|---|",
        f"| one image at a time: decode + resize + ORT | {single['images_per_s']:.1f} | {single['p50_ms']:.1f} / {single['p99_ms']:.1f} | {single['cpu_ms_per_image']:.1f} | batch 1, {single['best_config']} |",
        f"| one image at a time: ORT alone | {1000 / single['ort_p50_ms']:.1f} | {single['ort_p50_ms']:.1f} / {single['ort_p99_ms']:.1f} | | batch 1, {single['best_config']} |",
        f"| (a1) ORT alone, pre-decoded pixels | {a1['images_per_s']:.1f} | | {a1['cpu_ms_per_image']:.1f} | {a1['best_config']} |",
        f"| (a2) decode + resize + ORT, decode pool feeding batched ORT | {a2['images_per_s']:.1f} | | {a2['cpu_ms_per_image']:.1f} | {a2['best_config']} |",
        "",
        "<details><summary>every configuration</summary>",
        "",
        "| sweep | configuration | images/s | CPU ms/image |",
        "|---|---|---:|---:|",
    ]
    for name, sweep in (("one image", single), ("(a1)", a1), ("(a2)", a2)):
        for config, r in sweep["by_config"].items():
            lines.append(f"| {name} | {config} | {r['images_per_s']:.1f} | {r['cpu_ms_per_image']:.1f} |")
    lines += [
        "",
        "</details>",
        "",
        "## (b) gRPC service and (c) mlflow models serve",
        "",
        "images/s from the clients' send-to-send cycles inside the window, ± the standard deviation of that rate over five equal parts of the window; latency per request, measured by the client; "
        "'server p50' is the server's own time per request (`server_latency_ms`); batch = images per model run "
        "(gRPC: from the server's histogram; MLflow: images in the request); server / client CPU in cores busy "
        f"(of {facts['logical_cores']}); other CPU = cores busy with processes that are neither (0 on a quiet machine); "
        "CPU ms/image = the server's CPU time per image answered.",
        "",
        "| server | clients | images/s | p50 ms | p99 ms | server p50 ms | batch mean / max | errors | server CPU | client CPU | other CPU | CPU ms/image |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for p in points:
        batch = p["batch_size_mean"] if p["target"].startswith("grpc") else p["batch_size_request_mean"]
        lines.append(
            f"| {_label(p)} | {p['concurrency']} | {p['images_per_s']:.1f} ± {p['images_per_s_spread']:.1f} | "
            f"{_fmt(p['p50_ms'])} | {_fmt(p['p99_ms'])} | {_fmt(p['server_p50_ms'])} | {_fmt(batch)} / {p['batch_size_max']} | {p['errors']} | "
            f"{_fmt(p['server_cpu_cores'], 2)} | {_fmt(p['client_cpu_cores'], 2)} | {_fmt(p['other_cpu_cores'], 2)} | {_fmt(_cpu_per_image(p))} |"
        )
    lines += [
        "",
        "(b) / (c) at each concurrency (both one image per request):",
        "",
        "| clients | unary / (c) | stream / (c) |",
        "|---:|---:|---:|",
    ]
    for c in sorted({p["concurrency"] for p in points if p["target"] == "mlflow" and p["images_per_request"] == 1}):
        ml = _at(points, "mlflow", c)
        cells = [
            _fmt(_at(points, t, c)["images_per_s"] / ml["images_per_s"], 2)
            if _at(points, t, c) and ml["images_per_s"]
            else "–"
            for t in ("grpc-unary", "grpc-stream")
        ]
        lines.append(f"| {c} | {cells[0]} | {cells[1]} |")
    lines += ["", "![throughput](throughput.png)", "", "## How it is measured", "", *HOW, ""]
    return "\n".join(lines)


HOW = [
    "- One process per server, one more per load point: `adapt serve` (default batching: max batch 32, "
    "2 ms queue delay; `--workers` raised to 2 x the largest concurrency so that every stream holds a handler) "
    "and `mlflow models serve -w 1 --env-manager local` on the pyfunc of `adapt/tracking/pyfunc.py` (the model "
    "`adapt retrain` logs). mlflow's server runs each request in a thread (`asyncio.to_thread`), so several "
    "requests run ONNX Runtime at once on one session.",
    "- Load: closed loop, N asyncio clients in a separate process (`loadgen.py`); each sends an image and waits "
    "for its answer. gRPC unary: one `Classify` per image; gRPC stream: one `ClassifyStream` per client with one "
    "image in flight; mlflow: `POST /invocations` with a `dataframe_split` of base64 images. Requests are built "
    "before the clock starts. Only requests that complete inside the measured window count.",
    "- Same images everywhere: the ELPV test cells' PNG files, cycled; each client starts at a different offset.",
    "- (a) runs in the benchmark's own process before any server starts; the servers run one after the other, "
    "never together. Server CPU = CPU time of the server's process tree during the window (psutil).",
    "- Targets use the best (a) configuration, whichever spinning setting it needed. (c) runs ONNX Runtime as "
    "`adapt/tracking/pyfunc.py` sets it up: ORT's defaults (spinning on, one thread per physical core).",
]


def _cpu_per_image(point: dict) -> float:
    return point["server_cpu_cores"] * 1000 / point["images_per_s"] if point["images_per_s"] else math.nan


def _loads(snapshot: dict | None) -> str:
    if not snapshot:
        return "–"
    return (
        "/".join(f"{v:.2f}" for v in snapshot["loadavg"]) + f" (CPUs {snapshot['cpu_busy_percent']:.0f}% busy over 2 s)"
    )


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points, limit = results["points"], results["limit"]
    fig, (ax, ax_lat) = plt.subplots(1, 2, figsize=(11, 4.2))
    series: dict[str, list[dict]] = {}
    for p in points:
        series.setdefault(_label(p), []).append(p)
    for label, pts in series.items():
        pts = sorted(pts, key=lambda p: p["concurrency"])
        xs = [p["concurrency"] for p in pts]
        ax.errorbar(
            xs,
            [p["images_per_s"] for p in pts],
            yerr=[p["images_per_s_spread"] for p in pts],
            marker="o",
            capsize=3,
            label=label,
        )
        ax_lat.plot(xs, [p["p99_ms"] for p in pts], marker="o", label=label)
    ax.axhline(limit["a1_ort_only"]["images_per_s"], color="grey", ls="--", label="(a1) limit: ORT alone")
    ax.axhline(limit["a2_decode_ort"]["images_per_s"], color="black", ls="-.", label="(a2) limit: decode + ORT")
    ax_lat.axhline(limit["single_image"]["p50_ms"], color="black", ls="-.", label="one image in-process (p50)")
    ticks = sorted({p["concurrency"] for p in points})
    for a in (ax, ax_lat):
        a.set_xscale("log", base=2)
        a.set_xticks(ticks, [str(t) for t in ticks])
        a.set_xlabel("concurrent clients")
        a.grid(alpha=0.3)
    ax.set_ylabel("images/s")
    ax.set_ylim(bottom=0)
    ax_lat.set_ylabel("p99 latency (ms)")
    ax_lat.set_yscale("log")
    ax.set_title("Throughput")
    ax_lat.set_title("p99 latency")
    ax.legend(fontsize=7, loc="best")
    facts = results["facts"]
    busy = "  MEASURED ON A BUSY MACHINE: NOT FINAL" if facts.get("not_quiet") else ""
    fig.suptitle(
        f"Serving benchmark ({facts['mode']}), {facts['ort_threads']} ORT threads, {facts['cpu']}, {facts['date']}{busy}",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------- MLflow


def flat_metrics(results: dict) -> tuple[dict[str, float], dict[tuple[str, int], dict[str, float]]]:
    """(run-level metrics, per-series metrics keyed by (series, concurrency) -> logged with step = concurrency)."""
    limit = results["limit"]
    top = {
        "limit/single_image_p50_ms": limit["single_image"]["p50_ms"],
        "limit/single_image_p99_ms": limit["single_image"]["p99_ms"],
        "limit/a1_images_per_s": limit["a1_ort_only"]["images_per_s"],
        "limit/a2_images_per_s": limit["a2_decode_ort"]["images_per_s"],
        "machine/other_cpu_cores_during_a": limit["other_cpu_cores"],
        "machine/other_cpu_cores_max_during_bc": results["facts"]["max_other_cpu_cores"],
    }
    for i, row in enumerate(results["ratios"]):
        top[f"ratio/{i:02d}"] = row["value"]
    steps = {}
    for p in results["points"]:
        series = f"{p['target']}_x{p['images_per_request']}"
        steps[(series, p["concurrency"])] = {
            f"{series}/{k}": p[k]
            for k in ("images_per_s", "p50_ms", "p99_ms", "batch_size_mean", "server_cpu_cores", "errors")
        } | {f"{series}/cpu_ms_per_image": _cpu_per_image(p)}
    return top, steps


def publish(results: dict, out_dir: Path, tracking_uri: str | None, log: bool) -> dict[str, Path]:
    """Write the outputs; with ``log``, into an MLflow run in experiment 'benchmarks' as well."""
    if not log:
        return write(results, out_dir)
    from adapt.tracking.runs import start_run
    from adapt.tracking.store import resolve_tracking_uri

    facts = results["facts"]
    params = {
        k: facts[k] for k in ("mode", "ort_threads", "model", "model_sha256", "cpu", "logical_cores", "git_commit")
    }
    params |= {f"plan.{k}": v for k, v in facts["plan"].items()}
    params |= {f"load_before.{k}": v for k, v in facts["before"].items()}
    run = start_run(
        resolve_tracking_uri(tracking_uri),
        "benchmarks",
        f"serving-{facts['mode']}",
        params,
        {"benchmark": "serving"},
        command="bench-serving",
    )
    try:
        facts["mlflow_run"] = f"{run.run_id} (experiment 'benchmarks', {run.tracking_uri})"
        top, steps = flat_metrics(results)
        run.log_metrics(top)
        for (_, concurrency), values in steps.items():
            run.log_metrics(values, step=concurrency)
        run.set_tags(
            {
                f"ratio/{i:02d}": f"{r['name']}: {r['value']:.3f} (target {r['target'] or '-'})"
                for i, r in enumerate(results["ratios"])
            }
        )
        paths = write(results, out_dir)
        for path in paths.values():
            run.log_artifact(path)
        run.end()
    except BaseException:
        run.end_quietly()
        raise
    return paths


def summary(results: dict, paths: dict[str, Path]) -> str:
    lines = ["", "ratio | value | target | met"]
    for row in results["ratios"]:
        met = "-" if row["met"] is None else ("yes" if row["met"] else "NO")
        lines.append(f"{row['name']} | {row['value']:.2f} | {row['target'] or '(context)'} | {met}")
    lines.append("")
    lines += [f"wrote {p}" for p in paths.values()]
    if "mlflow_run" in results["facts"]:
        lines.append(f"MLflow run {results['facts']['mlflow_run']}")
    return "\n".join(lines)
