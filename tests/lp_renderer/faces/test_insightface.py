"""lp_renderer.faces.insightface: the backend through the insightface package, end to end on tiny ONNX models made
here (a detector with SCRFD's nine outputs, a 106-point landmark model that reads the pixel at its crop's centre),
the choice of the model folder, and the errors."""

from __future__ import annotations

import numpy as np
import pytest

from lp_renderer.errors import InputError
from lp_renderer.faces import DlibBackend, InsightFaceBackend, get_face_backend
from lp_renderer.faces import insightface as ins

onnx = pytest.importorskip("onnx", reason="optional: onnx comes with the insightface extra")
pytest.importorskip("insightface", reason="optional: the insightface extra is not installed")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

SIZE = 512
STRIDES = (8, 16, 32)


def _scrfd_outputs(entries, size=SIZE, strides=STRIDES):
    """SCRFD's outputs ``[scores per stride..., box distances..., keypoints...]`` holding ``entries``:
    (stride, row, col, anchor, score, (l, t, r, b) in input pixels, kps 5x2 input pixels)."""
    outs_s, outs_b, outs_k = [], [], []
    for stride in strides:
        n = (size // stride) ** 2 * 2
        outs_s.append(np.zeros((n, 1), np.float32))
        outs_b.append(np.zeros((n, 4), np.float32))
        outs_k.append(np.zeros((n, 10), np.float32))
    for stride, row, col, anchor, score, ltrb, kps in entries:
        i = strides.index(stride)
        k = (row * (size // stride) + col) * 2 + anchor
        cx, cy = col * stride, row * stride
        outs_s[i][k, 0] = score
        outs_b[i][k] = np.asarray(ltrb, np.float32) / stride
        outs_k[i][k] = ((np.asarray(kps, np.float32) - (cx, cy)) / stride).reshape(-1)
    return outs_s + outs_b + outs_k


def _save(graph, path):
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def write_detector(path, outputs):
    """An "SCRFD" whose nine outputs are constants (the input is only passed through an unused Identity)."""
    nodes = [helper.make_node("Identity", ["input.1"], ["unused"], name="passthrough")]
    outs = []
    for i, arr in enumerate(outputs):
        name = f"out{i}"
        nodes.append(helper.make_node("Constant", [], [name], value=numpy_helper.from_array(arr, name + "_v")))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(arr.shape)))
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "h", "w"])
    _save(helper.make_graph(nodes, "det", [inp], outs), path)


def write_landmarks(path, template):
    """A "2d106det": 212 outputs = ``template`` + 0.001 x the crop's centre pixel (3 channels) in outputs 0..2."""
    inits = [numpy_helper.from_array(np.array(v, np.int64), n) for n, v in
             (("starts", [96, 96]), ("ends", [97, 97]), ("axes", [2, 3]), ("shape", [1, 3]))]
    inits += [numpy_helper.from_array(np.array(0.001, np.float32), "k"),
              numpy_helper.from_array(np.zeros((1, 209), np.float32), "zeros"),
              numpy_helper.from_array(template.reshape(1, 212).astype(np.float32), "template")]
    nodes = [helper.make_node("Identity", ["data"], ["x"], name="bn_data"),  # insightface: raw 0..255 input
             helper.make_node("Slice", ["x", "starts", "ends", "axes"], ["centre"], name="slice"),
             helper.make_node("Reshape", ["centre", "shape"], ["pixel"], name="reshape"),
             helper.make_node("Mul", ["pixel", "k"], ["small"], name="scale"),
             helper.make_node("Concat", ["small", "zeros"], ["offsets"], axis=1, name="concat"),
             helper.make_node("Add", ["offsets", "template"], ["fc1"], name="add")]
    inp = helper.make_tensor_value_info("data", TensorProto.FLOAT, [1, 3, 192, 192])
    out = helper.make_tensor_value_info("fc1", TensorProto.FLOAT, [1, 212])
    _save(helper.make_graph(nodes, "lmk", [inp], [out], initializer=inits), path)


