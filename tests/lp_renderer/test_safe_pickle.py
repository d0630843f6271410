"""Tests of lp_renderer.safe_pickle: real numpy 1.x / 2.x pickles load, malicious ones never run."""

from __future__ import annotations

import base64
import os
import pickle
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest

from audio2lp.errors import InputError
from lp_renderer.safe_pickle import load_restricted_pickle, loads_restricted_pickle

# Written by numpy 1.26.4 (module paths numpy.core.multiarray / numpy.core.numeric) with
# pickle.dumps(NUMPY1_TEMPLATE_EXPECTED, protocol=p); see expected_numpy1_template() for the value.
NUMPY1_PICKLES = {
    2: (
        "gAJ9cQAoWAgAAABuX2ZyYW1lc3EBSwFYCgAAAG91dHB1dF9mcHNxAksZWAYAAABtb3Rpb25xA11xBH1xBShYBQAAAHNjYWxl"
        "cQZjbnVtcHkuY29yZS5tdWx0aWFycmF5Cl9yZWNvbnN0cnVjdApxB2NudW1weQpuZGFycmF5CnEISwCFcQljX2NvZGVjcwpl"
        "bmNvZGUKcQpYAQAAAGJxC1gGAAAAbGF0aW4xcQyGcQ1ScQ6HcQ9ScRAoSwFLAUsBhnERY251bXB5CmR0eXBlCnESWAIAAABm"
        "NHETiYiHcRRScRUoSwNYAQAAADxxFk5OTkr/////Sv////9LAHRxF2KJaApYBQAAAAAAw4A/cRhoDIZxGVJxGnRxG2JYAQAA"
        "AFJxHGgHaAhLAIVxHWgOh3EeUnEfKEsBSwFLA0sDh3EgaBWJaApYJwAAAAAAwoA/AAAAAAAAAAAAAAAAAADCgD8AAAAAAAAA"
        "AAAAAAAAAMKAP3EhaAyGcSJScSN0cSRiWAMAAABleHBxJWgHaAhLAIVxJmgOh3EnUnEoKEsBSwFLAksDh3EpaBWJaApYGgAA"
        "AAAAAAAAAAA+AADCgD4AAMOAPgAAAD8AACA/cSpoDIZxK1JxLHRxLWJ1YVgKAAAAY19leWVzX2xzdHEuXXEvaAdoCEsAhXEw"
        "aA6HcTFScTIoSwFLAUsChnEzaBWJaApYCQAAAAAAwoA+AAAAP3E0aAyGcTVScTZ0cTdiYVgJAAAAY19saXBfbHN0cThdcTlo"
        "B2gISwCFcTpoDodxO1JxPChLAUsBSwGGcT1oFYloClgEAAAAAAAAPnE+aAyGcT9ScUB0cUFiYVgGAAAAc2NhbGFycUJjbnVt"
        "cHkuY29yZS5tdWx0aWFycmF5CnNjYWxhcgpxQ2gSWAIAAABmOHFEiYiHcUVScUYoSwNoFk5OTkr/////Sv////9LAHRxR2Jo"
        "ClgJAAAAAAAAAAAAw6A/cUhoDIZxSVJxSoZxS1JxTFgHAAAAZm9ydHJhbnFNaAdoCEsAhXFOaA6HcU9ScVAoSwFLAksDhnFR"
        "aBJYAgAAAGkycVKJiIdxU1JxVChLA2gWTk5OSv////9K/////0sAdHFVYohoClgMAAAAAAADAAEABAACAAUAcVZoDIZxV1Jx"
        "WHRxWWJ1Lg=="
    ),
    3: (
        "gAN9cQAoWAgAAABuX2ZyYW1lc3EBSwFYCgAAAG91dHB1dF9mcHNxAksZWAYAAABtb3Rpb25xA11xBH1xBShYBQAAAHNjYWxl"
        "cQZjbnVtcHkuY29yZS5tdWx0aWFycmF5Cl9yZWNvbnN0cnVjdApxB2NudW1weQpuZGFycmF5CnEISwCFcQlDAWJxCodxC1Jx"
        "DChLAUsBSwGGcQ1jbnVtcHkKZHR5cGUKcQ5YAgAAAGY0cQ+JiIdxEFJxEShLA1gBAAAAPHESTk5OSv////9K/////0sAdHET"
        "YolDBAAAwD9xFHRxFWJYAQAAAFJxFmgHaAhLAIVxF2gKh3EYUnEZKEsBSwFLA0sDh3EaaBGJQyQAAIA/AAAAAAAAAAAAAAAA"
        "AACAPwAAAAAAAAAAAAAAAAAAgD9xG3RxHGJYAwAAAGV4cHEdaAdoCEsAhXEeaAqHcR9ScSAoSwFLAUsCSwOHcSFoEYlDGAAA"
        "AAAAAAA+AACAPgAAwD4AAAA/AAAgP3EidHEjYnVhWAoAAABjX2V5ZXNfbHN0cSRdcSVoB2gISwCFcSZoCodxJ1JxKChLAUsB"
        "SwKGcSloEYlDCAAAgD4AAAA/cSp0cStiYVgJAAAAY19saXBfbHN0cSxdcS1oB2gISwCFcS5oCodxL1JxMChLAUsBSwGGcTFo"
        "EYlDBAAAAD5xMnRxM2JhWAYAAABzY2FsYXJxNGNudW1weS5jb3JlLm11bHRpYXJyYXkKc2NhbGFyCnE1aA5YAgAAAGY4cTaJ"
        "iIdxN1JxOChLA2gSTk5OSv////9K/////0sAdHE5YkMIAAAAAAAA4D9xOoZxO1JxPFgHAAAAZm9ydHJhbnE9aAdoCEsAhXE+"
        "aAqHcT9ScUAoSwFLAksDhnFBaA5YAgAAAGkycUKJiIdxQ1JxRChLA2gSTk5OSv////9K/////0sAdHFFYohDDAAAAwABAAQA"
        "AgAFAHFGdHFHYnUu"
    ),
    4: (
        "gASVXAIAAAAAAAB9lCiMCG5fZnJhbWVzlEsBjApvdXRwdXRfZnBzlEsZjAZtb3Rpb26UXZR9lCiMBXNjYWxllIwVbnVtcHku"
        "Y29yZS5tdWx0aWFycmF5lIwMX3JlY29uc3RydWN0lJOUjAVudW1weZSMB25kYXJyYXmUk5RLAIWUQwFilIeUUpQoSwFLAUsB"
        "hpRoCowFZHR5cGWUk5SMAmY0lImIh5RSlChLA4wBPJROTk5K/////0r/////SwB0lGKJQwQAAMA/lHSUYowBUpRoCWgMSwCF"
        "lGgOh5RSlChLAUsBSwNLA4eUaBaJQyQAAIA/AAAAAAAAAAAAAAAAAACAPwAAAAAAAAAAAAAAAAAAgD+UdJRijANleHCUaAlo"
        "DEsAhZRoDoeUUpQoSwFLAUsCSwOHlGgWiUMYAAAAAAAAAD4AAIA+AADAPgAAAD8AACA/lHSUYnVhjApjX2V5ZXNfbHN0lF2U"
        "aAloDEsAhZRoDoeUUpQoSwFLAUsChpRoFolDCAAAgD4AAAA/lHSUYmGMCWNfbGlwX2xzdJRdlGgJaAxLAIWUaA6HlFKUKEsB"
        "SwFLAYaUaBaJQwQAAAA+lHSUYmGMBnNjYWxhcpRoB4wGc2NhbGFylJOUaBOMAmY4lImIh5RSlChLA2gXTk5OSv////9K////"
        "/0sAdJRiQwgAAAAAAADgP5SGlFKUjAdmb3J0cmFulGgJaAxLAIWUaA6HlFKUKEsBSwJLA4aUaBOMAmkylImIh5RSlChLA2gX"
        "Tk5OSv////9K/////0sAdJRiiEMMAAADAAEABAACAAUAlHSUYnUu"
    ),
    5: (
        "gAWVRgIAAAAAAAB9lCiMCG5fZnJhbWVzlEsBjApvdXRwdXRfZnBzlEsZjAZtb3Rpb26UXZR9lCiMBXNjYWxllIwSbnVtcHku"
        "Y29yZS5udW1lcmljlIwLX2Zyb21idWZmZXKUk5QolgQAAAAAAAAAAADAP5SMBW51bXB5lIwFZHR5cGWUk5SMAmY0lImIh5RS"
        "lChLA4wBPJROTk5K/////0r/////SwB0lGJLAUsBhpSMAUOUdJRSlIwBUpRoCSiWJAAAAAAAAAAAAIA/AAAAAAAAAAAAAAAA"
        "AACAPwAAAAAAAAAAAAAAAAAAgD+UaBBLAUsDSwOHlGgUdJRSlIwDZXhwlGgJKJYYAAAAAAAAAAAAAAAAAAA+AACAPgAAwD4A"
        "AAA/AAAgP5RoEEsBSwJLA4eUaBR0lFKUdWGMCmNfZXllc19sc3SUXZRoCSiWCAAAAAAAAAAAAIA+AAAAP5RoEEsBSwKGlGgU"
        "dJRSlGGMCWNfbGlwX2xzdJRdlGgJKJYEAAAAAAAAAAAAAD6UaBBLAUsBhpRoFHSUUpRhjAZzY2FsYXKUjBVudW1weS5jb3Jl"
        "Lm11bHRpYXJyYXmUjAZzY2FsYXKUk5RoDYwCZjiUiYiHlFKUKEsDaBFOTk5K/////0r/////SwB0lGJDCAAAAAAAAOA/lIaU"
        "UpSMB2ZvcnRyYW6UaAkolgwAAAAAAAAAAAADAAEABAACAAUAlGgNjAJpMpSJiIeUUpQoSwNoEU5OTkr/////Sv////9LAHSU"
        "YksCSwOGlIwBRpR0lFKUdS4="
    ),
}


