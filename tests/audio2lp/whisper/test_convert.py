"""Tests of audio2lp.whisper.convert (CTranslate2 Whisper -> openai-whisper checkpoint).

The fast tests write tiny synthetic CTranslate2 models with the writer below (from a random
openai-whisper model, so every converted weight can be compared with its origin). The slow
tests convert the real tiny.en / base packages and compare with CTranslate2 itself.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

whisper = pytest.importorskip("whisper")

from audio2lp.whisper.convert import convert_ct2_to_whisper  # noqa: E402
from audio2lp.whisper.ct2 import (  # noqa: E402
    CT2_PACKAGES,
    ct2_model_from_path,
    find_installed_ct2_model,
    read_ct2_model_bin,
)
from lp_renderer.errors import WeightsError  # noqa: E402

REPO = Path(__file__).resolve().parents[3]
DATA = Path(os.environ.get("AUDIO2LP_TEST_DATA", REPO.parent / "shared" / "data"))

TINY_DIMS = dict(n_mels=8, n_audio_ctx=10, n_audio_state=16, n_audio_head=2, n_audio_layer=2,
                 n_vocab=24, n_text_ctx=6, n_text_state=16, n_text_head=4, n_text_layer=1)

# ------------------------------------------------------------------------------------------
# a CTranslate2 model.bin writer for tests

F32, I8, I16, I32, F16, BF16 = 0, 1, 2, 3, 4, 5


def _s(text: str) -> bytes:
    raw = text.encode() + b"\0"
    return struct.pack("<H", len(raw)) + raw


def ct2_bytes(variables: dict[str, tuple[int, np.ndarray]], aliases: dict[str, str] | None = None,
              *, version: int = 6, spec: str = "WhisperSpec", revision: int = 3) -> bytes:
    """Serialize ``{name: (dtype id, array)}`` in CTranslate2's model.bin layout."""
    out = [struct.pack("<I", version)]
    if version >= 2:
        out += [_s(spec), struct.pack("<I", revision)]
    out.append(struct.pack("<I", len(variables)))
    for name in sorted(variables):
        type_id, arr = variables[name]
        arr = np.ascontiguousarray(arr)
        out += [_s(name), struct.pack("<B", arr.ndim), struct.pack(f"<{arr.ndim}I", *arr.shape)]
        data = arr.tobytes()
        if version >= 4:
            out += [struct.pack("<B", type_id), struct.pack("<I", len(data))]
        else:
            out += [struct.pack("<B", arr.itemsize), struct.pack("<I", arr.size)]
        out.append(data)
    if version >= 3:
        aliases = aliases or {}
        out.append(struct.pack("<I", len(aliases)))
        for a, target in sorted(aliases.items()):
            out += [_s(a), _s(target)]
    return b"".join(out)


def random_whisper(seed: int = 0, **dims) -> whisper.model.Whisper:
    torch.manual_seed(seed)
    model = whisper.model.Whisper(whisper.model.ModelDimensions(**{**TINY_DIMS, **dims}))
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.3)
    return model.eval()


