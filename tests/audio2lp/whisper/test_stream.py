"""Tests of audio2lp.whisper.stream: streamed features equal the offline ones bit for bit, whatever the chunking
and batch; windows are bounded (a token ignores audio beyond its look-ahead and before its window)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("whisper")

from audio2lp.whisper.features import SAMPLES_PER_TOKEN, WhisperEncoder  # noqa: E402
from audio2lp.whisper.stream import StreamConfig, StreamingEncoder  # noqa: E402
from tests.audio2lp.whisper.test_convert import random_whisper  # noqa: E402
from tests.audio2lp.whisper.test_features import FAKE_DIMS, _speechlike  # noqa: E402

CONFIG = StreamConfig(whisper_model="fake", window=30, block=4, lookahead=3, layers=(1, 2))


@pytest.fixture(scope="module")
def encoder():
    return StreamingEncoder(CONFIG, WhisperEncoder("fake", model=random_whisper(seed=1, **FAKE_DIMS)))


def _audio(seconds=1.3, seed=0):
    a = _speechlike(int(seconds * 16000), seed)
    a[:3000] = 0  # leading digital silence (the cached all-zero window)
    return a


@pytest.mark.parametrize("chunk", [1, 977, 5000, 100000])
def test_stream_equals_offline(encoder, chunk):
    audio = _audio()
    offline = encoder.encode(audio)
    assert offline.shape == (-(-audio.shape[0] // SAMPLES_PER_TOKEN), encoder.dim)
    fs = encoder.stream(batch_size=3)
    outs = [fs.push(audio[i:i + chunk]) for i in range(0, audio.shape[0], chunk)]
    outs.append(fs.flush())
    np.testing.assert_array_equal(np.concatenate(outs), offline)
    assert fs.buf.shape[0] <= (CONFIG.window + CONFIG.block) * SAMPLES_PER_TOKEN + chunk  # bounded memory


@pytest.mark.parametrize("batch", [1, 2, 5, 16])
def test_batch_size_does_not_change_the_bits(encoder, batch):
    audio = _audio(seed=3)
    np.testing.assert_array_equal(encoder.encode(audio, batch_size=batch), encoder.encode(audio, batch_size=8))


def test_tokens_depend_only_on_their_window(encoder):
    c = CONFIG
    audio = _audio(2.0, seed=4)
    base = encoder.encode(audio)
    t = 40  # a token in block 10
    end = ((t // c.block + 1) * c.block + c.lookahead) * SAMPLES_PER_TOKEN  # last sample its window reads
    later = audio.copy()
    later[end:] = -later[end:]
    np.testing.assert_array_equal(encoder.encode(later)[:t + 1], base[:t + 1])
    after = t + c.block + c.lookahead + 1
    assert not np.array_equal(encoder.encode(later)[after:], base[after:])
    earlier = audio.copy()
    earlier[:end - c.window * SAMPLES_PER_TOKEN] *= 0.5
    np.testing.assert_array_equal(encoder.encode(earlier)[t], base[t])
    assert c.max_lookahead_ms == 20 * (c.block + c.lookahead - 1)


def test_n_tokens_and_config_checks(encoder):
    audio = _audio()
    np.testing.assert_array_equal(encoder.encode(audio, n_tokens=10), encoder.encode(audio)[:10])
    assert StreamConfig.from_dict(CONFIG.to_dict()) == CONFIG
    with pytest.raises(ValueError):
        StreamConfig(window=5, block=4, lookahead=3)
    with pytest.raises(ValueError, match="unknown"):
        StreamConfig.from_dict({"colour": 1})
    with pytest.raises(ValueError, match="layers"):
        StreamingEncoder(StreamConfig(whisper_model="fake", window=30, block=4, lookahead=3, layers=(9,)),
                         encoder.whisper)