def expected_numpy1_template() -> dict:
    return {
        "n_frames": 1,
        "output_fps": 25,
        "motion": [{
            "scale": np.full((1, 1), 1.5, np.float32),
            "R": np.eye(3, dtype=np.float32)[None],
            "exp": (np.arange(6, dtype=np.float32) / 8).reshape(1, 2, 3),
        }],
        "c_eyes_lst": [np.array([[0.25, 0.5]], np.float32)],
        "c_lip_lst": [np.array([[0.125]], np.float32)],
        "scalar": np.float64(0.5),
        "fortran": np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3)),
    }


def template(n_frames: int = 2) -> dict:
    """A dict shaped like LivePortrait's make_motion_template output."""
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "n_frames": n_frames,
        "output_fps": 25,
        "motion": [{
            "scale": rng.random((1, 1)).astype(f32),
            "R": rng.random((1, 3, 3)).astype(f32),
            "exp": rng.random((1, 21, 3)).astype(f32),
            "t": rng.random((1, 3)).astype(f32),
            "kp": rng.random((1, 21, 3)).astype(f32),
            "x_s": rng.random((1, 21, 3)).astype(f32),
        } for _ in range(n_frames)],
        "c_eyes_lst": [rng.random((1, 2)).astype(f32) for _ in range(n_frames)],
        "c_lip_lst": [rng.random((1, 1)).astype(f32) for _ in range(n_frames)],
    }


