"""Distributed training with 2 CPU processes (gloo): torchrun end to end, and exact first-step gradients."""

from __future__ import annotations

import csv
import os
import subprocess
import sys

import pytest
import torch

from audio2lp.motion_model import load_motion_model, read_motion_model_metadata
from training.config import save_config

from .test_trainer import REPO, make_dataset, tiny_config

pytestmark = pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed is not available")


def _env() -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def test_torchrun_two_processes(tmp_path):
    ds = make_dataset(tmp_path / "ds")
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config("schedule.steps=60", "run.checkpoint_every=20", "run.log_every=10",
                            "run.val_every=30", "schedule.warmup_steps=2"), cfg)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training", "train", str(ds), "-o", str(run), "--config", str(cfg)]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("wrote ") == 1, "only rank 0 reports"
    # only rank 0 writes: the expected files, each once
    names = sorted(p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()
                   and "tensorboard" not in p.parts)
    assert names == ["checkpoints/step-00000020.pt", "checkpoints/step-00000040.pt", "checkpoints/step-00000060.pt",
                     "config.yaml", "curves.png", "metrics.csv", "motion_model.safetensors", "run.json"], names
    assert len(list((run / "tensorboard").iterdir())) == 1
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40, 50, 60]
    assert float(rows[-1]["loss"]) < float(rows[0]["loss"]), "the loss decreased"
    model, stats = load_motion_model(run / "motion_model.safetensors")
    extra = read_motion_model_metadata(run / "motion_model.safetensors")["extra"]
    assert extra["train"]["world_size"] == 2, "both ranks formed the process group"
    assert extra["train"]["steps"] == 60


def _grad_worker(rank: int, world: int, init_file: str, ds: str, run: str, out: str) -> None:
    import torch.distributed as dist

    from training.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        t = Trainer(ds, run, tiny_config("model.dropout=0.0", "data.batch_size=4", "run.tensorboard=false"),
                    progress=False)
        t.model.train()
        loss, _ = t.compute_loss(0)
        loss.backward()  # DDP averages the gradients over the ranks
        if rank == 0:
            torch.save({k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None}, out)
    finally:
        dist.destroy_process_group()


def test_two_ranks_with_half_batches_give_the_single_process_gradients(tmp_path):
    import torch.multiprocessing as mp

    from training.trainer import Trainer

    ds = make_dataset(tmp_path / "ds")
    t = Trainer(ds, tmp_path / "single", tiny_config("model.dropout=0.0", "data.batch_size=4",
                                                     "run.tensorboard=false"), progress=False)
    t.model.train()
    loss, _ = t.compute_loss(0)
    loss.backward()
    single = {k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None}
    out = tmp_path / "grads.pt"
    mp.spawn(_grad_worker, args=(2, str(tmp_path / "init"), str(ds), str(tmp_path / "ddp"), str(out)), nprocs=2,
             join=True)
    ddp = torch.load(out, weights_only=True)
    assert single.keys() == ddp.keys() and len(single) > 10
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-7, msg=f"gradient of {k}")
    assert max(float(g.abs().max()) for g in single.values()) > 1e-4, "non-trivial gradients"


def test_batch_must_divide_by_world_size(tmp_path):
    ds = make_dataset(tmp_path / "ds", n_clips=3)
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config("data.batch_size=3", "schedule.steps=2"), cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training", "train", str(ds), "-o", str(tmp_path / "run"), "--config", str(cfg)]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "not divisible by the 2 processes" in out.stderr



