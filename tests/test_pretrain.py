"""Contrastive pretraining: it learns, both losses run, it resumes, its checkpoint is open_clip's."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

import open_clip
import pytest
import torch

from adapt.core.backbone import register_builtin_configs
from adapt.data.captions import CaptionDataset, manifest_source, resolve_sources
from adapt.errors import AdaptError, DataError
from adapt.pipelines.pretrain import PretrainConfig, run_pretrain

register_builtin_configs()  # adapt-tiny, used with plain open_clip below


def _cfg(tmp_path, **kw) -> PretrainConfig:
    base = dict(
        data=["synthetic"], model="adapt-tiny", output_dir=tmp_path / "pt", batch_size=16, synthetic_samples=64,
        num_workers=0, accelerator="cpu", progress=False, zero_shot_per_class=2, checkpoint_every=2,
    )
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.integration
def test_a_few_steps_lower_the_loss_on_a_fixed_batch():
    import lightning as L
    from torch.utils.data import DataLoader

    from adapt.training.contrastive import ContrastivePretraining

    torch.manual_seed(0)
    model = open_clip.create_model("adapt-tiny", output_dict=True)
    tok = open_clip.get_tokenizer("adapt-tiny")
    ds = CaptionDataset(resolve_sources(["synthetic"], synthetic_samples=32, seed=3, image_size=32), tok, 32, augment=False)
    batch = next(iter(DataLoader(ds, batch_size=32)))
    module = ContrastivePretraining(model, lr=2e-3, warmup_steps=1, total_steps=30)
    module.setup("fit")

    def loss() -> float:
        with torch.no_grad():
            return float(module.training_step(batch, 0))

    module.log = lambda *a, **k: None  # outside a Trainer
    before = loss()
    trainer = L.Trainer(max_steps=30, accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, DataLoader([tuple(t) for t in zip(*batch)] * 1, batch_size=32))
    module.log = lambda *a, **k: None
    assert loss() < 0.7 * before


@pytest.mark.integration
@pytest.mark.parametrize("loss", ["clip", "siglip"])
def test_both_losses_train_and_write_an_open_clip_checkpoint(loss, tmp_path):
    result = run_pretrain(_cfg(tmp_path, loss=loss, max_steps=3))
    assert result.steps == 3 and torch.isfinite(torch.tensor(result.final_loss))
    assert result.zero_shot["classes"] == 9
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{result.output_dir}")
    state = torch.load(result.checkpoint, weights_only=True)
    assert torch.equal(model.state_dict()["visual.conv1.weight"], state["visual.conv1.weight"])
    from adapt.pipelines.pretrain import synthetic_zero_shot

    again = synthetic_zero_shot(model.eval(), open_clip.get_tokenizer("adapt-tiny"), 32, model.visual.preprocess_cfg, per_class=2)
    assert again == pytest.approx(result.zero_shot)  # the reported numbers are those of the checkpoint a user loads
    assert (model.logit_bias is not None) == (loss == "siglip")


@pytest.mark.integration
def test_resume_continues_from_the_saved_step(tmp_path):
    first = run_pretrain(_cfg(tmp_path, max_steps=2))
    assert first.steps == 2 and (tmp_path / "pt" / "checkpoints" / "last.ckpt").is_file()
    with pytest.raises(AdaptError, match="--resume"):
        run_pretrain(_cfg(tmp_path, max_steps=4))
    second = run_pretrain(_cfg(tmp_path, max_steps=4, resume=True))
    assert second.steps == 4


@pytest.mark.e2e
@pytest.mark.slow
def test_killed_run_resumes_to_the_end(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "adapt", "-q", "pretrain", "--data", "synthetic", "--model", "adapt-tiny", "--epochs", "1",
           "--synthetic-samples", "800", "--batch-size", "16", "--checkpoint-every", "5", "--num-workers", "0",
           "--accelerator", "cpu", "--output-dir", str(out), "--experiment", "pretrain-killed"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "checkpoints" / "last.ckpt").exists() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "open_clip_pytorch_model.bin").exists(), "the run finished before it could be killed"
    saved = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)["global_step"]
    assert 0 < saved < 50
    done = subprocess.run(cmd + ["--resume"], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "for 50 steps" in done.stdout
    assert (out / "open_clip_pytorch_model.bin").is_file()
    from mlflow import MlflowClient  # the killed run is closed by the next command on the same store

    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("pretrain-killed").experiment_id])
    assert sorted(r.info.status for r in runs) == ["FINISHED", "KILLED"]
    assert "marked 1 MLflow run(s) KILLED" in done.stderr


@pytest.mark.unit
@pytest.mark.parametrize(
    "content, message",
    [
        ("image,caption\nmissing.png,a crack\n", r"pairs.csv:2: image not found: missing.png"),
        ("image,caption\nok.png,\n", r"pairs.csv:2: empty caption for ok.png"),
        ("picture,text\n", "missing column"),
    ],
)
def test_bad_manifest_rows_are_named(tmp_path, content, message):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "pairs.csv").write_text(content)
    with pytest.raises(DataError, match=message):
        manifest_source(tmp_path / "pairs.csv")


@pytest.mark.unit
def test_jsonl_manifest_and_its_errors(tmp_path):
    from PIL import Image

    Image.new("RGB", (8, 8)).save(tmp_path / "ok.png")
    (tmp_path / "pairs.jsonl").write_text('{"image": "ok.png", "caption": "a good part"}\n\n{"image": "ok.png"}\n')
    with pytest.raises(DataError, match=r"pairs.jsonl:3: empty caption"):
        manifest_source(tmp_path / "pairs.jsonl")
    (tmp_path / "pairs.jsonl").write_text('{"image": "ok.png", "caption": "a good part"}\n')
    src = manifest_source(tmp_path / "pairs.jsonl")
    assert src.n == 1 and src.get(0)[1] == "a good part"


@pytest.mark.unit
def test_elpv_pretraining_source_never_reads_the_test_split():
    from adapt.data import elpv, load_dataset

    src = resolve_sources(["elpv"], synthetic_samples=0, seed=0, image_size=32)[0]
    assert src.n == 1968
    test_keys = set(load_dataset("elpv").test.keys)
    paths, _, _ = elpv.read_labels()
    train_idx, _ = elpv.fixed_split()
    assert not {paths[i] for i in train_idx} & test_keys
    caption = src.get(5)[1]
    assert "crystalline" in caption and "defect" not in caption and "crack" not in caption


@pytest.mark.e2e
@pytest.mark.slow
def test_ddp_with_two_cpu_processes(tmp_path):
    """Lightning DDP (gloo) across two processes; ClipLoss gathers features from both ranks."""
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "adapt", "pretrain", "--data", "synthetic", "--model", "adapt-tiny", "--synthetic-samples", "128",
           "--batch-size", "8", "--max-steps", "3", "--num-workers", "0", "--accelerator", "cpu", "--devices", "2",
           "--strategy", "ddp", "--output-dir", str(out), "--no-tracking"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "3 steps of 8 x 2 device(s)" in done.stderr
    assert "for 3 steps" in done.stdout
    model, _, _ = open_clip.create_model_and_transforms(f"local-dir:{out}")
    state = torch.load(out / "open_clip_pytorch_model.bin", weights_only=True)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # rank 0 wrote what it trained
    summary = json.loads((out / "pretrain_metrics.json").read_text())
    assert summary["steps"] == 3 and math.isfinite(summary["final_loss"])


@pytest.mark.integration
def test_self_supervised_term_trains_alongside_clip(tmp_path):
    result = run_pretrain(_cfg(tmp_path, max_steps=2, ssl_data=["synthetic"], ssl_batch_size=8))
    assert result.steps == 2 and torch.isfinite(torch.tensor(result.final_loss))
    state = torch.load(result.checkpoint, weights_only=True)
    assert not any(k.startswith("ssl_head") for k in state)  # the SSL head is not part of the open_clip model


@pytest.mark.unit
def test_image_tower_learning_rate_can_be_scaled():
    from adapt.training.contrastive import ContrastivePretraining

    model = open_clip.create_model("adapt-tiny", output_dict=True)
    module = ContrastivePretraining(model, lr=1e-3, vision_lr_scale=0.1)
    opt = module.configure_optimizers()["optimizer"]
    visual = {id(p) for n, p in model.visual.named_parameters() if n not in ("proj", "ln_post.weight", "ln_post.bias")}
    for group in opt.param_groups:
        is_visual = {id(p) in visual for p in group["params"]}
        assert len(is_visual) == 1
        assert group["initial_lr"] == pytest.approx(1e-4 if is_visual.pop() else 1e-3)  # before the warmup factor
        assert group["weight_decay"] in (0.0, 0.1)
    assert sum(len(g["params"]) for g in opt.param_groups) == len([p for p in model.parameters() if p.requires_grad])
    locked = ContrastivePretraining(open_clip.create_model("adapt-tiny", output_dict=True), vision_lr_scale=0.0)
    trainable = {n for n, p in locked.model.visual.named_parameters() if p.requires_grad}
    assert trainable == {"proj", "ln_post.weight", "ln_post.bias"}