def test_end_to_end_through_the_insightface_package(tmp_path):
    h, w = 300, 600
    yy, xx = np.mgrid[:h, :w]
    img = np.dstack([np.full((h, w), 200), (xx * 0.4).astype(int), (yy * 0.8).astype(int)]).astype(np.uint8)
    scale = 256 / 300  # letterbox: 600x300 -> 512x256
    box = np.array([160, 60, 280, 210], np.float64)  # the face in the original image
    bi = box * scale
    col, row = 14, 8  # stride-16 anchor at (224, 128), inside the box
    ltrb = (224 - bi[0], 128 - bi[1], bi[2] - 224, bi[3] - 128)
    write_detector(tmp_path / "det_10g.onnx", _scrfd_outputs([(16, row, col, 0, 0.88, ltrb, np.full((5, 2), 200.0))]))
    template = np.random.default_rng(3).uniform(-0.6, 0.6, (106, 2))
    write_landmarks(tmp_path / "2d106det.onnx", template)

    backend = get_face_backend("insightface", tmp_path)
    assert isinstance(backend, InsightFaceBackend) and backend.model_dir == tmp_path
    assert isinstance(get_face_backend("auto", tmp_path), InsightFaceBackend)
    faces = backend.detect(img)
    assert len(faces) == 1
    f = faces[0]
    assert f.kind == "insightface106" and f.score == pytest.approx(0.88)
    np.testing.assert_allclose(f.box, box, atol=1e-3)
    # landmarks: the template in [-1, 1] of the 192 crop of 1.5 x max(w, h) around the box centre; the first point
    # and x of the second moved by the crop's centre pixel as the model saw it: RGB (R = 200 here), raw 0..255
    cx, cy = (box[:2] + box[2:]) / 2
    side = 1.5 * max(box[2] - box[0], box[3] - box[1])
    seen = template.copy()
    seen[0] += 0.001 * np.array([200.0, img[int(cy), int(cx), 1]])
    seen[1, 0] += 0.001 * img[int(cy), int(cx), 2]
    np.testing.assert_allclose(f.landmarks, (cx, cy) + seen * side / 2, atol=0.05)


def test_model_folder_choice(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    usual = tmp_path / "home" / ".insightface" / "models" / "buffalo_l"
    weights = tmp_path / "w"
    in_weights = weights / "insightface" / "models" / "buffalo_l"
    assert ins.usual_model_dir() == usual
    assert ins.resolve_model_dir(tmp_path / "arg", weights) == tmp_path / "arg"  # explicit wins
    assert ins.resolve_model_dir(None, weights) == in_weights  # nothing anywhere: LivePortrait's place, for messages
    usual.mkdir(parents=True)
    for name in ins.MODEL_FILES:
        (usual / name).write_bytes(b"x")
    assert ins.resolve_model_dir(None, weights) == usual  # insightface's usual folder has them
    assert ins.resolve_model_dir() == usual
    in_weights.mkdir(parents=True)
    for name in ins.MODEL_FILES:
        (in_weights / name).write_bytes(b"x")
    assert ins.resolve_model_dir(None, weights) == in_weights  # the weights folder comes first


def test_errors_name_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert isinstance(get_face_backend("auto"), DlibBackend)
    assert isinstance(get_face_backend("auto", tmp_path), DlibBackend)  # a folder without models
    with pytest.raises(InputError, match="Unknown face backend"):
        get_face_backend("mediapipe")
    with pytest.raises(InputError) as e:
        InsightFaceBackend(tmp_path)
    assert "det_10g.onnx" in str(e.value) and "2d106det.onnx" in str(e.value) and str(tmp_path) in str(e.value)
    (tmp_path / "det_10g.onnx").write_bytes(b"x")
    with pytest.raises(InputError) as e:
        get_face_backend("insightface", tmp_path)
    assert "2d106det.onnx" in str(e.value) and "det_10g.onnx" not in str(e.value)
    with pytest.raises(InputError) as e:
        InsightFaceBackend(weights_dir=tmp_path / "w")
    assert str(tmp_path / "w" / "insightface" / "models" / "buffalo_l") in str(e.value)
    (tmp_path / "2d106det.onnx").write_bytes(b"not an onnx model")
    with pytest.raises(InputError, match="Cannot load the insightface models"):
        InsightFaceBackend(tmp_path)
