"""`audio2lp-train prepare`: shards, manifest, resampling to 25 fps, resumability, speakers, bad input.

Tiny random renderer weights make the motion values meaningless, but every step of the pipeline runs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from audio2lp.models.motion import MOTION_DIM
from audio2lp.models.motion_model import load_motion_model, read_motion_model_metadata
from lp_renderer.errors import InputError, WeightsError
from training.common import pearson
from training.motion.dataset import Dataset, read_shard
from training.motion.prepare import PrepareOptions, _speaker_for, find_videos, prepare_dataset, read_speakers_csv

REPO = Path(__file__).resolve().parents[3]
CLIP = "talking/LipNet__bbaf2n.mpg"  # 3 s, 25 fps, 360x288, one face, speech


def _opts(weights: Path, **kw) -> PrepareOptions:
    base = {"weights_dir": str(weights), "face_backend": "dlib", "workers": 0, "progress": False,
            "min_seconds": 1.0}
    base.update(kw)
    return PrepareOptions(**base)


def _env() -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("WORLD_SIZE", None)
    return env


def _ffmpeg(*args: str) -> None:
    from audio2lp.media.ffmpeg import ffmpeg_exe

    subprocess.run([ffmpeg_exe(), "-hide_banner", "-nostdin", "-y", "-v", "error", *args], check=True, timeout=120)


def _noise_video(path: Path, seconds: float = 2.0, audio: bool = True) -> Path:
    from audio2lp.media.writer import VideoWriter

    rng = np.random.default_rng(0)
    t = np.arange(int(16000 * seconds)) / 16000
    speech = (0.3 * np.sin(2 * np.pi * 220 * t) * (1 + np.sin(2 * np.pi * 3 * t))).astype(np.float32) / 2
    with VideoWriter(path, 25, audio=speech if audio else None, audio_sample_rate=16000, preset="ultrafast") as w:
        for _ in range(int(25 * seconds)):
            w.write(rng.integers(0, 255, (96, 128, 3), dtype=np.uint8))
    return path


# -- bad input (no shared data needed) ----------------------------------------------------------------


def test_bad_videos_are_skipped_with_reasons(tiny_weights, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _noise_video(src / "noface.mp4")
    _noise_video(src / "silent.mp4", audio=False)
    _noise_video(src / "short.mp4", seconds=0.4)
    (src / "corrupt.mp4").write_bytes(b"this is not a video" * 100)
    (src / "notes.txt").write_text("ignored: not a video suffix")
    rep = prepare_dataset([src], tmp_path / "ds", _opts(tiny_weights))
    reasons = {Path(s).name: r for s, r in rep.skipped}
    assert set(reasons) == {"noface.mp4", "silent.mp4", "short.mp4", "corrupt.mp4"}, reasons
    assert "no face" in reasons["noface.mp4"]
    assert "no audio" in reasons["silent.mp4"]
    assert "too short" in reasons["short.mp4"]
    assert "unreadable video" in reasons["corrupt.mp4"]
    assert rep.n_clips == 0 and not rep.prepared
    m = json.loads((tmp_path / "ds" / "manifest.json").read_text())
    assert m["n_clips"] == 0 and len(m["skipped"]) == 4
    # a re-run does not redo inputs that were skipped and did not change
    t0 = time.time()
    rep2 = prepare_dataset([src], tmp_path / "ds", _opts(tiny_weights))
    assert len(rep2.skipped) == 4 and all("earlier run" in r for _, r in rep2.skipped)
    assert time.time() - t0 < 30
    with pytest.raises(InputError, match="no usable clips"):
        Dataset(tmp_path / "ds")


def test_cli_all_inputs_bad_exits_2_with_reasons(tiny_weights, tmp_path):
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 1000)
    out = subprocess.run([sys.executable, "-m", "training", "prepare", str(bad), "-o", str(tmp_path / "ds"),
                          "--weights", str(tiny_weights), "--face-backend", "dlib", "--workers", "0", "-q"],
                         env=_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 2, out.stderr
    assert "skipped" in out.stdout and "corrupt.mp4" in out.stdout
    last = out.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "no usable clip" in last
    assert "Traceback" not in out.stderr


def test_input_errors(tiny_weights, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(InputError, match="no video files"):
        prepare_dataset([empty], tmp_path / "ds", _opts(tiny_weights))
    with pytest.raises(InputError, match="does not exist"):
        prepare_dataset([tmp_path / "missing.mp4"], tmp_path / "ds", _opts(tiny_weights))
    v = _noise_video(tmp_path / "v.mp4", seconds=0.5)
    with pytest.raises(WeightsError) as e:  # names the folder and says how to get the weights
        prepare_dataset([v], tmp_path / "ds", _opts(tmp_path / "no-weights"))
    assert f"weights folder {tmp_path / 'no-weights'} does not exist" in str(e.value)
    assert "audio2lp weights download" in str(e.value) and "\n" not in str(e.value)
    (tmp_path / "empty-weights").mkdir()
    with pytest.raises(WeightsError, match=r"missing in .*empty-weights: liveportrait/base_models/motion_extractor"):
        prepare_dataset([v], tmp_path / "ds", _opts(tmp_path / "empty-weights"))
    with pytest.raises(InputError, match="Whisper layers"):
        prepare_dataset([v], tmp_path / "ds", _opts(tiny_weights, whisper_layers="deepest"))
    with pytest.raises(InputError, match="does not fit"):
        prepare_dataset([v], tmp_path / "ds", _opts(tiny_weights, whisper_layers="9"))
    with pytest.raises(InputError, match="does not exist"):
        prepare_dataset([v], tmp_path / "ds", _opts(tiny_weights, speakers_csv=str(tmp_path / "none.csv")))
    bad_csv = tmp_path / "bad.csv"
    bad_csv.write_text("name,who\na,b\n")
    with pytest.raises(InputError, match="'speaker'"):
        read_speakers_csv(bad_csv)


def test_speaker_table_and_video_search(tmp_path):
    (tmp_path / "spk_a").mkdir()
    (tmp_path / "spk_a" / "x.mp4").write_bytes(b"1")
    (tmp_path / "spk_a" / "y.MOV").write_bytes(b"1")
    (tmp_path / "spk_a" / "z.wav").write_bytes(b"1")
    found = find_videos([tmp_path, tmp_path / "spk_a" / "x.mp4"])
    assert [p.name for p in found] == ["x.mp4", "y.MOV"]
    csv_path = tmp_path / "speakers.csv"
    csv_path.write_text("path,speaker\nspk_a/x.mp4,alice\ny.MOV,bob\n")
    table = read_speakers_csv(csv_path)
    assert table[str((tmp_path / "spk_a" / "x.mp4").resolve())] == "alice" and table["y.MOV"] == "bob"


def test_speaker_table_bare_names_only_when_unambiguous(tmp_path, caplog):
    csv_path = tmp_path / "speakers.csv"
    csv_path.write_text("path,speaker\nid1/00001.mp4,alice\nid2/00001.mp4,bob\nid1/00002.mp4,alice\n"
                        "id3/00003.mp4,carol\nid4/00003.mp4,carol\n")
    with caplog.at_level("WARNING", logger="training.motion.prepare"):
        table = read_speakers_csv(csv_path)
    assert "00001.mp4" not in table, "a file name with two speakers is not matched by name"
    assert "1 file name(s)" in caplog.text and "00001.mp4" in caplog.text
    assert table[str((tmp_path / "id1" / "00001.mp4").resolve())] == "alice"
    assert table[str((tmp_path / "id2" / "00001.mp4").resolve())] == "bob"
    assert table["00002.mp4"] == "alice" and table["00003.mp4"] == "carol"
    other = tmp_path / "elsewhere"
    assert _speaker_for(other / "00002.mp4", table, 0) == "alice"
    assert _speaker_for(other / "00001.mp4", table, 0) is None
    assert _speaker_for(tmp_path / "id2" / "00001.mp4", table, 0) == "bob"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def test_a_damaged_shard_is_left_out_with_a_warning(tiny_weights, tmp_path, caplog):
    from training.motion.dataset import ClipData, build_manifest, settings_key, write_dataset, write_shard
    from training.motion.prepare import _input_fingerprint, _is_done

    settings = {"whisper_model": "tiny.en", "whisper_layers": "middle", "audio_dim": 8}
    rng = np.random.default_rng(0)
    clips = [(f"c{k}", ClipData(rng.normal(size=(30, MOTION_DIM)), rng.normal(size=(60, 8))), None) for k in range(3)]
    root = write_dataset(tmp_path / "ds", clips, settings).parent
    _truncate(root / "shards" / "c1.safetensors")
    with caplog.at_level("WARNING", logger="training.motion.dataset"):
        m = build_manifest(root, settings)
    assert [c["id"] for c in m["clips"]] == ["c0", "c2"] and m["n_frames"] == 60
    assert [d["shard"] for d in m["damaged"]] == ["shards/c1.safetensors"]
    assert "c1.safetensors is unreadable" in caplog.text and "left out" in caplog.text
    # a re-run of prepare redoes it: a damaged shard does not count as done
    video = tmp_path / "v.mp4"
    video.write_bytes(b"1")
    fp, shard = _input_fingerprint(video), root / "shards" / "c0.safetensors"
    clip, meta = read_shard(shard)
    write_shard(shard, clip, {**meta, "input": fp}, settings)
    assert _is_done(shard, tmp_path / "none.json", fp, settings_key(settings), False) == "ok"
    _truncate(shard)
    assert _is_done(shard, tmp_path / "none.json", fp, settings_key(settings), False) is None

    # prepare does not abort because of it: the other inputs are handled and the shard is reported
    out = tmp_path / "prep"
    (out / "shards").mkdir(parents=True)
    (out / "shards" / "old-clip.safetensors").write_bytes((root / "shards" / "c1.safetensors").read_bytes())
    bad = tmp_path / "corrupt.mp4"
    bad.write_bytes(b"\x00" * 1000)
    rep = prepare_dataset([bad], out, _opts(tiny_weights))
    assert [s for s, _ in rep.damaged] == ["shards/old-clip.safetensors"] and len(rep.skipped) == 1
    assert json.loads((out / "manifest.json").read_text())["damaged"][0]["shard"] == "shards/old-clip.safetensors"


# -- real clips ---------------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_prepare_real_clips_resample_resume_and_speakers(data_dir, tiny_weights, tmp_path):
    src = tmp_path / "videos"
    src.mkdir()
    clip25 = src / "a25.mpg"
    clip25.symlink_to(data_dir / CLIP)
    clip30 = src / "b30.mp4"  # the same clip at 30 fps: its motion time line must be resampled to 25 fps
    _ffmpeg("-i", str(data_dir / CLIP), "-vf", "fps=30", "-c:v", "libx264", "-preset", "ultrafast", "-crf", "18",
            "-c:a", "aac", str(clip30))
    speakers = tmp_path / "speakers.csv"
    speakers.write_text("file,speaker\na25.mpg,grid_s1\nb30.mp4,grid_s1_30\n")
    out = tmp_path / "ds"
    t0 = time.time()
    rep = prepare_dataset([src], out, _opts(tiny_weights, speakers_csv=str(speakers)))
    elapsed = time.time() - t0
    assert rep.n_clips == 2 and not rep.skipped, rep.skipped
    print(f"\nprepare: {rep.video_seconds:.1f} s of video in {elapsed:.1f} s (tiny M, dlib, whisper tiny.en, "
          f"1 process)")
    ds = Dataset(out)
    assert ds.whisper_model == "tiny.en" and ds.whisper_layers == "middle" and ds.audio_dim == 384
    by_name = {Path(c["source"]).name: i for i, c in enumerate(ds.clips)}
    a, meta_a = read_shard(out / ds.clips[by_name["a25.mpg"]]["shard"])
    b, meta_b = read_shard(out / ds.clips[by_name["b30.mp4"]]["shard"])
    assert meta_a["speaker"] == "grid_s1" and meta_b["speaker"] == "grid_s1_30"
    assert sorted(ds.manifest["speakers"]) == ["grid_s1", "grid_s1_30"]
    for clip in (a, b):
        T = clip.n_frames
        assert 70 <= T <= 75  # 2.98 s at 25 fps
        assert clip.motion.shape == (T, MOTION_DIM) and clip.audio.shape == (2 * T, 384)
        assert clip.eye_ratio.shape == (T, 2) and clip.lip_ratio.shape == (T,) and clip.face.all()
        assert np.isfinite(clip.motion).all() and np.isfinite(clip.lip_ratio).all()
        assert 0 <= clip.lip_ratio.min() and clip.lip_ratio.max() < 1.5 and clip.lip_ratio.std() > 0.01
    assert meta_a["src_fps"] == pytest.approx(25) and meta_a["flags"]["resampled_from_fps"] is None
    assert meta_b["src_fps"] == pytest.approx(30) and meta_b["flags"]["resampled_from_fps"] == pytest.approx(30)
    n = min(a.n_frames, b.n_frames)
    assert abs(a.n_frames - b.n_frames) <= 1
    r = pearson(a.lip_ratio[:n], b.lip_ratio[:n])
    assert r > 0.8, f"the 30 fps copy, resampled to 25 fps, must line up with the 25 fps original (r = {r:.2f})"
    assert ds.stats.std.shape == (MOTION_DIM,)

    # resume: nothing to redo; a changed input is redone
    rep2 = prepare_dataset([src], out, _opts(tiny_weights, speakers_csv=str(speakers)))
    assert rep2.reused == 2 and not rep2.prepared and rep2.n_clips == 2
    st = clip30.stat()
    os.utime(clip30, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rep3 = prepare_dataset([src], out, _opts(tiny_weights, speakers_csv=str(speakers)))
    assert rep3.reused == 1 and [Path(p).name for p in rep3.prepared] == ["b30.mp4"]
    # new settings (other Whisper layers) redo everything and the manifest lists only matching shards
    rep4 = prepare_dataset([clip25], out, _opts(tiny_weights, whisper_layers="last"))
    assert rep4.n_clips == 1 and Dataset(out).whisper_layers == "last"


@pytest.mark.slow
@pytest.mark.realdata
def test_kill_during_prepare_leaves_no_half_shard(data_dir, tiny_weights, tmp_path):
    videos = [data_dir / "talking" / n for n in ("LipNet__bbaf2n.mpg", "LipNet__brbk7n.mpg", "LipNet__lbax4n.mpg")]
    out = tmp_path / "ds"
    cmd = [sys.executable, "-m", "training", "prepare", *map(str, videos), "-o", str(out), "--weights",
           str(tiny_weights), "--face-backend", "dlib", "--workers", "1", "--min-seconds", "1", "-q"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.time() + 180
    while not list((out / "shards").glob("*.safetensors")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its worker, mid-clip
    proc.wait()
    for shard in (out / "shards").glob("*.safetensors"):
        read_shard(shard)  # every shard under its final name is complete
    done_before = len(list((out / "shards").glob("*.safetensors")))
    assert 1 <= done_before < 3
    res = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert f"{done_before} already done" in res.stdout
    assert Dataset(out).manifest["n_clips"] == 3
    assert not [p for p in (out / "shards").iterdir() if p.name.startswith(".")], "temp files were cleaned up"


@pytest.mark.slow
@pytest.mark.realdata
def test_smoke_prepare_train_speak(data_dir, tiny_weights, tmp_path):
    """Real videos -> prepare (2 worker processes, CLI) -> a few training steps -> `audio2lp speak --motion-model`
    with the trained checkpoint (CLI)."""
    videos = [data_dir / "talking" / n for n in ("Talking-Face_PC-AVS__00010.mp4", "LipNet__bbaf2n.mpg",
                                                 "EAMM__M030_sad_3_001.mp4")]
    out = tmp_path / "ds"
    t0 = time.time()
    res = subprocess.run([sys.executable, "-m", "training", "prepare", *map(str, videos), "-o", str(out),
                          "--weights", str(tiny_weights), "--face-backend", "dlib", "--workers", "2",
                          "--speaker-from-folder", "1", "-q"], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    print(f"\nprepare (2 workers): {time.time() - t0:.1f} s; {res.stdout.strip()}")
    ds = Dataset(out)
    assert len(ds) == 3 and ds.manifest["speakers"] == ["talking"]
    run = tmp_path / "run"
    res = subprocess.run([sys.executable, "-m", "training", "train", str(out), "-o", str(run), "--steps", "20",
                          "--batch-size", "4", "--set", "data.window=40", "--set", "model.d_model=32",
                          "--set", "run.checkpoint_every=10", "--set", "run.log_every=5", "--set", "data.val_window=50",
                          "-q"], env=_env(), capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    model, stats = load_motion_model(run / "motion_model.safetensors")
    meta = read_motion_model_metadata(run / "motion_model.safetensors")
    assert meta["config"].whisper_model == "tiny.en" and meta["config"].whisper_layers == "middle"
    assert meta["extra"]["speakers"] == {"talking": 0}
    out_motion = model.generate(read_shard(out / ds.clips[0]["shard"])[0].audio, 0, stats=stats)
    assert out_motion.shape[1] == MOTION_DIM and np.isfinite(out_motion).all()
    from audio2lp.media.audio import load_audio, write_wav
    from audio2lp.media.probe import probe_video

    speech = write_wav(tmp_path / "speech.wav", load_audio(data_dir / "speech/MakeItTalk__M6_04_16k.wav")[:24000])
    video = tmp_path / "talk.mp4"
    res = subprocess.run([sys.executable, "-m", "audio2lp", "speak", str(data_dir / "portraits/EAMM__14.png"),
                          str(speech), "-o", str(video), "--motion-model", str(run / "motion_model.safetensors"),
                          "--weights", str(tiny_weights), "-q"], env=_env(), capture_output=True, text=True,
                         timeout=600)
    assert res.returncode == 0, res.stderr
    info = probe_video(video)
    assert info.has_audio and abs(info.n_frames - 1.5 * 25) <= 1


# -- issue 16: audio/video offsets, crops as drive makes them, the device ----------------------------------


@pytest.mark.realdata
def test_prepare_measures_and_undoes_an_audio_video_offset(data_dir, tiny_weights, tmp_path):
    """The same clip with its audio starting 3 frames late (so the video runs 3 frames behind the sound): prepare
    finds the 3 frames, stores them in the shard and the manifest, and pairs each motion frame with the audio of its
    own frame again."""
    src = tmp_path / "videos"
    src.mkdir()
    (src / "orig.mpg").symlink_to(data_dir / CLIP)
    _ffmpeg("-i", str(data_dir / CLIP), "-af", "atrim=start=0.12,asetpts=PTS-STARTPTS", "-c:v", "libx264", "-preset",
            "ultrafast", "-crf", "12", "-c:a", "aac", str(src / "late.mp4"))
    out = tmp_path / "ds"
    rep = prepare_dataset([src], out, _opts(tiny_weights))
    assert rep.n_clips == 2, rep.skipped
    ds = Dataset(out)
    by_name = {Path(c["source"]).name: c for c in ds.clips}
    orig, meta_o = read_shard(out / by_name["orig.mpg"]["shard"])
    late, meta_l = read_shard(out / by_name["late.mp4"]["shard"])
    # the lags measured before the 2-frame rule: 3 frames apart (the original itself may be off by a frame or so)
    lag_o, lag_l = meta_o["flags"]["av_lag"], meta_l["flags"]["av_lag"]
    assert lag_l == lag_o + 3 and abs(lag_o) <= 1, (lag_o, lag_l)
    assert meta_l["av_offset"] == lag_l and meta_o["av_offset"] == 0  # applied: 3-4 frames; under 2: not corrected
    assert by_name["late.mp4"]["av_offset"] == meta_l["av_offset"]
    assert ds.manifest["settings"]["av_offset"]["method"] == "lipsync-model"
    # the late shard's frame i: the original's video frame i + k (k frames of video dropped) ...
    k = meta_l["av_offset"]
    n = min(late.n_frames, orig.n_frames - k)
    r = pearson(late.lip_ratio[:n], orig.lip_ratio[k:k + n])
    assert r > 0.95, r
    # ... with the original's audio of frame i + 3 (the trimmed 0.12 s): so video and audio are paired as in the
    # original again, up to its own sub-threshold lag (k - 3 == lag_o)
    m = 2 * (late.n_frames - 8)

    def similarity(shift):
        a, b = late.audio[:m].astype(np.float32), orig.audio[2 * shift:2 * shift + m].astype(np.float32)
        return float(((a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)).mean())

    assert max(range(7), key=similarity) == 3


@pytest.mark.realdata
def test_prepare_crops_as_drive_does(data_dir, tiny_weights, monkeypatch):
    """M sees the same 256x256 crops in `prepare` as in `drive` (bilinear resize of the 512 crop)."""
    from audio2lp.driving import iter_driving_frames, open_driving
    from lp_renderer.faces import get_face_backend
    from training.motion import prepare as prep

    opts = _opts(tiny_weights)
    tools = prep._build_tools(opts)
    seen = []
    original = tools.motion.__call__

    class Recording:
        fingerprint = tools.motion.fingerprint

        def __call__(self, crops):
            seen.append(np.array(crops))
            return original(crops)

    tools = prep._Tools(tools.backend, Recording(), tools.whisper, tools.layers, tools.lipsync, tools.lipsync_whisper)
    prep.process_video(data_dir / CLIP, tools, opts)
    crops = np.concatenate(seen)
    # the whole clip: each crop box is smoothed over the frames around it, so a cut clip would crop its end otherwise
    drive = np.stack([f.crop_rgb for f in iter_driving_frames(open_driving(data_dir / CLIP),
                                                               get_face_backend("dlib"))])
    assert crops.shape == drive.shape and crops.shape[1:] == (256, 256, 3)
    np.testing.assert_array_equal(crops, drive)


def test_prepare_device(tiny_weights, tmp_path):
    import torch

    v = _noise_video(tmp_path / "v.mp4", seconds=0.5)
    with pytest.raises(InputError, match="device must be auto, cpu or cuda"):
        prepare_dataset([v], tmp_path / "ds", _opts(tiny_weights, device="gpu"))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="--device cuda.*no CUDA"):
            prepare_dataset([v], tmp_path / "ds", _opts(tiny_weights, device="cuda"))
    from training.motion.prepare import resolve_device

    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    out = subprocess.run([sys.executable, "-m", "training", "prepare", "--help"], env=_env(), capture_output=True,
                         text=True, timeout=60)
    assert "--device" in out.stdout
