"""`audio2lp doctor`: the report, the exit code, and the weights check against real folders."""

from __future__ import annotations

import json

import pytest

from audio2lp.apps import doctor
from lp_renderer import RendererConfig, RendererNetworks
from lp_renderer.weights import save_networks


def _run(argv, capsys) -> tuple[int, str]:
    """Through `audio2lp`'s main, as the command line runs it."""
    from audio2lp.apps import cli

    code = cli.main(argv)
    return code, capsys.readouterr().out


@pytest.fixture
def all_good(monkeypatch):
    """Every check that touches the machine returns ok, so each test can break one."""
    ok = doctor.Check
    monkeypatch.setattr(doctor, "check_device", lambda: ok("device", doctor.OK, "CPU", required=False))
    monkeypatch.setattr(doctor, "check_weights", lambda w=None, verify=False: ok("LivePortrait weights", doctor.OK,
                                                                                  "here"))
    monkeypatch.setattr(doctor, "check_faces", lambda w=None, i=None: [ok("face detection (dlib)", doctor.OK, "dlib",
                                                                          required=False)])
    monkeypatch.setattr(doctor, "check_lipsync", lambda: (ok("lip-sync model", doctor.OK, "asset"), "tiny.en"))
    monkeypatch.setattr(doctor, "check_whisper", lambda n: [ok(f"Whisper {n}", doctor.OK, "pkg")])
    monkeypatch.setattr(doctor, "check_ffmpeg", lambda: ok("ffmpeg", doctor.OK, "ffmpeg 7"))
    monkeypatch.setattr(doctor, "check_encoder", lambda: ok("video encoder", doctor.OK, "libx264"))


def test_ready_exits_0(all_good, capsys):
    code, out = _run(["doctor"], capsys)
    assert code == 0
    assert out.strip().endswith("speak: ready")
    assert out.startswith("versions: python ") and "torch " in out and "audio2lp " in out


def test_a_required_problem_exits_1_with_the_fix(all_good, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_ffmpeg", lambda: doctor.Check("ffmpeg", doctor.FAIL, "no binary",
                                                                     "pip install imageio-ffmpeg"))
    code, out = _run(["doctor"], capsys)
    assert code == 1
    assert "[FAIL] ffmpeg" in out and "fix: pip install imageio-ffmpeg" in out
    assert "speak: NOT ready; fix: ffmpeg" in out


def test_optional_problems_do_not_fail(all_good, monkeypatch, capsys):
    monkeypatch.setattr(doctor, "check_serve", lambda: doctor.Check("HTTP service", doctor.INFO, "optional",
                                                                    required=False))
    code, out = _run(["doctor", "--json"], capsys)
    data = json.loads(out)
    assert code == 0 and data["speak_ready"] is True
    assert {c["name"] for c in data["checks"]} >= {"LivePortrait weights", "ffmpeg", "HTTP service"}


def test_missing_weights_say_which_and_how(tmp_path):
    (tmp_path / "liveportrait" / "base_models").mkdir(parents=True)
    c = doctor.check_weights(tmp_path)
    assert c.status == doctor.FAIL and c.required
    assert "spade_generator.pth" in c.detail and "stitching_retargeting_module.pth" in c.detail
    assert "audio2lp weights download" in c.detail and "audio2lp weights import DIR" in c.detail


def test_weights_present_and_verified(tmp_path):
    save_networks(RendererNetworks.random(RendererConfig.tiny()), tmp_path)  # our safetensors, carrying their config
    c = doctor.check_weights(tmp_path)
    assert c.status == doctor.OK and str(tmp_path) in c.detail and ".safetensors" in c.detail
    v = doctor.check_weights(tmp_path, verify=True)
    assert v.status == doctor.OK and "loaded strictly" in v.detail


def test_weights_that_do_not_load(tmp_path):
    # official sizes implied
    save_networks(RendererNetworks.random(RendererConfig.tiny()), tmp_path, official_layout_pth=True)
    v = doctor.check_weights(tmp_path, verify=True)
    assert v.status == doctor.FAIL and "weights download --force" in v.fix


def test_real_checks_run(capsys):
    """The real checks run on this machine without raising, and the text fits the terminal width."""
    checks = doctor.run_checks()
    names = [c.name for c in checks]
    for expected in ("device", "LivePortrait weights", "face detection (dlib)", "lip-sync model", "ffmpeg",
                     "video encoder"):
        assert expected in names
    assert any(n.startswith("Whisper ") for n in names)
    text = doctor.format_report(doctor.versions(), checks, columns=100)
    assert all(len(line) <= 100 or " " not in line.strip() for line in text.splitlines())


def test_encoder_check_names_a_bad_setting(monkeypatch):
    from audio2lp.media import encoders

    monkeypatch.setitem(encoders._state, "nvenc", False)
    monkeypatch.delenv(encoders.ENV, raising=False)
    c = doctor.check_encoder()
    assert c.status == doctor.OK and c.detail.startswith("libx264")
    monkeypatch.setenv(encoders.ENV, "h265")
    c = doctor.check_encoder()
    assert c.status == doctor.FAIL and "h265" in c.detail and "AUDIO2LP_VIDEO_ENCODER" in c.fix