def whisper_to_ct2(model, *, key_bias: float = 0.0) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """The CTranslate2 variables of an openai-whisper model (fused q|k|v, zero key bias)."""
    sd = {k: v.detach().numpy().astype(np.float32) for k, v in model.state_dict().items()}
    v: dict[str, np.ndarray] = {}

    def lin(src, dst, bias=True):
        v[dst + "/weight"] = sd[src + ".weight"]
        if bias:
            v[dst + "/bias"] = sd[src + ".bias"]

    def ln(src, dst):
        v[dst + "/gamma"], v[dst + "/beta"] = sd[src + ".weight"], sd[src + ".bias"]

    def kbias(n):
        return np.full(n, key_bias, np.float32)

    def block(src, dst, cross):
        a = src + ".attn"
        n = sd[a + ".query.bias"].shape[0]
        v[dst + "/self_attention/linear_0/weight"] = np.concatenate(
            [sd[a + ".query.weight"], sd[a + ".key.weight"], sd[a + ".value.weight"]])
        v[dst + "/self_attention/linear_0/bias"] = np.concatenate(
            [sd[a + ".query.bias"], kbias(n), sd[a + ".value.bias"]])
        lin(a + ".out", dst + "/self_attention/linear_1")
        ln(src + ".attn_ln", dst + "/self_attention/layer_norm")
        if cross:
            c = src + ".cross_attn"
            lin(c + ".query", dst + "/attention/linear_0")
            v[dst + "/attention/linear_1/weight"] = np.concatenate(
                [sd[c + ".key.weight"], sd[c + ".value.weight"]])
            v[dst + "/attention/linear_1/bias"] = np.concatenate([kbias(n), sd[c + ".value.bias"]])
            lin(c + ".out", dst + "/attention/linear_2")
            ln(src + ".cross_attn_ln", dst + "/attention/layer_norm")
        lin(src + ".mlp.0", dst + "/ffn/linear_0")
        lin(src + ".mlp.2", dst + "/ffn/linear_1")
        ln(src + ".mlp_ln", dst + "/ffn/layer_norm")

    d = model.dims
    lin("encoder.conv1", "encoder/conv1")
    lin("encoder.conv2", "encoder/conv2")
    v["encoder/position_encodings/encodings"] = sd["encoder.positional_embedding"]
    for i in range(d.n_audio_layer):
        block(f"encoder.blocks.{i}", f"encoder/layer_{i}", cross=False)
    ln("encoder.ln_post", "encoder/layer_norm")
    v["encoder/num_heads"] = np.array(d.n_audio_head, np.int16)
    v["decoder/embeddings/weight"] = sd["decoder.token_embedding.weight"]
    v["decoder/position_encodings/encodings"] = sd["decoder.positional_embedding"]
    for i in range(d.n_text_layer):
        block(f"decoder.blocks.{i}", f"decoder/layer_{i}", cross=True)
    ln("decoder.ln", "decoder/layer_norm")
    v["decoder/num_heads"] = np.array(d.n_text_head, np.int16)
    v["decoder/activation"] = np.array(3, np.int8)
    v["decoder/pre_norm"] = np.array(1, np.int8)
    v["decoder/scale_embeddings"] = np.array(0, np.int8)
    v["decoder/alibi"] = np.array(0, np.int8)
    v["decoder/alignment_layer"] = np.array(-1, np.int16)
    v["decoder/alignment_heads"] = np.array(1, np.int16)
    return v, {"decoder/projection/weight": "decoder/embeddings/weight"}


def typed(v: dict[str, np.ndarray], float_dtype=np.float32) -> dict[str, tuple[int, np.ndarray]]:
    ids = {np.dtype(np.float32): F32, np.dtype(np.int8): I8, np.dtype(np.int16): I16,
           np.dtype(np.int32): I32, np.dtype(np.float16): F16}
    out = {}
    for name, a in v.items():
        if a.dtype == np.float32 and float_dtype != np.float32:
            a = a.astype(float_dtype)
        out[name] = (ids[a.dtype], a)
    return out


