"""Distributed training with 2 CPU processes (gloo): torchrun end to end, and exact first-step gradients."""

from __future__ import annotations

import contextlib
import csv
import datetime
import os
import subprocess
import sys

import pytest
import torch

from audio2lp.models.motion_model import load_motion_model, read_motion_model_metadata
from training.motion.config import save_config

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


RESUME = ["schedule.steps=8", "run.checkpoint_every=4", "run.tensorboard=false", "model.dropout=0.0",
          "sampling.max_prob=0"]  # no dropout or sampling noise, whose draws depend on the rank


def _ddp_worker(rank: int, world: int, init_file: str, ds: str, tmp: str) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from training.motion.trainer import Trainer

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=120))  # ranks out of step fail instead of hanging
    try:
        # 1. the first step's gradients, averaged by DDP over the ranks
        t = Trainer(ds, f"{tmp}/ddp", tiny_config("model.dropout=0.0", "data.batch_size=4", "run.tensorboard=false"),
                    progress=False)
        t.model.train()
        loss, _ = t.compute_loss(0)
        loss.backward()
        if rank == 0:
            torch.save({k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None},
                       f"{tmp}/grads.pt")
        # 2. resume: only rank 0 sees the run folder; rank 1 gets a folder that does not exist and another config
        run = f"{tmp}/single" if rank == 0 else f"{tmp}/not-on-this-machine"
        cfg = tiny_config(*RESUME) if rank == 0 else tiny_config("schedule.steps=8", "optim.lr=0.5")
        r = Trainer(ds, run, cfg, resume=True, progress=False)
        info = {"step": r.step, "config": r.cfg.to_dict(), "ddp": isinstance(r.net, DistributedDataParallel),
                "model": {k: v.clone() for k, v in r.model.state_dict().items()},
                "exp_avg": [s["exp_avg"].clone() for s in r.optimizer.state.values()]}
        res = r.run()
        info["steps"] = res.steps
        info["final"] = {k: v.clone() for k, v in r.model.state_dict().items()}
        torch.save(info, f"{tmp}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_two_ranks_match_one_process_and_resume_from_rank_0s_checkpoint(tmp_path):
    """Two ranks with half batches give the single-process gradients. A 2-rank resume of a single-process run
    takes the checkpoint and config from rank 0 only, and ends with the weights of the uninterrupted run."""
    import torch.multiprocessing as mp
    from safetensors.torch import load_file

    from training.motion.trainer import Trainer, train

    ds = make_dataset(tmp_path / "ds")
    t = Trainer(ds, tmp_path / "single-grad", tiny_config("model.dropout=0.0", "data.batch_size=4",
                                                          "run.tensorboard=false"), progress=False)
    t.model.train()
    loss, _ = t.compute_loss(0)
    loss.backward()
    single = {k: p.grad.clone() for k, p in t.model.named_parameters() if p.grad is not None}
    # an uninterrupted single-process run of 8 steps, then "killed" back to its checkpoint at step 4
    train(ds, tmp_path / "single", tiny_config(*RESUME), progress=False)
    full = load_file(str(tmp_path / "single" / "motion_model.safetensors"))
    (tmp_path / "single" / "checkpoints" / "step-00000008.pt").unlink()
    ck4 = torch.load(tmp_path / "single" / "checkpoints" / "step-00000004.pt", weights_only=True)

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(ds), str(tmp_path)), nprocs=2, join=True)
    ddp = torch.load(tmp_path / "grads.pt", weights_only=True)
    assert single.keys() == ddp.keys() and len(single) > 10
    for k in single:
        torch.testing.assert_close(ddp[k], single[k], rtol=1e-5, atol=1e-7, msg=f"gradient of {k}")
    assert max(float(g.abs().max()) for g in single.values()) > 1e-4, "non-trivial gradients"

    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert not (tmp_path / "not-on-this-machine").exists(), "rank 1 never touches a run folder"
    assert r0["ddp"] and r1["ddp"]
    assert r0["step"] == r1["step"] == 4 and r0["steps"] == r1["steps"] == 8
    assert r1["config"] == r0["config"] == ck4["config"], "rank 1 runs with rank 0's config"
    for r in (r0, r1):
        for k, v in ck4["model"].items():
            torch.testing.assert_close(r["model"][k], v, rtol=0, atol=0, msg=f"resumed weight {k}")
        saved = [st["exp_avg"] for st in ck4["optimizer"]["state"].values()]
        assert len(r["exp_avg"]) == len(saved) and all(torch.equal(a, b) for a, b in zip(r["exp_avg"], saved))
    for k, v in r0["final"].items():
        torch.testing.assert_close(r1["final"][k], v, rtol=0, atol=0, msg=f"ranks disagree on {k}")
    final = load_file(str(tmp_path / "single" / "motion_model.safetensors"))
    assert final.keys() == full.keys()
    for k in full:
        torch.testing.assert_close(final[k], full[k], rtol=1e-4, atol=1e-5, msg=f"weight {k} after the 2-rank resume")