def assert_same(a: object, b: object) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and np.array_equal(a, b)
        assert a.flags.f_contiguous == b.flags.f_contiguous
    else:
        assert a == b


# ------------------------------------------------------------------------------------------
# legitimate pickles
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", [0, 1, 2, 3, 4, 5])
def test_template_written_by_this_numpy_loads(tmp_path, protocol):
    obj = template()
    path = tmp_path / "d0.pkl"
    with open(path, "wb") as fh:
        pickle.dump(obj, fh, protocol=protocol)
    assert_same(load_restricted_pickle(path), obj)


@pytest.mark.parametrize("protocol", sorted(NUMPY1_PICKLES))
def test_numpy1_pickles_load(tmp_path, protocol):
    data = base64.b64decode("".join(NUMPY1_PICKLES[protocol]))
    assert b"numpy.core." in data and b"numpy._core" not in data
    path = tmp_path / "old.pkl"
    path.write_bytes(data)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no numpy.core deprecation warning either
        got = load_restricted_pickle(path)
    assert_same(got, expected_numpy1_template())


def _numpy1_array_bytes(values: np.ndarray) -> bytes:
    """Hand-assembled protocol-3 opcodes of a float32 1-D array in the numpy 1.x layout."""
    data = values.astype("<f4").tobytes()
    assert len(values) < 256 and len(data) < 256
    return b"".join([
        b"cnumpy.core.multiarray\n_reconstruct\n",  # GLOBAL
        b"cnumpy\nndarray\n",                        # GLOBAL
        b"K\x00\x85",                                # (0,)
        b"C\x01b",                                   # b'b'
        b"\x87R",                                    # TUPLE3, REDUCE -> empty ndarray
        b"(K\x01",                                   # MARK, state version 1
        b"K" + bytes([len(values)]) + b"\x85",       # shape (n,)
        b"cnumpy\ndtype\nX\x02\x00\x00\x00f4\x89\x88\x87R",  # dtype('f4', False, True)
        b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",  # dtype state
        b"\x89",                                     # not Fortran-ordered
        b"C" + bytes([len(data)]) + data,            # raw data
        b"tb",                                       # TUPLE, BUILD
    ])


