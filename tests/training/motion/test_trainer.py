"""Trainer: config files, schedule, data order, checkpoints, resume after a real kill, logs, bad input."""

from __future__ import annotations

import csv
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from audio2lp.models.motion import LIP_DIMS, MOTION_DIM
from audio2lp.models.motion_model import load_motion_model, read_motion_model_metadata
from lp_renderer.errors import InputError
from training.motion.config import MotionTrainConfig, apply_overrides, load_config, save_config
from training.motion.dataset import ClipData, Dataset, parse_whisper_layers, write_dataset
from training.motion.trainer import (
    Trainer,
    batch_plan,
    latest_checkpoint,
    lr_factor,
    split_train_val,
    ss_probability,
    train,
)

REPO = Path(__file__).resolve().parents[3]
AUDIO_DIM = 16
SETTINGS = {"whisper_model": "tiny.en", "whisper_layers": "middle", "audio_dim": AUDIO_DIM}


def make_dataset(root: Path, n_clips: int = 6, seed: int = 0, speakers: bool = True) -> Path:
    """A tiny learnable data set: lip dims and yaw follow the first audio channels."""
    rng = np.random.default_rng(seed)
    items = []
    for k in range(n_clips):
        T = int(rng.integers(40, 90))
        audio = rng.normal(size=(2 * T, AUDIO_DIM)).astype(np.float32)
        drive = audio[0::2, 0] + audio[1::2, 0]
        motion = np.zeros((T, MOTION_DIM), np.float32)
        motion[:, list(LIP_DIMS)] = drive[:, None] * np.linspace(0.005, 0.02, len(LIP_DIMS))
        motion[:, 64] = 3 * audio[0::2, 1]
        motion += 0.001 * rng.normal(size=motion.shape).astype(np.float32)
        items.append((f"clip{k}", ClipData(motion, audio, lip_ratio=0.2 + 0.05 * drive), f"spk{k % 3}" if speakers
                      else None))
    write_dataset(root, items, SETTINGS)
    return root


TINY = ["model.d_model=16", "model.n_heads=2", "model.n_layers=1", "model.ff_mult=2", "data.window=20",
        "data.context=10", "data.overlap=5", "data.batch_size=4", "data.val_window=30", "data.val_max_windows=4",
        "schedule.warmup_steps=5", "optim.lr=3e-3", "sampling.start_step=5", "sampling.ramp_steps=20",
        "run.progress=false", "run.num_threads=1"]


def tiny_config(*extra: str) -> MotionTrainConfig:
    return apply_overrides(MotionTrainConfig(), TINY + list(extra))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ds") / "ds")


def _env():
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


# -- config -------------------------------------------------------------------------------------------------