def test_batch_must_divide_by_world_size(tmp_path):
    ds = make_dataset(tmp_path / "ds", n_clips=3)
    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config("data.batch_size=3", "schedule.steps=2"), cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "training", "train", str(ds), "-o", str(tmp_path / "run"), "--config", str(cfg)]
    out = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert out.returncode != 0
    assert "not divisible by the 2 processes" in out.stderr





# -- issue 16.7: a failing rank stops every rank; every rank reads the same dataset ------------------------------


def _failing_worker(rank: int, world: int, init_file: str, datasets: list[str], run: str, where: str,
                    result: str) -> None:
    import json

    import torch.distributed as dist

    from training.motion import trainer as tr

    torch.set_num_threads(1)
    # a long process-group timeout: ending in bounded time must not rely on it
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=900))
    out = {"rank": rank}
    try:
        if where == "step" and rank == 1:
            original = tr.Trainer.compute_loss

            def broken(self, step):
                if step == 2:
                    raise RuntimeError("boom on rank 1")
                return original(self, step)

            tr.Trainer.compute_loss = broken
        if where == "checkpoint" and rank == 0:
            def disk_full(self):
                raise OSError(28, "No space left on device")

            tr.Trainer.save_checkpoint = disk_full
        cfg = tiny_config("schedule.steps=6", "run.checkpoint_every=3", "run.val_every=0", "run.tensorboard=false")
        t = tr.Trainer(datasets[rank], f"{run}-{rank}" if rank else run, cfg, progress=False)
        try:
            t.run()
        finally:
            t.close()
        out["result"] = "finished"
    except BaseException as e:  # noqa: BLE001 - the test reads what each rank ended with
        out["error"] = f"{type(e).__name__}: {e}"
    with open(result, "w") as f:
        json.dump(out, f)
    with contextlib.suppress(Exception):
        dist.destroy_process_group()


@pytest.mark.parametrize("where", ["setup", "step", "checkpoint", "dataset"])
def test_a_failing_rank_ends_every_rank_with_a_clear_error(tmp_path, where):
    """One rank fails (its dataset is missing, an exception in a training step, rank 0's checkpoint write fails, or
    the ranks read different datasets): every rank ends, in bounded time, with an error that says what happened."""
    import json
    import multiprocessing
    import time

    ds = str(make_dataset(tmp_path / "ds"))
    datasets = [ds, ds]
    if where == "setup":
        datasets[1] = str(tmp_path / "missing")
    if where == "dataset":
        datasets[1] = str(make_dataset(tmp_path / "other", seed=1))
    ctx = multiprocessing.get_context("spawn")
    results = [tmp_path / f"rank{r}.json" for r in range(2)]
    procs = [ctx.Process(target=_failing_worker, args=(r, 2, str(tmp_path / "init"), datasets, str(tmp_path / "run"),
                                                        where, str(results[r]))) for r in range(2)]
    t0 = time.time()
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=max(1.0, 180 - (time.time() - t0)))
    hung = [r for r, p in enumerate(procs) if p.is_alive()]
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert not hung, f"rank(s) {hung} still running after {time.time() - t0:.0f} s: a failing rank hangs the others"
    out = [json.loads(r.read_text()) for r in results]
    errors = [o.get("error", "") for o in out]
    assert all(errors), out
    if where == "setup":
        assert "dataset folder" in errors[1] and "does not exist" in errors[1]
        assert "process 1 failed" in errors[0] and "does not exist" in errors[0]
    elif where == "step":
        assert "boom on rank 1" in errors[1]
        assert "process 1 failed" in errors[0] and "step 3" in errors[0] and "boom on rank 1" in errors[0]
    elif where == "checkpoint":
        assert "No space left" in errors[0]
        assert "process 0 failed" in errors[1] and "No space left" in errors[1]
    else:
        for e in errors:
            assert "InputError" in e and "dataset differs between the processes" in e, e