def _numpy1_scalar_bytes(value: float) -> bytes:
    return b"".join([
        b"cnumpy.core.multiarray\nscalar\n",
        b"cnumpy\ndtype\nX\x02\x00\x00\x00f8\x89\x88\x87R",
        b"(K\x03X\x01\x00\x00\x00<NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb",
        b"C\x08" + np.float64(value).tobytes(),
        b"\x86R",                                    # TUPLE2, REDUCE
    ])


def test_hand_crafted_numpy1_layout_loads():
    values = np.array([0.5, -1.25, 3.0], np.float32)
    data = b"".join([
        b"\x80\x03}(",                                  # PROTO 3, EMPTY_DICT, MARK
        b"X\x03\x00\x00\x00exp", _numpy1_array_bytes(values),
        b"X\x03\x00\x00\x00fps", _numpy1_scalar_bytes(29.97),
        b"X\x05\x00\x00\x00lists](K\x01K\x02e",          # [1, 2]
        b"u.",                                          # SETITEMS, STOP
    ])
    got = loads_restricted_pickle(data)
    assert_same(got["exp"], values)
    assert isinstance(got["fps"], np.float64) and got["fps"] == 29.97
    assert got["lists"] == [1, 2]


def test_plain_containers_and_scalars(tmp_path):
    obj = {"a": (1, 2.5, "x", b"raw", None, True), "s": {1, 2}, "f": frozenset({"k"}), "c": 1 + 2j,
           "np": [np.int64(3), np.float32(1.5), np.bool_(True)], "nested": [[[[]]]],
           "u8": np.arange(5, dtype=np.uint8), "rec": np.zeros(2, dtype=[("x", "<f4"), ("y", "<i2")])}
    for protocol in (2, 3, 5):
        got = loads_restricted_pickle(pickle.dumps(obj, protocol=protocol))
        assert got["s"] == {1, 2} and got["f"] == frozenset({"k"}) and got["c"] == 1 + 2j
        assert got["rec"].dtype == obj["rec"].dtype and np.array_equal(got["u8"], obj["u8"])


def test_lip_array_like_float64_array(tmp_path):
    arr = np.random.default_rng(1).standard_normal((1, 21, 3))
    path = tmp_path / "lip_array.pkl"
    path.write_bytes(pickle.dumps(arr))
    got = load_restricted_pickle(path)
    assert isinstance(got, np.ndarray) and got.dtype == np.float64 and np.array_equal(got, arr)


# ------------------------------------------------------------------------------------------
# malicious pickles
# ------------------------------------------------------------------------------------------


def _touch(path: str) -> None:
    Path(path).write_text("pwned")


class _ReduceToModuleFunction:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (_touch, (self.marker,))


class _ReduceToSelf:
    def __reduce__(self):
        return (_ReduceToSelf, ())


class _OsSystem:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _Eval:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (eval, (f"open({self.marker!r}, 'w').close()",))


class _Popen:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (subprocess.Popen, (["touch", self.marker],))


@pytest.mark.parametrize("payload,refused", [
    (_OsSystem, "system"),
    (_Eval, "builtins.eval"),
    (_Popen, "subprocess.Popen"),
    (_ReduceToModuleFunction, "test_safe_pickle._touch"),
])
@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_malicious_payloads_are_refused_without_running(tmp_path, payload, refused, protocol):
    marker = tmp_path / "pwned"
    # hidden deep inside an otherwise valid template
    obj = template(1)
    obj["motion"][0]["extra"] = [payload(marker)]
    path = tmp_path / "evil.pkl"
    path.write_bytes(pickle.dumps(obj, protocol=protocol))
    with pytest.raises(InputError, match=refused) as err:
        load_restricted_pickle(path)
    assert "refused" in str(err.value) and str(path) in str(err.value)
    assert not marker.exists()


def test_class_with_reduce_to_itself_is_refused():
    with pytest.raises(InputError, match=r"_ReduceToSelf"):
        loads_restricted_pickle(pickle.dumps(_ReduceToSelf()))