def quantize_int8(v: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """CTranslate2's int8 scheme: per output row, scale = 127 / max|w|, q = round(w * scale)."""
    out = dict(v)
    for name, a in v.items():
        if name.endswith("/weight") and a.ndim >= 2:
            flat = a.reshape(a.shape[0], -1)
            scale = (127.0 / np.abs(flat).max(axis=1)).astype(np.float32)
            out[name] = np.rint(flat * scale[:, None]).astype(np.int8).reshape(a.shape)
            out[name + "_scale"] = scale
    return out


def state(model) -> dict[str, torch.Tensor]:
    return {k: t.float() for k, t in model.state_dict().items()}


def convert_state(ckpt) -> dict[str, torch.Tensor]:
    return {k: t.float() for k, t in ckpt["model_state_dict"].items()}


@pytest.fixture(scope="module")
def model():
    return random_whisper()


# ------------------------------------------------------------------------------------------
# fast tests on synthetic files


def test_float32_round_trip_is_exact(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    (tmp_path / "model.bin").write_bytes(ct2_bytes(typed(v), aliases))
    ckpt = convert_ct2_to_whisper(tmp_path)
    assert ckpt["dims"] == TINY_DIMS
    got, want = convert_state(ckpt), state(model)
    assert set(got) == set(want)
    for k in want:
        assert torch.equal(got[k], want[k]), k


def test_saved_checkpoint_loads_in_openai_whisper_and_computes_the_same(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    (tmp_path / "model.bin").write_bytes(ct2_bytes(typed(v), aliases))
    dst = tmp_path / "out" / "converted.pt"
    convert_ct2_to_whisper(tmp_path / "model.bin", dst)
    assert [p.name for p in dst.parent.iterdir()] == ["converted.pt"]
    raw = torch.load(dst, weights_only=True)
    assert set(raw) == {"dims", "model_state_dict"}
    loaded = whisper.load_model(str(dst), device="cpu")
    mel = torch.randn(2, TINY_DIMS["n_mels"], 2 * TINY_DIMS["n_audio_ctx"])
    tokens = torch.tensor([[1, 5, 7], [2, 3, 4]])
    with torch.no_grad():
        assert torch.allclose(loaded(mel, tokens), model(mel, tokens), atol=1e-5)


def test_nonzero_key_bias_is_dropped_without_changing_attention(model, tmp_path):
    v, aliases = whisper_to_ct2(model, key_bias=0.7)
    (tmp_path / "model.bin").write_bytes(ct2_bytes(typed(v), aliases))
    got = convert_state(convert_ct2_to_whisper(tmp_path))
    for k, t in state(model).items():
        assert torch.equal(got[k], t), k
    # The dropped bias really has no effect: attention with it equals attention without.
    attn = model.encoder.blocks[0].attn
    x = torch.randn(1, 5, TINY_DIMS["n_audio_state"])
    with torch.no_grad():
        ref = attn(x)[0]
        attn.key.bias = torch.nn.Parameter(torch.full((TINY_DIMS["n_audio_state"],), 0.7))
        try:
            biased = attn(x)[0]
        finally:
            attn.key.bias = None
    assert torch.allclose(ref, biased, atol=1e-5)


def test_float16_storage_is_kept(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    (tmp_path / "model.bin").write_bytes(ct2_bytes(typed(v, np.float16), aliases))
    ckpt = convert_ct2_to_whisper(tmp_path)
    assert ckpt["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float16
    got = convert_state(ckpt)
    for k, t in state(model).items():
        assert torch.equal(got[k], t.half().float()), k
    as32 = convert_ct2_to_whisper(tmp_path, dtype="float32")
    assert as32["model_state_dict"]["encoder.conv1.weight"].dtype == torch.float32


def test_int8_weights_are_dequantized_with_their_scale(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    q = quantize_int8(v)
    assert q["decoder/embeddings/weight"].dtype == np.int8  # the aliased projection too
    (tmp_path / "model.bin").write_bytes(ct2_bytes(typed(q), aliases))
    ckpt = convert_ct2_to_whisper(tmp_path)
    got = convert_state(ckpt)
    for k, t in state(model).items():
        step = t.abs().reshape(t.shape[0], -1).amax(dim=1) / 127 if t.ndim >= 2 else torch.zeros(1)
        err = (got[k] - t).abs().reshape(t.shape[0], -1).amax(dim=1) if t.ndim >= 2 else (got[k] - t).abs()
        assert torch.all(err <= step * 0.5 + 1e-6), k
    assert ckpt["model_state_dict"]["encoder.conv2.weight"].dtype == torch.float32


def test_bfloat16_and_int16(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    t = typed(v)
    w = v["encoder/conv1/weight"]
    bf = (w.view(np.uint32) >> 16).astype(np.uint16)  # truncate to bfloat16
    t["encoder/conv1/weight"] = (BF16, bf)
    w2 = v["encoder/layer_0/ffn/linear_0/weight"]
    scale = np.float32(1000.0)
    t["encoder/layer_0/ffn/linear_0/weight"] = (I16, np.rint(w2 * scale).astype(np.int16))
    t["encoder/layer_0/ffn/linear_0/weight_scale"] = (F32, np.array(scale, np.float32))
    (tmp_path / "model.bin").write_bytes(ct2_bytes(t, aliases))
    got = convert_state(convert_ct2_to_whisper(tmp_path))
    expect_bf = torch.from_numpy((bf.astype(np.uint32) << 16).view(np.float32))
    assert torch.equal(got["encoder.conv1.weight"], expect_bf)
    assert torch.allclose(got["encoder.blocks.0.mlp.0.weight"], torch.from_numpy(w2), atol=0.5 / 1000)


def test_legacy_binary_version_3(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    (tmp_path / "model.bin").write_bytes(ct2_bytes(typed(v), aliases, version=3))
    ct2 = read_ct2_model_bin(tmp_path / "model.bin")
    assert (ct2.binary_version, ct2.spec, ct2.revision) == (3, "WhisperSpec", 3)
    got = convert_state(convert_ct2_to_whisper(tmp_path))
    for k, t in state(model).items():
        assert torch.equal(got[k], t), k


def test_model_split_in_parts(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    data = ct2_bytes(typed(v), aliases)
    cut = [0, 1000, len(data) // 2, len(data)]
    for i in range(3):
        (tmp_path / f"model.bin.part{i + 1}").write_bytes(data[cut[i]:cut[i + 1]])
    m = ct2_model_from_path(tmp_path)
    assert [p.name for p in m.model_files] == ["model.bin.part1", "model.bin.part2", "model.bin.part3"]
    got = convert_state(convert_ct2_to_whisper(tmp_path))
    assert torch.equal(got["decoder.ln.weight"], state(model)["decoder.ln.weight"])
    # Parts in the wrong order are not a model.
    with pytest.raises(WeightsError):
        convert_ct2_to_whisper([tmp_path / "model.bin.part2", tmp_path / "model.bin.part1",
                                tmp_path / "model.bin.part3"])
    # A gap in the numbering is reported.
    (tmp_path / "model.bin.part2").rename(tmp_path / "model.bin.part5")
    with pytest.raises(WeightsError, match="not consecutive"):
        ct2_model_from_path(tmp_path)


def _write(tmp_path, data: bytes) -> Path:
    p = tmp_path / "model.bin"
    p.write_bytes(data)
    return p


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:-7], "ends early"),
        (lambda b: b + b"\0", "unexpected bytes"),
        (lambda b: struct.pack("<I", 99) + b[4:], "binary version"),
        (lambda b: b[: len(b) // 3], "ends early"),
    ],
    ids=["truncated", "trailing-byte", "future-version", "cut-in-a-variable"],
)
def test_corrupt_files_are_rejected(model, tmp_path, mutate, message):
    v, aliases = whisper_to_ct2(model)
    p = _write(tmp_path, mutate(ct2_bytes(typed(v), aliases)))
    with pytest.raises(WeightsError, match=message):
        convert_ct2_to_whisper(p)


def test_unknown_dtype_and_size_mismatch(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    t = typed(v)
    t["encoder/conv1/bias"] = (9, t["encoder/conv1/bias"][1])
    with pytest.raises(WeightsError, match="unknown dtype"):
        convert_ct2_to_whisper(_write(tmp_path, ct2_bytes(t, aliases)))
    t = typed(v)
    t["encoder/conv1/bias"] = (F16, t["encoder/conv1/bias"][1])  # float32 bytes declared float16
    with pytest.raises(WeightsError, match="corrupt"):
        convert_ct2_to_whisper(_write(tmp_path, ct2_bytes(t, aliases)))


def test_structural_problems(model, tmp_path):
    v, aliases = whisper_to_ct2(model)

    def fails(vars_, match, **kw):
        with pytest.raises(WeightsError, match=match):
            convert_ct2_to_whisper(_write(tmp_path, ct2_bytes(typed(vars_), aliases, **kw)))

    fails(v, "not Whisper", spec="TransformerSpec")
    fails({k: a for k, a in v.items() if k != "encoder/layer_1/ffn/linear_0/bias"},
          "encoder/layer_1/ffn/linear_0/bias")
    fails({**v, "encoder/layer_0/self_attention/relative_position_keys": np.zeros((3, 4), np.float32)},
          "cannot represent")
    fails({**v, "decoder/scale_embeddings": np.array(1, np.int8)}, "scale_embeddings")
    untied = {**v, "decoder/projection/weight": v["decoder/embeddings/weight"] + 1.0}
    with pytest.raises(WeightsError, match="not tied"):
        convert_ct2_to_whisper(_write(tmp_path, ct2_bytes(typed(untied), {})))
    # A separately stored but identical projection is fine.
    tied = {**v, "decoder/projection/weight": v["decoder/embeddings/weight"].copy()}
    convert_ct2_to_whisper(_write(tmp_path, ct2_bytes(typed(tied), {})))


def test_expected_name_is_checked(model, tmp_path):
    v, aliases = whisper_to_ct2(model)
    _write(tmp_path, ct2_bytes(typed(v), aliases))
    with pytest.raises(WeightsError, match="expected to be Whisper tiny.en"):
        convert_ct2_to_whisper(tmp_path, name="tiny.en")


def test_missing_source(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        convert_ct2_to_whisper(tmp_path / "nowhere")
    with pytest.raises(WeightsError, match="no model.bin"):
        convert_ct2_to_whisper(tmp_path)


def _fake_package(root: Path, module: str, files: dict[str, bytes]) -> None:
    pkg = root / module
    (pkg / "data").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    for name, data in files.items():
        (pkg / "data" / name).write_bytes(data)


def test_find_installed_model_in_split_packages(model, tmp_path, monkeypatch):
    v, aliases = whisper_to_ct2(model)
    data = ct2_bytes(typed(v), aliases)
    half = len(data) // 2
    _fake_package(tmp_path, "fakewhisper_part1", {"model.bin.part1": data[:half], "config.json": b"{}"})
    _fake_package(tmp_path, "fakewhisper_part2", {"model.bin.part2": data[half:]})
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(CT2_PACKAGES, "fake", (("fakewhisper-part1", "fakewhisper_part1"),
                                               ("fakewhisper-part2", "fakewhisper_part2")))
    monkeypatch.setitem(CT2_PACKAGES, "fake-half", (("fakewhisper-part1", "fakewhisper_part1"),
                                                    ("fakewhisper-part9", "fakewhisper_part9")))
    monkeypatch.setitem(CT2_PACKAGES, "fake-none", (("nothere-a", "fakewhisper_nothere"),))
    found = find_installed_ct2_model("fake")
    assert [p.name for p in found.model_files] == ["model.bin.part1", "model.bin.part2"]
    assert found.config_path is not None and found.config() == {}
    got = convert_state(convert_ct2_to_whisper(found))
    assert torch.equal(got["encoder.ln_post.bias"], state(model)["encoder.ln_post.bias"])
    with pytest.raises(WeightsError, match="fakewhisper-part9"):
        find_installed_ct2_model("fake-half")
    assert find_installed_ct2_model("fake-none") is None
    assert find_installed_ct2_model("no-such-model") is None


# ------------------------------------------------------------------------------------------
# real models (slow): conversion vs CTranslate2 itself


def _words(text: str) -> list[str]:
    return re.sub(r"[^a-z0-9' ]", " ", text.lower().replace("-", " ")).split()


def wer(ref: str, hyp: str) -> float:
    r, h = _words(ref), _words(hyp)
    d = list(range(len(h) + 1))
    for i, rw in enumerate(r, 1):
        prev, d[0] = d[:], i
        for j, hw in enumerate(h, 1):
            d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (rw != hw))
    return d[-1] / max(1, len(r))


class Real:
    """A real CTranslate2 Whisper model, converted, with both runtimes loaded."""

    def __init__(self, name: str, tmp: Path):
        ctranslate2 = pytest.importorskip("ctranslate2")
        src = find_installed_ct2_model(name)
        if src is None:
            pkgs = " + ".join(d for d, _ in CT2_PACKAGES[name])
            pytest.skip(f"Whisper {name} in CTranslate2 format is not installed (pip install {pkgs})")
        self.name = name
        self.pt = tmp / f"{name}.pt"
        convert_ct2_to_whisper(src, self.pt, name=name)
        folder = src.folder
        if len(src.model_files) > 1 or src.model_files[0].name != "model.bin":
            folder = tmp / f"{name}-ct2"  # CTranslate2 itself needs one model.bin
            folder.mkdir()
            with open(folder / "model.bin", "wb") as out:
                for part in src.model_files:
                    with open(part, "rb") as f:
                        shutil.copyfileobj(f, out)
            for p in src.folder.iterdir():
                if p.is_file() and not p.name.startswith("model.bin"):
                    shutil.copy(p, folder / p.name)
        self.ct2 = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32")
        self.model = whisper.load_model(str(self.pt), device="cpu")
        self.tokenizer = whisper.tokenizer.get_tokenizer(
            self.model.is_multilingual, num_languages=self.model.num_languages, language="en",
            task="transcribe")
        self._sv = ctranslate2.StorageView

    @staticmethod
    def mel(audio: np.ndarray) -> np.ndarray:
        return whisper.log_mel_spectrogram(whisper.pad_or_trim(audio)).numpy()[None]

    def ct2_encode(self, mel: np.ndarray) -> np.ndarray:
        return np.array(self.ct2.encode(self._sv.from_array(np.ascontiguousarray(mel)), to_cpu=True))

    def ct2_transcribe(self, mel: np.ndarray) -> str:
        prompt = list(self.tokenizer.sot_sequence_including_notimestamps)
        res = self.ct2.generate(self._sv.from_array(np.ascontiguousarray(mel)), [prompt], beam_size=1)
        return self.tokenizer.decode(res[0].sequences_ids[0]).strip()

    def transcribe(self, mel: np.ndarray) -> str:
        opts = whisper.DecodingOptions(language="en", without_timestamps=True, fp16=False)
        return whisper.decode(self.model, torch.from_numpy(mel[0]), opts).text.strip()


@pytest.fixture(scope="module", params=["tiny.en", "base"])
def real(request, tmp_path_factory):
    return Real(request.param, tmp_path_factory.mktemp(request.param))


SENTENCES = "My name is John and I live in a small house near the river. We need more time to finish this project."


@pytest.mark.slow
def test_real_model_transcribes_synthetic_speech(real, tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install -y espeak-ng)")
    from audio2lp.media.audio import load_audio

    wav = tmp_path / "tts.wav"
    subprocess.run(["espeak-ng", "-s", "150", "-w", str(wav), SENTENCES], check=True, capture_output=True)
    mel = real.mel(load_audio(wav))
    text = real.transcribe(mel)
    assert wer(SENTENCES, text) <= 0.1, text
    assert wer(real.ct2_transcribe(mel), text) <= 0.05, text


ENGLISH_CLIPS = ["faster-whisper__hotwords.mp3", "MakeItTalk__M6_04_16k.wav", "SadTalker__RD_Radio31_000.wav"]


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("clip", ENGLISH_CLIPS)
def test_real_model_matches_ctranslate2_on_real_speech(real, clip):
    path = DATA / "speech" / clip
    if not path.is_file():
        pytest.skip(f"{path} not found (set AUDIO2LP_TEST_DATA)")
    from audio2lp.media.audio import load_audio

    mel = real.mel(load_audio(path))
    ours, theirs = real.transcribe(mel), real.ct2_transcribe(mel)
    assert len(_words(theirs)) >= 5
    assert wer(theirs, ours) <= 0.05, (ours, theirs)


# What the speakers say, established by listening through both converted models and both CTranslate2 models
# (tiny.en and base, greedy decoding): all four give these words.
TRANSCRIPTS = {
    "MakeItTalk__M6_04_16k.wav": "And I don't know when your moment was, but I bet you there was one.",
    "SadTalker__RD_Radio36_000.wav": "I'm honored to represent a district made up largely of working people, and I'm "
                                     "proud to tell you that I come from a family of workers.",
}


@pytest.mark.slow
@pytest.mark.realdata
@pytest.mark.parametrize("clip", sorted(TRANSCRIPTS))
def test_real_model_transcribes_real_speech(real, clip):
    path = DATA / "speech" / clip
    if not path.is_file():
        pytest.skip(f"{path} not found (set AUDIO2LP_TEST_DATA)")
    from audio2lp.media.audio import load_audio

    text = real.transcribe(real.mel(load_audio(path)))
    assert wer(TRANSCRIPTS[clip], text) <= 0.1, text


def _test_signals() -> dict[str, np.ndarray]:
    """A synthetic 12 s buzz (always), plus two real English clips when the shared data is there (the second
    gave the largest float32 difference of the English clips for base)."""
    rng = np.random.default_rng(0)
    t = np.arange(12 * 16000) / 16000
    out = {"synthetic": (0.2 * np.sin(2 * np.pi * 180 * t) * (1 + np.sin(2 * np.pi * 2 * t))
                         + 0.05 * rng.standard_normal(t.size)).astype(np.float32)}
    for clip in (ENGLISH_CLIPS[0], "hallo__3.wav"):
        if (DATA / "speech" / clip).is_file():
            from audio2lp.media.audio import load_audio

            out[clip] = load_audio(DATA / "speech" / clip)
    return out


@pytest.mark.slow
def test_real_encoder_matches_ctranslate2(real, monkeypatch):
    """The converted encoder's output matches CTranslate2's (``compute_type="float32"``) within 1e-3.

    What is compared, on all 1500 output tokens of a 30 s window (padding included):

    * The converted weights, run by openai-whisper's encoder in float64, against CTranslate2 in float32:
      ``max |ours64 - ct2| < 1e-3`` (absolute). float64 removes our own rounding, so what is left is
      CTranslate2's float32 rounding (measured up to 7e-4 on 15 English clips, both models).
    * Both in float32: ``max |ours32 - ct2| <= 1e-3 * max |ct2|`` (relative to the output's scale, measured
      up to 8e-5) and a mean absolute difference below 1e-5 (measured ~2e-6). The absolute float32 difference
      reaches 1.9e-3 for base (1.3e-3 for tiny.en) on some clips. That is not a conversion error: both
      runtimes use the same weights (every tensor is stored as float16 and widened to float32; only the
      scalar config values are ints) but sum in different orders, and the residual stream before the final
      LayerNorm has an outlier channel of magnitude ~600 (float32 step ~4e-5 there), which that LayerNorm
      scales to outputs of up to 12 (tiny.en) / 24 (base). Our float32 pass differs from our own float64 pass
      by as much (up to 1.4e-3), so 1e-3 absolute between two float32 runtimes is below float32's noise floor.
    """
    for label, audio in _test_signals().items():
        mel = real.mel(audio)
        ref = real.ct2_encode(mel)
        with torch.no_grad():
            ours = real.model.encoder(torch.from_numpy(mel)).numpy()
        assert ours.shape == ref.shape == (1, 1500, real.model.dims.n_audio_state)
        with monkeypatch.context() as m:  # openai-whisper's LayerNorm computes in float32 whatever the input
            m.setattr(whisper.model.LayerNorm, "forward", torch.nn.LayerNorm.forward)
            enc64 = real.model.encoder.double()
            try:
                with torch.no_grad():
                    ours64 = enc64(torch.from_numpy(mel).double()).numpy()
            finally:
                real.model.encoder.float()
        diff64 = float(np.abs(ours64 - ref).max())
        diff32 = np.abs(ours - ref)
        scale = float(np.abs(ref).max())
        print(f"{real.name} {label}: max|ours - ct2| = {diff64:.2e} (ours in float64), {diff32.max():.2e} "
              f"(float32; {diff32.max() / scale:.1e} of max|ct2| = {scale:.1f}; mean {diff32.mean():.1e})")
        assert diff64 < 1e-3, label
        assert diff32.max() <= 1e-3 * scale, label
        assert diff32.mean() < 1e-5, label


@pytest.mark.slow
def test_real_checkpoint_loads_with_weights_only(real):
    ckpt = torch.load(real.pt, weights_only=True)
    assert ckpt["dims"]["n_vocab"] == (51864 if real.name.endswith(".en") else 51865)
