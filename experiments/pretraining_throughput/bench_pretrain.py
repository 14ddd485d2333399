"""Pretraining throughput: ``adapt pretrain`` against a plain open_clip training loop (the peer).

    python experiments/pretraining_throughput/bench_pretrain.py                  # adapt-small, 3 repeats
    python experiments/pretraining_throughput/bench_pretrain.py --model adapt-tiny --quick

What is measured (issue 7, benchmark 4): training samples/s of the same model on the same data
with the same threads, two ways:

- ``adapt``: ``adapt.pipelines.pretrain.run_pretrain(PretrainConfig(data=["synthetic"], ...))`` -- the
  Lightning module, Trainer and callbacks exactly as the product runs them (CPU, fp32);
- ``plain``: the loop of open_clip's own trainer (``open_clip_train/train.py``:
  ``train_one_epoch``) written out for one process: ``open_clip.create_model(...,
  output_dict=True)``, ``open_clip.loss.ClipLoss``, AdamW with open_clip's two parameter groups
  (no weight decay on 1-d parameters, biases and logit_scale) and the same betas/eps/lr/weight
  decay as adapt, per-step linear warmup + cosine lr, ``clip_grad_norm_`` 1.0, and the
  ``logit_scale`` clamp after each step.

Both read the same ``adapt.data.captions.CaptionDataset`` (synthetic generator, same seed)
through a ``DataLoader`` with the same batch size, ``num_workers``, shuffle and drop_last, and
normalise pixels with the same ``PixelNormalizer`` in the training process. Threads: on CPU
``run_pretrain`` sets torch's intra-op threads to (cores - data workers); the plain loop applies
the same rule, and the report shows the count each side actually ran with.

Timing is symmetric and steady-state: both sides take a timestamp at the end of every optimiser
step (adapt: a Lightning callback's ``on_train_batch_end``, added to the Trainer that
``run_pretrain`` builds; plain: after the clamp), and the rate is
``(N - K) * batch / (t_N - t_K)`` -- the first K steps (worker start-up, allocator warm-up,
Lightning set-up) are excluded on both sides. The median step time is reported as a
load-robust check. ``run_pretrain``'s own ``samples_per_s`` (whole ``trainer.fit``, start-up
included) is shown for reference. A data-loader-only pass (same loader, no model) gives the
ceiling the input pipeline allows, so a data-bound comparison is visible as such.

Each side runs in a fresh process, ``--repeats`` times, alternating which side goes first;
the headline ratio is median(adapt) / median(plain). Load average at start and end and the CPU
used by other processes are recorded, with a warning when the machine was not quiet.

Outputs (beside this file; ``--quick`` writes ``*_quick.*``): ``results.md``, ``results.json``;
one MLflow run in experiment ``benchmarks``.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
MODEL_CONFIGS = REPO / "adapt" / "model_configs"

logger = logging.getLogger("bench_pretrain")

SEED = 0
LR, WEIGHT_DECAY, WARMUP_STEPS = 5e-4, 0.1, 50  # PretrainConfig defaults; the plain loop uses the same


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="adapt-small", help="open_clip architecture (adapt-tiny for a fast check)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=None, help="optimiser steps per run, N (default 40; 25 with --quick)")
    p.add_argument("--warmup-steps-excluded", type=int, default=5, help="first K steps left out of the steady-state rate")
    p.add_argument("--workers", type=int, default=1, help="data-loader worker processes (PretrainConfig default: 1)")
    p.add_argument("--repeats", type=int, default=None, help="fresh-process runs per side (default 3; 1 with --quick)")
    p.add_argument("--quick", action="store_true", help="fewer steps, one repeat; writes *_quick.* files")
    p.add_argument("--out", default=str(HERE), help="folder for results.md and results.json")
    p.add_argument("--tracking-uri", default=None, help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI or sqlite:///mlflow.db)")
    p.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    p.add_argument("--worker", default=None, help=argparse.SUPPRESS)  # internal: JSON spec of one measurement
    p.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.steps = args.steps or (25 if args.quick else 40)
    args.repeats = args.repeats or (1 if args.quick else 3)
    if not 0 <= args.warmup_steps_excluded < args.steps - 1:
        p.error("need 0 <= --warmup-steps-excluded < --steps - 1")
    return args


def _machine():
    """The shared benchmark helpers (experiments/cost/machine.py)."""
    sys.path.insert(0, str(REPO / "experiments" / "cost"))
    import machine

    return machine


# ---------------------------------------------------------------------------------------------
# Measurements, each in a fresh process


def steady_state(stamps: list[float], skip: int, batch_size: int) -> dict:
    """Rates from end-of-step timestamps; ``stamps[0]`` is taken before the first step."""
    steps = len(stamps) - 1
    window = stamps[skip:]
    durations = [b - a for a, b in zip(window, window[1:])]
    return {
        "steps": steps,
        "window": [skip + 1, steps],
        "samples_per_s": (steps - skip) * batch_size / (stamps[-1] - stamps[skip]),
        "median_step_s": statistics.median(durations),
        "samples_per_s_from_median_step": batch_size / statistics.median(durations),
        "first_step_s": stamps[1] - stamps[0],
    }


def cpu_threads_beside(workers: int) -> int:
    """The rule of ``adapt.pipelines.pretrain._share_cpu_with_workers``: leave the data workers their cores."""
    import torch

    cores = len(os.sched_getaffinity(0))
    if workers > 0 and torch.get_num_threads() > max(1, cores - workers):
        torch.set_num_threads(max(1, cores - workers))
    return torch.get_num_threads()


def caption_loader(model_name: str, image_size: int, spec: dict):
    """The data ``run_pretrain`` builds for ``data=["synthetic"]``, built the same way."""
    import open_clip
    from torch.utils.data import DataLoader

    from adapt.data.captions import CaptionDataset, resolve_sources

    sources = resolve_sources(["synthetic"], synthetic_samples=spec["samples"], seed=SEED, image_size=image_size)
    dataset = CaptionDataset(sources, open_clip.get_tokenizer(model_name), image_size)
    w = spec["workers"]
    return DataLoader(dataset, batch_size=spec["batch_size"], shuffle=True, drop_last=True, num_workers=w, persistent_workers=w > 0)


def _image_size(model) -> int:
    size = model.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def measure_adapt(spec: dict) -> dict:
    import lightning

    from adapt.pipelines.pretrain import PretrainConfig, run_pretrain

    class StepClock(lightning.Callback):
        def __init__(self) -> None:
            self.stamps: list[float] = []
            self.threads = 0

        def on_train_epoch_start(self, trainer, module) -> None:
            self.threads = __import__("torch").get_num_threads()
            if not self.stamps:
                self.stamps.append(time.perf_counter())

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.stamps.append(time.perf_counter())

    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="bench-pretrain-") as out:
        result = run_pretrain(
            PretrainConfig(
                data=["synthetic"], model=spec["model"], batch_size=spec["batch_size"], max_steps=spec["steps"],
                num_workers=spec["workers"], accelerator="cpu", progress=False, output_dir=Path(out),
                synthetic_samples=spec["samples"], seed=SEED, lr=LR, weight_decay=WEIGHT_DECAY, warmup_steps=WARMUP_STEPS,
                zero_shot_per_class=1,  # the zero-shot check after training is not timed; keep it short
            ),
            callbacks=[clock],
        )
    return {
        **steady_state(clock.stamps, spec["skip"], spec["batch_size"]),
        "threads": clock.threads,
        "reported_samples_per_s": result.samples_per_s,
        "reported_train_seconds": result.train_seconds,
        "final_loss": result.final_loss,
    }


def measure_plain(spec: dict) -> dict:
    import random

    import numpy as np
    import open_clip
    import torch
    from open_clip.loss import ClipLoss

    from adapt.core.classifier import PixelNormalizer

    random.seed(SEED)
    np.random.seed(SEED)
    torch.manual_seed(SEED)
    threads = cpu_threads_beside(spec["workers"])
    open_clip.add_model_config(MODEL_CONFIGS)
    model = open_clip.create_model(spec["model"], output_dict=True)
    pp = model.visual.preprocess_cfg
    normalize = PixelNormalizer(pp["mean"], pp["std"])
    loader = caption_loader(spec["model"], _image_size(model), spec)
    loss_fn = ClipLoss(local_loss=False, gather_with_grad=False, cache_labels=True, rank=0, world_size=1)

    def exclude(name, p):  # open_clip_train/main.py's grouping
        return p.ndim < 2 or "bn" in name or "ln" in name or "bias" in name or "logit_scale" in name

    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for n, p in named if exclude(n, p)], "weight_decay": 0.0},
         {"params": [p for n, p in named if not exclude(n, p)], "weight_decay": WEIGHT_DECAY}],
        lr=LR, betas=(0.9, 0.98), eps=1e-6,
    )
    total = spec["steps"]
    warmup = min(WARMUP_STEPS, max(1, total // 10))  # as run_pretrain shortens it for short runs

    def set_lr(step: int) -> None:  # open_clip_train.scheduler.cosine_lr
        if step < warmup:
            lr = LR * (step + 1) / warmup
        else:
            lr = 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))) * LR
        for group in optimizer.param_groups:
            group["lr"] = lr

    model.train()
    stamps = [time.perf_counter()]
    batches = iter(loader)
    for step in range(total):
        set_lr(step)
        pixels, tokens = next(batches)
        optimizer.zero_grad()
        out = model(normalize(pixels), tokens)
        losses = loss_fn(**out, output_dict=True)
        loss = sum(losses.values())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, norm_type=2.0)
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        stamps.append(time.perf_counter())
    rate = steady_state(stamps, spec["skip"], spec["batch_size"])
    whole = total * spec["batch_size"] / (stamps[-1] - stamps[0])
    return {**rate, "threads": threads, "whole_loop_samples_per_s": whole, "final_loss": float(loss)}


def measure_loader(spec: dict) -> dict:
    """The input pipeline alone: the same loader, same threads, no model."""
    import open_clip

    threads = cpu_threads_beside(spec["workers"])
    open_clip.add_model_config(MODEL_CONFIGS)
    size = int(open_clip.get_model_config(spec["model"])["vision_cfg"]["image_size"])
    loader = caption_loader(spec["model"], size, spec)
    stamps = [time.perf_counter()]
    for step, _ in enumerate(loader, start=1):
        stamps.append(time.perf_counter())
        if step == spec["steps"]:
            break
    return {**steady_state(stamps, spec["skip"], spec["batch_size"]), "threads": threads}


SIDES = {"adapt": measure_adapt, "plain": measure_plain, "loader": measure_loader}


def worker_main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    spec = json.loads(args.worker)
    load_start = os.getloadavg()[0]
    result = SIDES[spec["side"]](spec)
    result.update(side=spec["side"], load_start=round(load_start, 2), load_end=round(os.getloadavg()[0], 2))
    Path(args.worker_out).write_text(json.dumps(result, indent=2))


# ---------------------------------------------------------------------------------------------
# The harness


def run_worker(spec: dict) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec), "--worker-out", str(out)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not out.is_file():
            raise RuntimeError(f"{spec['side']} failed (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        return json.loads(out.read_text())


def summarise(runs: list[dict]) -> dict:
    out = {}
    for side in SIDES:
        rs = [r for r in runs if r["side"] == side]
        if rs:
            out[side] = {
                "samples_per_s": statistics.median(r["samples_per_s"] for r in rs),
                "samples_per_s_runs": [round(r["samples_per_s"], 2) for r in rs],
                "median_step_s": statistics.median(r["median_step_s"] for r in rs),
                "samples_per_s_from_median_step": statistics.median(r["samples_per_s_from_median_step"] for r in rs),
                "first_step_s": statistics.median(r["first_step_s"] for r in rs),
                "threads": sorted({r["threads"] for r in rs}),
            }
    a, p = out["adapt"], out["plain"]
    out["ratio_adapt_over_plain"] = a["samples_per_s"] / p["samples_per_s"]
    out["ratio_from_median_step"] = a["samples_per_s_from_median_step"] / p["samples_per_s_from_median_step"]
    pairs = zip([r for r in runs if r["side"] == "adapt"], [r for r in runs if r["side"] == "plain"])
    out["ratio_per_repeat"] = [round(x["samples_per_s"] / y["samples_per_s"], 3) for x, y in pairs]
    out["reported_samples_per_s_adapt"] = statistics.median(r["reported_samples_per_s"] for r in runs if r["side"] == "adapt")
    out["whole_loop_samples_per_s_plain"] = statistics.median(r["whole_loop_samples_per_s"] for r in runs if r["side"] == "plain")
    out["final_loss"] = {side: statistics.median(r["final_loss"] for r in runs if r["side"] == side) for side in ("adapt", "plain")}
    return out


def write_markdown(path: Path, report: dict) -> None:
    s, cfg, m, w = report["summary"], report["config"], report["machine"], report["watch"]
    lines = [f"# Pretraining throughput: `adapt pretrain` vs a plain open_clip loop ({cfg['model']})", ""]
    if report["warnings"]:
        lines += ["> **Not a publishable measurement:**", *[f"> - {x}" for x in report["warnings"]], ""]
    lines += [
        f"**adapt / plain = {s['ratio_adapt_over_plain']:.3f}** (steady state, median of {cfg['repeats']} run(s) per side; "
        f"per repeat: {', '.join(f'{r:.3f}' for r in s['ratio_per_repeat'])}; from median step time: {s['ratio_from_median_step']:.3f})",
        "",
        "| side | samples/s (steps K+1..N) | median step s | samples/s from median step | first step s | torch threads | runs |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    labels = {"adapt": "adapt pretrain (Lightning)", "plain": "plain open_clip loop", "loader": "data loader alone (ceiling)"}
    for side, label in labels.items():
        r = s.get(side)
        if r:
            lines.append(
                f"| {label} | {r['samples_per_s']:.1f} | {r['median_step_s']:.3f} | {r['samples_per_s_from_median_step']:.1f} "
                f"| {r['first_step_s']:.2f} | {', '.join(map(str, r['threads']))} "
                f"| {', '.join(f'{v:.1f}' for v in r['samples_per_s_runs'])} |"
            )
    lines += [
        "",
        f"- model {cfg['model']}, batch {cfg['batch_size']}, {cfg['workers']} data worker(s), N = {cfg['steps']} steps per run, "
        f"first K = {cfg['skip']} excluded, fp32 on CPU, data `synthetic` (seed {SEED}), CLIP loss, lr {LR:g}, wd {WEIGHT_DECAY:g}.",
        f"- whole-run rates, start-up included (not comparable to each other): `run_pretrain`'s own samples_per_s "
        f"{s['reported_samples_per_s_adapt']:.1f} (whole `trainer.fit`); plain loop from iterator creation "
        f"{s['whole_loop_samples_per_s_plain']:.1f}.",
        "- threads: `run_pretrain` sets torch intra-op threads to cores - data workers on CPU; the plain loop applies the same rule.",
        f"- same computation check: loss after step N, adapt {s['final_loss']['adapt']:.3f} vs plain {s['final_loss']['plain']:.3f} "
        "(same init seed, data and recipe; the shuffle order may differ).",
        "",
        "## Run",
        "",
        f"- command: `{report['command']}`",
        f"- date: {m['date']}; git {m['git_commit']}; host {m['host']}",
        f"- machine: {m['nproc']} cores ({m['cpu_model']}), {m['memory_gb']} GB; torch threads before the rule {m['torch_threads']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in m['versions'].items())}",
        f"- load average (1 min): {w['load_start']:.2f} at start, {w['load_end']:.2f} at end; other processes used "
        f"{w['other_cores']:.2f} cores on average over {w['wall_s']:.0f} s",
        "",
    ]
    path.write_text("\n".join(lines))


def log_to_mlflow(report: dict, files: list[Path], tracking_uri: str | None) -> str:
    from adapt.tracking.runs import start_run
    from adapt.tracking.store import resolve_tracking_uri

    cfg, s = report["config"], report["summary"]
    run = start_run(
        resolve_tracking_uri(tracking_uri), "benchmarks", f"pretraining-throughput-{cfg['model']}{'-quick' if cfg['quick'] else ''}",
        params={"benchmark": "pretraining-throughput", **cfg, "threads": s["adapt"]["threads"], "nproc": report["machine"]["nproc"],
                "cpu_model": report["machine"]["cpu_model"]},
        tags={"benchmark": "pretraining-throughput", "quiet_machine": str(not report["warnings"]).lower()},
        command="benchmark",
    )
    metrics = {"ratio_adapt_over_plain": s["ratio_adapt_over_plain"], "ratio_from_median_step": s["ratio_from_median_step"],
               **{k: report["watch"][k] for k in ("load_start", "load_end", "other_cores")}}
    for side in SIDES:
        if side in s:
            metrics[f"{side}.samples_per_s"] = s[side]["samples_per_s"]
            metrics[f"{side}.median_step_s"] = s[side]["median_step_s"]
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
    machine = _machine()
    command = machine.command_line(__file__, argv)
    base = {"model": args.model, "batch_size": args.batch_size, "steps": args.steps, "skip": args.warmup_steps_excluded,
            "workers": args.workers, "samples": (args.steps + 2) * args.batch_size}
    facts = machine.machine_facts(REPO)
    watch = machine.CpuWatch().start()
    if watch.load_start > machine.LOAD_WARNING:
        logger.warning("WARNING: load average %.2f > %.1f at start: timings will be noisy", watch.load_start, machine.LOAD_WARNING)
    runs = []
    order = [["loader"]] + [["adapt", "plain"] if r % 2 == 0 else ["plain", "adapt"] for r in range(args.repeats)]
    for sides in order:
        for side in sides:
            r = run_worker({**base, "side": side})
            runs.append(r)
            logger.info("%-6s %7.1f samples/s (median step %.3f s, %d thread(s)), load avg %.2f->%.2f",
                        side, r["samples_per_s"], r["median_step_s"], r["threads"], r["load_start"], r["load_end"])
    w = watch.stop()
    warnings = machine.quietness_warnings(w)
    if args.quick:
        warnings.append("--quick: few steps and one repeat, for checking the harness only")
    summary = summarise(runs)
    threads = {side: summary[side]["threads"] for side in ("adapt", "plain")}
    if threads["adapt"] != threads["plain"]:
        warnings.append(f"the two sides ran with different torch threads: {threads}")
    loader = summary.get("loader")
    if loader and loader["samples_per_s"] < 1.5 * max(summary["adapt"]["samples_per_s"], summary["plain"]["samples_per_s"]):
        warnings.append(f"data-bound: the loader alone gives {loader['samples_per_s']:.0f} samples/s, close to the training rates")
    report = {"benchmark": "pretraining-throughput", "command": command, "config": {**base, "repeats": args.repeats, "quick": args.quick},
              "machine": facts, "watch": w, "warnings": warnings, "summary": summary, "runs": runs}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    files = [out / f"results{suffix}.md", out / f"results{suffix}.json"]
    write_markdown(files[0], report)
    files[1].write_text(json.dumps(report, indent=2))
    logger.info("adapt / plain = %.3f (steady state); wrote %s", summary["ratio_adapt_over_plain"], ", ".join(map(str, files)))
    for warning in warnings:
        logger.warning("WARNING: %s", warning)
    if not args.no_tracking:
        try:
            logger.info("MLflow run: %s", log_to_mlflow(report, files, args.tracking_uri))
        except Exception as exc:  # the result files are written; tracking is a copy
            logger.warning("MLflow logging failed (%s); results are in %s", exc, out)


if __name__ == "__main__":
    main()