@pytest.mark.parametrize("raw,name", [
    (b"cos\nsystem\n(S'touch {m}'\ntR.", "os.system"),
    (b"cposix\nsystem\n(S'touch {m}'\ntR.", "posix.system"),
    (b"c__builtin__\neval\n(S'open(\"{m}\", \"w\")'\ntR.", "builtins.eval"),
    (b"cbuiltins\nexec\n(S'open(\"{m}\", \"w\")'\ntR.", "builtins.exec"),
    (b"cbuiltins\ngetattr\n(cbuiltins\nopen\nS'close'\ntR.", "builtins.getattr"),
    (b"csubprocess\nPopen\n((S'touch'\nS'{m}'\nltR.", "subprocess.Popen"),
    (b"ctorch._utils\n_rebuild_tensor_v2\n(tR.", "torch._utils._rebuild_tensor_v2"),
    (b"ccopy_reg\n_reconstructor\n(tR.", "copyreg._reconstructor"),
    (b"cnumpy\nload\n(S'x.npy'\ntR.", "numpy.load"),
    (b"cnumpy.core.multiarray\nfromfile\n(tR.", "numpy.core.multiarray.fromfile"),
    (b"\x80\x04\x8c\x02os\x8c\x06system\x93\x8c\x08touch {m}\x85R.", "os.system"),
])
def test_hand_crafted_globals_are_refused(tmp_path, raw, name):
    marker = tmp_path / "pwned"
    data = raw.replace(b"{m}", str(marker).encode())
    if data.startswith(b"\x80\x04"):  # fix the length byte of the SHORT_BINUNICODE argument
        arg = f"touch {marker}".encode()
        data = data.replace(b"\x8c\x08" + arg, b"\x8c" + bytes([len(arg)]) + arg)
    with pytest.raises(InputError, match=name.replace(".", r"\.")):
        loads_restricted_pickle(data)
    assert not marker.exists()


def test_codecs_encode_only_latin1():
    data = b"\x80\x02c_codecs\nencode\nX\x05\x00\x00\x00hello\x8c\x04zlib\x86R."
    with pytest.raises(InputError, match="latin-1"):
        loads_restricted_pickle(data)
    ok = b"\x80\x02c_codecs\nencode\nX\x05\x00\x00\x00hello\x8c\x06latin1\x86R."
    assert loads_restricted_pickle(ok) == b"hello"


def test_persistent_ids_are_refused():
    class TorchLike(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", 1) if isinstance(obj, bytearray) else None

    import io

    buf = io.BytesIO()
    TorchLike(buf, protocol=2).dump({"w": bytearray(b"abc")})
    with pytest.raises(InputError, match="persistent ids"):
        loads_restricted_pickle(buf.getvalue())


def test_out_of_band_buffers_are_refused():
    arr = np.arange(4, dtype=np.float32)
    data = pickle.dumps(arr, protocol=5, buffer_callback=lambda b: False)
    with pytest.raises(InputError, match="not a valid pickle"):
        loads_restricted_pickle(data)


def test_object_arrays_are_refused():
    arr = np.array([1, "a", None], dtype=object)
    with pytest.raises(InputError, match="array of Python objects"):
        loads_restricted_pickle(pickle.dumps({"x": arr}))


def test_array_allocated_by_a_crafted_call_is_refused():
    # numpy.ndarray((1_000_000,)) called directly: 8 MB of array data from a 30-byte pickle
    data = b"\x80\x02cnumpy\nndarray\nJ\x40\x42\x0f\x00\x85\x85R."
    with pytest.raises(InputError, match="more array data than it stores"):
        loads_restricted_pickle(data)


def test_deep_nesting_is_refused():
    obj: list = []
    for _ in range(200):
        obj = [obj]
    with pytest.raises(InputError, match="levels deep"):
        loads_restricted_pickle(pickle.dumps(obj))


def test_self_referencing_container_is_fine():
    a: list = [1]
    a.append(a)
    got = loads_restricted_pickle(pickle.dumps(a))
    assert got[1] is got


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------


def test_file_errors(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_restricted_pickle(tmp_path / "missing.pkl")
    with pytest.raises(InputError, match="is a folder"):
        load_restricted_pickle(tmp_path)
    empty = tmp_path / "empty.pkl"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        load_restricted_pickle(empty)
    text = tmp_path / "text.pkl"
    text.write_text("just some text, not a pickle\n")
    with pytest.raises(InputError, match="not a valid pickle"):
        load_restricted_pickle(text)
    junk = tmp_path / "junk.pkl"
    junk.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    with pytest.raises(InputError):
        load_restricted_pickle(junk)
    truncated = tmp_path / "truncated.pkl"
    truncated.write_bytes(pickle.dumps(template())[:-50])
    with pytest.raises(InputError, match="not a valid pickle"):
        load_restricted_pickle(truncated)


def test_size_limit(tmp_path):
    path = tmp_path / "big.pkl"
    path.write_bytes(pickle.dumps(np.zeros(10_000, np.float32)))
    with pytest.raises(InputError, match="MiB"):
        load_restricted_pickle(path, max_bytes=1000)
    assert load_restricted_pickle(path).shape == (10_000,)