def test_config_yaml_toml_roundtrip_and_example(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("model:\n  d_model: 64\noptim:\n  lr: 3e-4\n  betas: [0.8, 0.99]\nschedule: {steps: 10}\n")
    c = load_config(y)
    assert c.model.d_model == 64 and c.optim.lr == pytest.approx(3e-4) and c.optim.betas == [0.8, 0.99]
    t = tmp_path / "c.toml"
    t.write_text("[data]\nwindow = 40\nval_speakers = ['a']\n[loss]\nlip_weight = 2\n")
    c2 = load_config(t)
    assert c2.data.window == 40 and c2.data.val_speakers == ["a"] and c2.loss.lip_weight == 2.0
    save_config(c, tmp_path / "saved.yaml")
    assert load_config(tmp_path / "saved.yaml") == c
    example = load_config(REPO / "examples" / "train_config.yaml")
    assert isinstance(example, MotionTrainConfig)
    assert example.to_dict() == MotionTrainConfig().to_dict(), "the example documents the defaults"


@pytest.mark.parametrize("text, needle", [
    ("model:\n  d_modle: 64\n", "unknown config key 'model.d_modle'"),
    ("bogus: 1\n", "unknown config key 'bogus'"),
    ("model:\n  d_model: big\n", "'model.d_model' = 'big' should be of type int"),
    ("run:\n  progress: 3\n", "'run.progress' = 3 should be of type bool"),
    ("data: 5\n", "section 'data' must be a mapping"),
    ("model:\n  n_heads: 3\n", "model.d_model"),
    ("schedule:\n  kind: exp\n", "schedule.kind"),
    ("model: [1, 2\n", "cannot be parsed"),
])
def test_bad_config_is_a_clear_input_error(tmp_path, text, needle):
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(InputError) as e:
        load_config(p)
    assert needle in str(e.value)
    assert "\n" not in str(e.value)


def test_overrides_and_missing_config():
    c = apply_overrides(MotionTrainConfig(), ["optim.lr=1e-3", "data.val_speakers=[a, b]", "run.device=cpu"])
    assert c.optim.lr == 1e-3 and c.data.val_speakers == ["a", "b"]
    for bad in (["optim.lrr=1"], ["nope.x=1"], ["optim.lr"], ["data.window=abc"]):
        with pytest.raises(InputError):
            apply_overrides(MotionTrainConfig(), bad)
    with pytest.raises(InputError, match="does not exist"):
        load_config("/nonexistent/config.yaml")


def test_whisper_layers_text():
    assert parse_whisper_layers("middle") == "middle"
    assert parse_whisper_layers("2") == 2
    assert parse_whisper_layers("2,3") == [2, 3]
    assert parse_whisper_layers("-1") == -1
    with pytest.raises(InputError):
        parse_whisper_layers("deep")


# -- pure functions -----------------------------------------------------------------------------------------


def test_schedule_and_sampling_ramp():
    c = tiny_config("schedule.steps=100", "schedule.warmup_steps=10", "schedule.min_lr_ratio=0.1",
                    "sampling.start_step=20", "sampling.ramp_steps=40", "sampling.max_prob=0.6")
    f = [lr_factor(s, c) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b - 1e-12 for a, b in zip(f[10:], f[11:])), "cosine decays monotonically"
    assert f[99] == pytest.approx(0.1, abs=0.01)
    assert ss_probability(19, c) == 0 and ss_probability(40, c) == pytest.approx(0.3)
    assert ss_probability(60, c) == pytest.approx(0.6) and ss_probability(1000, c) == pytest.approx(0.6)


def test_batch_plan_is_a_pure_function_of_seed_and_step():
    frames = [50, 80, 30, 200]
    a = batch_plan(7, 0, 20, frames, 8)
    assert a == batch_plan(7, 0, 20, frames, 8)
    assert a != batch_plan(8, 0, 20, frames, 8) and a != batch_plan(7, 1, 20, frames, 8)
    for c, s in a:
        assert 0 <= s <= max(0, frames[c] - 20)


def test_split_by_speaker(dataset):
    ds = Dataset(dataset)
    train_idx, val_idx, styles = split_train_val(ds, tiny_config("data.val_fraction=0.34"))
    val_spk = {ds.speaker(i) for i in val_idx}
    assert len(val_spk) == 1 and not val_spk & {ds.speaker(i) for i in train_idx}
    assert sorted(styles) == sorted({ds.speaker(i) for i in train_idx}) and sorted(styles.values()) == [0, 1]
    t2, v2, _ = split_train_val(ds, tiny_config("data.val_speakers=[spk1]"))
    assert {ds.speaker(i) for i in v2} == {"spk1"}
    with pytest.raises(InputError, match="not in the dataset"):
        split_train_val(ds, tiny_config("data.val_speakers=[nobody]"))


# -- a whole run ---------------------------------------------------------------------------------------------


def test_train_writes_logs_checkpoints_and_a_speak_ready_model(dataset, tmp_path):
    run = tmp_path / "run"
    cfg = tiny_config("schedule.steps=40", "run.checkpoint_every=15", "run.log_every=10", "run.val_every=20",
                      "run.keep_checkpoints=2")
    res = train(dataset, run, cfg, progress=False)
    assert res.steps == 40 and res.model_path == run / "motion_model.safetensors"
    ckpts = sorted(p.name for p in (run / "checkpoints").glob("step-*.pt"))
    assert ckpts == ["step-00000030.pt", "step-00000040.pt"], ckpts
    with open(run / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    for r in rows:
        assert float(r["loss"]) > 0
    for r in (rows[1], rows[3]):
        for k in ("val_loss", "val_motion_l2", "val_lip_l2", "val_velocity_err", "val_lip_corr"):
            assert np.isfinite(float(r[k])), k
    assert (run / "curves.png").stat().st_size > 1000
    assert list((run / "tensorboard").glob("events.out.tfevents.*"))
    assert load_config(run / "config.yaml") == cfg
    model, stats = load_motion_model(res.model_path)
    meta = read_motion_model_metadata(res.model_path)
    c = meta["config"]
    assert (c.whisper_model, c.whisper_layers, c.audio_dim, c.d_model) == ("tiny.en", "middle", AUDIO_DIM, 16)
    assert c.n_styles == len(meta["extra"]["speakers"]) >= 1
    assert meta["extra"]["fps"] == 25 and len(meta["extra"]["lip_direction"]) == MOTION_DIM
    assert stats == Dataset(dataset).stats
    out = model.generate(np.zeros((20, AUDIO_DIM), np.float32), 0, stats=stats)
    assert out.shape == (10, MOTION_DIM) and np.isfinite(out).all()
    ck = torch.load(run / "checkpoints" / "step-00000040.pt", weights_only=True)
    assert {"model", "optimizer", "scheduler", "step", "rng", "config", "stats", "speakers"} <= set(ck)


def test_existing_run_needs_resume_and_same_config(dataset, tmp_path, caplog):
    run = tmp_path / "run"
    base = ["run.checkpoint_every=2", "run.tensorboard=false"]
    train(dataset, run, tiny_config("schedule.steps=4", *base), progress=False)
    with pytest.raises(InputError, match="--resume"):
        Trainer(dataset, run, tiny_config("schedule.steps=4", *base))
    with pytest.raises(InputError, match=r"config differs .*optim\.lr: 0\.003 -> 0\.01"):
        Trainer(dataset, run, tiny_config("schedule.steps=4", "optim.lr=0.01", *base), resume=True)
    with pytest.raises(InputError, match="schedule.steps can only be raised"):
        Trainer(dataset, run, tiny_config("schedule.steps=3", *base), resume=True)
    Trainer(dataset, run, tiny_config("schedule.steps=4", "run.keep_checkpoints=5", *base), resume=True).close()
    # raising schedule.steps continues, with a warning; the lr follows the new schedule from the resumed step on
    longer = tiny_config("schedule.steps=8", *base)
    with caplog.at_level("WARNING", logger="training.motion.trainer"):
        t = Trainer(dataset, run, longer, resume=True, progress=False)
    assert t.step == 4
    assert "schedule.steps raised from 4 to 8" in caplog.text and "learning-rate schedule" in caplog.text
    assert t.optimizer.param_groups[0]["lr"] == pytest.approx(longer.optim.lr * lr_factor(4, longer))
    lrs = []
    while t.step < 8:
        lrs.append(t.train_step()["lr"])
    assert lrs == pytest.approx([longer.optim.lr * lr_factor(s, longer) for s in range(4, 8)])
    t.close()


def test_bad_datasets(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no manifest.json"):
        Trainer(empty, tmp_path / "r1", tiny_config())
    with pytest.raises(InputError, match="does not exist"):
        Trainer(tmp_path / "missing", tmp_path / "r2", tiny_config())
    (empty / "manifest.json").write_text("{not json")
    with pytest.raises(InputError, match="unreadable"):
        Trainer(empty, tmp_path / "r3", tiny_config())
    ds = make_dataset(tmp_path / "ds", n_clips=2)
    m = json.loads((ds / "manifest.json").read_text())
    m["clips"] = []
    (ds / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(InputError, match="no usable clips"):
        Trainer(ds, tmp_path / "r5", tiny_config())


def test_resume_after_real_kill_matches_uninterrupted_run(dataset, tmp_path):
    """SIGKILL a training process at a random moment after its first checkpoint, resume it, and compare the
    final weights with an uninterrupted run of the same config."""
    cfg_path = tmp_path / "cfg.yaml"
    save_config(tiny_config("schedule.steps=300", "run.checkpoint_every=20", "run.log_every=10",
                            "run.val_every=100", "model.dropout=0.1"), cfg_path)
    cmd = [sys.executable, "-m", "training", "train", str(dataset), "--config", str(cfg_path), "-q"]
    full = subprocess.run(cmd + ["-o", str(tmp_path / "full")], env=_env(), capture_output=True, text=True,
                          timeout=300)
    assert full.returncode == 0, full.stderr

    run = tmp_path / "killed"
    rng = random.Random()
    for _attempt in range(3):
        proc = subprocess.Popen(cmd + ["-o", str(run)] + (["--resume"] if run.exists() else []), env=_env(),
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 120
        while latest_checkpoint(run) is None and proc.poll() is None and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.8))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        last = latest_checkpoint(run)
        if proc.returncode == -signal.SIGKILL and last is not None and last.name != "step-00000300.pt":
            break
    assert proc.returncode == -signal.SIGKILL, "the process finished before it could be killed"
    assert not (run / "motion_model.safetensors").exists()
    killed_at = int(last.stem.split("-")[1])
    assert 20 <= killed_at < 300
    res = subprocess.run(cmd + ["-o", str(run), "--resume"], env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr

    from safetensors.torch import load_file

    a = load_file(str(tmp_path / "full" / "motion_model.safetensors"))
    b = load_file(str(run / "motion_model.safetensors"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-6, atol=1e-7, msg=f"weight {k} differs after resume")
    with open(run / "metrics.csv", newline="") as f:
        steps = [int(r["step"]) for r in csv.DictReader(f)]
    assert steps == list(range(10, 301, 10)), "the CSV has each step once, in order"
    with open(tmp_path / "full" / "metrics.csv", newline="") as f:
        full_rows = list(csv.DictReader(f))
    with open(run / "metrics.csv", newline="") as f:
        killed_rows = list(csv.DictReader(f))
    for ra, rb in zip(full_rows, killed_rows):
        assert float(ra["loss"]) == pytest.approx(float(rb["loss"]), rel=1e-5)


def _tb_scalars(folder: Path, tag: str) -> list[tuple[int, float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_cli_resume_uses_the_run_config_and_purges_later_tensorboard_events(dataset, tmp_path, capsys, caplog):
    """`train` then `train --resume` with no config options continues the run; --steps raises its length.
    TensorBoard events written after the resumed checkpoint are hidden."""
    from training.cli import main as training_main

    cfg = tmp_path / "cfg.yaml"
    save_config(tiny_config("schedule.steps=6", "run.checkpoint_every=3", "run.log_every=3", "run.val_every=0"), cfg)
    run = tmp_path / "run"
    assert training_main(["train", str(dataset), "-o", str(run), "--config", str(cfg), "-q"]) == 0
    first = {s: v for s, v in _tb_scalars(run / "tensorboard", "train/loss")}
    assert sorted(first) == [3, 6]
    # as if killed after step 6 was logged but before its checkpoint was written
    (run / "checkpoints" / "step-00000006.pt").unlink()
    (run / "motion_model.safetensors").unlink()
    capsys.readouterr()
    assert training_main(["train", str(dataset), "-o", str(run), "--resume", "-q"]) == 0
    assert "wrote" in capsys.readouterr().out and (run / "motion_model.safetensors").is_file()
    assert latest_checkpoint(run).name == "step-00000006.pt"
    with caplog.at_level("WARNING", logger="training.motion.trainer"):
        assert training_main(["train", str(dataset), "-o", str(run), "--resume", "--steps", "9", "-q"]) == 0
    assert "after 9 steps" in capsys.readouterr().out
    assert "schedule.steps raised from 6 to 9" in caplog.text
    assert load_config(run / "config.yaml") == apply_overrides(load_config(cfg), ["schedule.steps=9"])
    with open(run / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f)] == [3, 6, 9]
    events = _tb_scalars(run / "tensorboard", "train/loss")
    assert [s for s, _ in events] == [3, 6, 9], "each step once: the events after a resumed checkpoint are purged"
    assert dict(events)[6] == pytest.approx(first[6], rel=1e-5), "the resumed run repeats step 6 exactly"
    # a config change other than schedule.steps is refused, as a one-line error
    assert training_main(["train", str(dataset), "-o", str(run), "--resume", "--set", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the config differs") and "optim.lr" in err


def test_interrupt_and_rank_handling(dataset, tmp_path, monkeypatch, capsys):
    import training.cli

    seen = []

    def interrupted(args):
        seen.append(args.quiet)
        raise KeyboardInterrupt

    monkeypatch.setattr(training.cli, "run_train", interrupted)
    monkeypatch.setattr(training.cli, "run_prepare", interrupted)
    monkeypatch.setenv("RANK", "1")
    for cmd in (["train", str(dataset), "-o", str(tmp_path / "r")], ["prepare", str(dataset), "-o", "x"]):
        assert training.cli.main(cmd) == 130
        err = capsys.readouterr().err
        assert "checkpoints are kept" in err and "no partial output" not in err
    assert seen == [True] * 2, "ranks other than 0 run quietly"


def test_audio2lp_does_not_train(capsys):
    """Training is audio2lp-train's: the product's command has no prepare / train."""
    from audio2lp.apps.cli import main as audio2lp_main

    for cmd in ("prepare", "train"):
        with pytest.raises(SystemExit) as e:
            audio2lp_main([cmd, "x"])
        assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err


def test_cli_help_texts():
    out = subprocess.run([sys.executable, "-m", "training", "train", "--help"], env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--config", "--resume", "--set", "--steps", "torchrun"):
        assert flag in out.stdout
    out = subprocess.run([sys.executable, "-m", "training", "prepare", "--help"], env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0
    for flag in ("--weights", "--face-backend", "--whisper", "--whisper-layers", "--workers", "--speakers",
                 "--min-seconds", "--speaker-from-folder"):
        assert flag in out.stdout


def test_cli_reports_bad_config_as_error_line(dataset, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optim:\n  learning_rate: 0.1\n")
    out = subprocess.run([sys.executable, "-m", "training", "train", str(dataset), "-o", str(tmp_path / "r"),
                          "--config", str(bad)], env=_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert out.stderr.startswith("error: ") and "optim.learning_rate" in out.stderr
    assert "Traceback" not in out.stderr


# -- issue 16: masks, the sequences speak generates, validation = speak's path ------------------------------


def test_frames_without_a_face_are_out_of_the_loss(tmp_path):
    """The loss mask of a window is 0 on the frames where the face was lost and their two neighbours each side,
    so what M says about those crops never trains the model."""
    rng = np.random.default_rng(5)
    items = []
    for k in range(3):
        T = 60
        audio = rng.normal(size=(2 * T, AUDIO_DIM)).astype(np.float32)
        motion = 0.01 * rng.normal(size=(T, MOTION_DIM)).astype(np.float32)
        face = np.ones(T, np.uint8)
        if k == 0:
            face[30:35] = 0
            motion[30:35] = 100.0  # garbage: a crop without a face
        items.append((f"c{k}", ClipData(motion, audio, face=face), f"s{k}"))
    ds = write_dataset(tmp_path / "ds", items, SETTINGS).parent
    t = Trainer(ds, tmp_path / "run", tiny_config("data.val_fraction=0", "run.tensorboard=false"), progress=False)
    i = [c["id"] for c in t.ds.clips].index("c0")
    audio, motion, mask, _ = t._tensors([(i, 20)], 30)
    assert mask[0, :8].eq(1).all() and mask[0, 8:17].eq(0).all() and mask[0, 17:].eq(1).all()
    assert motion.abs().max() < 50, "the decoder inputs hold no garbage either"
    t.close()


def test_training_sequences_and_validation_follow_speak(dataset, tmp_path, monkeypatch):
    """Training windows are as long as the sequences `speak` decodes (context + window frames), and validation
    rolls the model out with exactly the call `speak` makes: MotionModel.generate with the same window, overlap,
    context and noise, stored in the model file."""
    from audio2lp import speech
    from audio2lp.models.motion_model import MotionModel

    cfg = tiny_config("data.window=20", "data.context=10", "data.overlap=5", "data.val_window=45",
                      "data.val_fraction=0.34", "schedule.steps=2", "run.tensorboard=false")
    calls = []
    original = MotionModel.generate

    def spy(self, audio, *args, **kw):
        calls.append(dict(kw))
        return original(self, audio, *args, **kw)

    monkeypatch.setattr(MotionModel, "generate", spy)
    t = Trainer(dataset, tmp_path / "run", cfg, progress=False)
    assert t.seq_len == 30 and t._tensors(t.rank_batch(0), t.seq_len)[1].shape[1] == 30
    assert all(n == 45 or n < 45 for _, _, n in t._val_windows)
    calls.clear()
    t.validate()
    assert calls, "validation rolls the model out"
    val_kw = calls[-1]
    res = t.run()
    t.close()
    meta = read_motion_model_metadata(res.model_path)["config"]
    assert (meta.window, meta.overlap, meta.context) == (20, 5, 10)

    class FakeWhisper:
        def encode(self, wav, layers, progress):
            return np.random.default_rng(0).normal(size=(len(wav) // 320, AUDIO_DIM)).astype(np.float32)

    monkeypatch.setattr(speech, "whisper_encoder", lambda *a: FakeWhisper())
    calls.clear()
    speech.speech_plan(np.zeros(16000 * 3, np.float32), 75, 25.0, device="cpu", motion_model=res.model_path, seed=0,
                       style=0, blink=False, blink_rate=None, pose_scale=1.0, template=None, whisper_checkpoint=None,
                       progress=False)
    speak_kw = calls[-1]
    keys = ("window", "overlap", "context", "noise")
    assert {k: val_kw[k] for k in keys} == {k: speak_kw[k] for k in keys} == \
        {"window": 20, "overlap": 5, "context": 10, "noise": 0.0}
