"""The YOLO anime face detector loader (deepghs/anime_face_detection), offline, and its fallback.

The real model cannot be downloaded here. The stand-in has the real signature (input "images"
1x3xHxW float32 RGB in [0, 1] with free H and W as deepghs' dynamic export, output "output0"
1x5xN: cx, cy, w, h in input pixels and the face score, no NMS in the graph; Ultralytics'
imgsz / names / stride metadata) and is saved in the Hugging Face cache layout, then loaded with
`load_face_detector("auto")` and HF_HUB_OFFLINE=1. What it computes:

* one box that depends on the pixels it is given: the bounding box of the input pixels whose
  colour is "skin" (R > 0.9, 0.7 < G < 0.9, B < 0.7, i.e. RGB order and a 0..1 scale), score 0.9
  (0 when there is none), plus a near duplicate of it (shifted 3, 2 px, score 0.8). The test
  frames paint such a rectangle at a known place, so the detector's letterbox in and the mapping
  back out are checked end to end, for any frame shape and for a fixed-size (static) export;
* constant candidates in input pixels (the 640x384 letterbox of a 16:9 frame, 12 px grey bars
  top and bottom): two overlaps of one box at IoU 0.739 (must go) and 0.667 (must stay: NMS IoU
  0.7), scores 0.20 (dropped, threshold 0.25) and 0.30 (kept), a box running over the top-right
  corner (clipped) and the best-scoring box of all lying in the top grey bar only (dropped).

What it is NOT: a face model; it says nothing about the real detector's accuracy.
"""

from __future__ import annotations

from importlib.metadata import version

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from anime_assets.models import integrity, registry
from anime_assets.models.clip import ModelUnavailable
from anime_assets.models.face_detect import (
    ANIME_FACE_YOLO,
    FILE,
    REPO,
    AnimefaceDetector,
    YoloFaceDetector,
    letterbox_geometry,
    load_face_detector,
    nms,
)
from anime_assets_tests.fixtures import clips
from anime_assets_tests.standins import offline_hf_cache, put_in_hf_cache, save_onnx

SKIN = (255, 204, 160)  # R 1.0, G 0.8, B 0.63: passes the stand-in's colour test only as RGB / 255
BACKGROUND = (30, 60, 120)
FACE = (400, 150, 480, 250)  # in a 640x360 frame; x3 in 1920x1080

# constant candidates: cx, cy, w, h (input pixels of the 640x384 letterbox), score
CANDIDATES = (
    (100, 112, 60, 80, 0.70),  # A: input 70..130 x 72..152 -> frame y 60..140
    (109, 112, 60, 80, 0.60),  # A shifted 9 px: IoU 51/69 = 0.739 > 0.7 -> suppressed by A
    (112, 112, 60, 80, 0.50),  # A shifted 12 px: IoU 48/72 = 0.667 -> kept
    (500, 300, 40, 40, 0.20),  # below the 0.25 threshold
    (560, 100, 50, 50, 0.30),  # just above it
    (620, 20, 60, 40, 0.40),  # input 590..650 x 0..40: over the right edge and into the top bar
    (300, 5, 40, 10, 0.95),  # input y 0..10: the top bar only -> empty after clipping
)
# what must come out of a 640x360 frame (scale 1, 12 px bar at the top), best first
EXPECTED_640 = [
    ([400, 150, 480, 250], 0.9),  # the skin rectangle; its 0.8 duplicate is suppressed
    ([70, 60, 130, 140], 0.7),
    ([82, 60, 142, 140], 0.5),
    ([590, 0, 640, 28], 0.4),
    ([535, 63, 585, 113], 0.3),
]


def _const(name: str, values, dtype=TensorProto.INT64):
    arr = np.asarray(values)
    return helper.make_tensor(name, dtype, arr.shape, arr.flatten().tolist())


def build_standin(path, static: bool = False):
    """The stand-in detector (see the module docstring), saved at `path`."""
    f = TensorProto.FLOAT
    dims = [1, 3, 640, 640] if static else ["batch", 3, "height", "width"]
    images = helper.make_tensor_value_info("images", f, dims)
    output = helper.make_tensor_value_info("output0", f, ["batch", 5, "anchors"])
    consts = np.array(CANDIDATES, np.float32).T[None]  # 1 x 5 x K
    inits = [
        _const("c0", [0]), _const("c1", [1]), _const("c2", [2]), _const("c3", [3]),
        _const("ax_w", [1, 2]), _const("ax_h", [1, 3]), _const("ax_2", [2]),
        _const("t_r", 0.9, f), _const("t_ghi", 0.7, f), _const("t_glo", 0.9, f), _const("t_b", 0.7, f),
        _const("one", 1.0, f), _const("half", 0.5, f), _const("face_score", 0.9, f),
        _const("dup_gain", np.array([1, 1, 1, 1, 0.8 / 0.9], np.float32).reshape(1, 5, 1), f),
        _const("dup_shift", np.array([3, 2, 0, 0, 0], np.float32).reshape(1, 5, 1), f),
        _const("candidates", consts, f),
    ]
    n = helper.make_node
    nodes = [
        n("Slice", ["images", "c0", "c1", "c1"], ["R"]),
        n("Slice", ["images", "c1", "c2", "c1"], ["G"]),
        n("Slice", ["images", "c2", "c3", "c1"], ["B"]),
        n("Greater", ["R", "t_r"], ["r_ok"]),
        n("Greater", ["G", "t_ghi"], ["g_hi"]),
        n("Less", ["G", "t_glo"], ["g_lo"]),
        n("Less", ["B", "t_b"], ["b_ok"]),
        n("And", ["r_ok", "g_hi"], ["m1"]),
        n("And", ["g_lo", "b_ok"], ["m2"]),
        n("And", ["m1", "m2"], ["m"]),
        n("Cast", ["m"], ["mf"], to=f),  # 1x1xHxW
        n("ReduceMax", ["mf", "ax_w"], ["col"], keepdims=0),  # 1xW: a skin pixel in the column
        n("ReduceMax", ["mf", "ax_h"], ["row"], keepdims=0),  # 1xH
    ]
    for prof, lo, hi in (("col", "x0", "x1"), ("row", "y0", "y1")):
        nodes += [
            n("ArgMax", [prof], [lo + "_i"], axis=1, keepdims=1),  # first skin column
            n("ArgMax", [prof], [hi + "_i"], axis=1, keepdims=1, select_last_index=1),  # last one
            n("Cast", [lo + "_i"], [lo], to=f),
            n("Cast", [hi + "_i"], [hi + "_l"], to=f),
            n("Add", [hi + "_l", "one"], [hi]),  # exclusive end
        ]
    nodes += [
        n("Add", ["x0", "x1"], ["sx"]), n("Mul", ["sx", "half"], ["cx"]),
        n("Add", ["y0", "y1"], ["sy"]), n("Mul", ["sy", "half"], ["cy"]),
        n("Sub", ["x1", "x0"], ["w"]), n("Sub", ["y1", "y0"], ["h"]),
        n("ReduceMax", ["col"], ["present"], keepdims=1),  # 1x1: 0 without skin
        n("Mul", ["present", "face_score"], ["score"]),
        n("Concat", ["cx", "cy", "w", "h", "score"], ["face2"], axis=1),  # 1x5
        n("Unsqueeze", ["face2", "ax_2"], ["face"]),  # 1x5x1
        n("Mul", ["face", "dup_gain"], ["dup_scaled"]),
        n("Add", ["dup_scaled", "dup_shift"], ["dup"]),
        n("Concat", ["face", "dup", "candidates"], ["output0"], axis=2),
    ]
    graph = helper.make_graph(nodes, "anime_face_yolo_standin", [images], [output], inits)
    save_onnx(graph, path)
    model = onnx.load(str(path))
    for key, value in (("imgsz", "[640, 640]"), ("names", "{0: 'face'}"), ("stride", "32"), ("task", "detect")):
        model.metadata_props.add(key=key, value=value)
    onnx.save(model, str(path))
    return path


def frame(width: int, height: int) -> np.ndarray:
    """A flat background with the skin rectangle at FACE scaled to the frame."""
    rgb = np.empty((height, width, 3), np.uint8)
    rgb[:] = BACKGROUND
    rgb[: height // 8, : width // 8] = 255  # white: not skin (G too high)
    x0, y0, x1, y1 = face_box(width, height)
    rgb[y0:y1, x0:x1] = SKIN
    return rgb


def face_box(width: int, height: int) -> list[int]:
    sx, sy = width / 640, height / 360
    return [round(FACE[0] * sx), round(FACE[1] * sy), round(FACE[2] * sx), round(FACE[3] * sy)]


def cache_model(cache, build):
    """The model at REPO/FILE (a path in a folder) in the hub cache layout."""
    nested = put_in_hf_cache(cache, REPO, FILE, build)
    assert nested.is_file() and nested.parent.name == FILE.split("/")[0]
    return nested


@pytest.fixture
def yolo_file(tmp_path, monkeypatch):
    cache = offline_hf_cache(tmp_path, monkeypatch)
    return cache_model(cache, build_standin)


def test_auto_loads_the_cached_model(yolo_file):
    det = load_face_detector("auto")
    assert isinstance(det, YoloFaceDetector)
    assert det.fallback_reason is None
    assert det.model_id == f"{ANIME_FACE_YOLO}@{integrity.sha256_file(yolo_file)[:12]}"
    assert (det.input_size, det.static_shape, det.labels) == (640, None, ("face",))
    assert load_face_detector("anime-face-yolo").model_id == det.model_id
    spec = registry.REGISTRY[ANIME_FACE_YOLO]
    assert spec.files == (FILE,) and spec.source == "hf-hub:" + REPO


@pytest.mark.parametrize("size", [(640, 360), (1920, 1080)])
def test_letterbox_threshold_and_nms_exactly(yolo_file, size):
    det = load_face_detector("auto")
    k = size[0] // 640
    faces = det.detect(frame(*size))
    expected = [([v * k if v < 640 else size[0] for v in box], score) for box, score in EXPECTED_640]
    assert [(f["bbox"], f["likelihood"]) for f in faces] == expected
    assert all(set(f) == {"bbox", "likelihood"} for f in faces)  # no colours: callers use .get
    assert all(isinstance(v, int) for f in faces for v in f["bbox"])


def test_the_input_is_rgb_in_0_1(yolo_file):
    det = load_face_detector("auto")
    rgb = frame(640, 360)
    assert [f["bbox"] for f in det.detect(rgb) if f["likelihood"] == 0.9] == [list(FACE)]
    # the stand-in sees skin only as RGB / 255: a BGR frame shows none
    assert not [f for f in det.detect(np.ascontiguousarray(rgb[..., ::-1])) if f["likelihood"] == 0.9]
    with pytest.raises(ValueError):
        det.detect(rgb.astype(np.float32))


@pytest.mark.parametrize("static", [False, True], ids=["dynamic", "static640"])
@pytest.mark.parametrize("size", [(640, 360), (1920, 1080), (360, 640), (1000, 1000), (480, 270), (1280, 536)])
def test_the_face_box_comes_back_in_frame_pixels(tmp_path, static, size):
    file = build_standin(tmp_path / ("static" if static else "dynamic") / "model.onnx", static=static)
    det = load_face_detector("anime-face-yolo", path=file)
    assert det.static_shape == ((640, 640) if static else None)
    w, h = size
    box, nw, nh = letterbox_geometry(h, w, 640, det.static_shape)
    pixels, used = det.preprocess(frame(w, h))
    assert used == box and pixels.shape == (1, 3, box.height, box.width) and pixels.dtype == np.float32
    if not static:
        assert box.width % 32 == 0 and box.height % 32 == 0 and max(nw, nh) == 640
    # the grey bars and the frame are where the letterbox says
    assert np.allclose(pixels[0, :, : box.top], 114 / 255) and np.allclose(pixels[0, :, box.top + nh :], 114 / 255)
    assert np.allclose(pixels[0, :, :, : box.left], 114 / 255)
    assert np.allclose(pixels[0, :, box.top + 1, box.left + 1], 1.0, atol=0.02)  # the white corner
    assert np.allclose(pixels[0, :, box.top + nh - 2, box.left + nw - 2], np.array(BACKGROUND) / 255, atol=0.02)
    faces = [f for f in det.detect(frame(w, h)) if f["likelihood"] == 0.9]
    assert len(faces) == 1
    tol = 1 + 1 / min(box.scale_x, box.scale_y)  # a resize moves an edge by up to one input pixel
    assert np.abs(np.array(faces[0]["bbox"]) - face_box(w, h)).max() <= tol, (faces[0]["bbox"], face_box(w, h))


def test_nms_keeps_the_best_of_overlaps():
    boxes = np.array([[0, 0, 10, 10], [1, 0, 11, 10], [0, 0, 10, 10], [20, 20, 30, 30], [4, 0, 14, 10]], np.float32)
    scores = np.array([0.5, 0.9, 0.1, 0.3, 0.6], np.float32)
    # 1 beats 0 (IoU 9/11) and 2; 4 vs 1: IoU 7/13 = 0.54 stays at 0.7, goes at 0.5
    assert nms(boxes, scores, 0.7) == [1, 4, 3]
    assert nms(boxes, scores, 0.5) == [1, 3]


def test_empty_offline_cache_falls_back_to_animeface(tmp_path, monkeypatch):
    offline_hf_cache(tmp_path, monkeypatch)
    det = load_face_detector("auto")
    assert isinstance(det, AnimefaceDetector)
    assert det.model_id == f"animeface-{version('animeface')}" == "animeface-2.0.3"
    reason = det.fallback_reason
    assert reason.startswith(f"{ANIME_FACE_YOLO} unavailable (") and "\n" not in reason
    assert "HF_HUB_OFFLINE" in reason and FILE in reason
    with pytest.raises(ModelUnavailable, match="HF_HUB_OFFLINE"):
        load_face_detector("anime-face-yolo")
    assert load_face_detector("animeface").fallback_reason is None

    rgb, masks = clips.render_frame(clips.sample_spec(), 120, (640, 360))
    faces = det.detect(rgb)
    assert masks and len(faces) == len(masks)
    for mask in masks.values():
        ys, xs = np.nonzero(mask >= 0.5)
        x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
        inside = [f for f in faces if x0 <= (f["bbox"][0] + f["bbox"][2]) / 2 <= x1
                  and y0 <= (f["bbox"][1] + f["bbox"][3]) / 2 <= y0 + 0.4 * (y1 - y0)]
        assert len(inside) == 1, ([x0, y0, x1, y1], faces)
        assert inside[0]["likelihood"] >= 0.5 and "hair" in inside[0]


def test_a_broken_cached_model_falls_back_too(tmp_path, monkeypatch):
    cache = offline_hf_cache(tmp_path, monkeypatch)

    def junk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"not an onnx model")
        return path

    cache_model(cache, junk)
    det = load_face_detector("auto")
    assert isinstance(det, AnimefaceDetector)
    assert "onnxruntime cannot load" in det.fallback_reason and "model.onnx" in det.fallback_reason


def test_bad_paths_and_names(tmp_path, monkeypatch):
    offline_hf_cache(tmp_path, monkeypatch)
    missing = tmp_path / "nowhere" / "face_missing.onnx"
    for name in ("auto", "anime-face-yolo"):
        with pytest.raises(ModelUnavailable, match="face_missing.onnx"):
            load_face_detector(name, path=missing)
    junk = tmp_path / "junk_face.onnx"
    junk.write_bytes(b"\x00" * 64)
    with pytest.raises(ModelUnavailable, match="junk_face.onnx"):
        load_face_detector("auto", path=junk)
    # a real ONNX with the wrong signature (a 1x4 vector in)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    wrong = save_onnx(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g", [x], [y]),
                      tmp_path / "wrong_face.onnx")
    with pytest.raises(ModelUnavailable, match="wrong_face.onnx"):
        load_face_detector("anime-face-yolo", path=wrong)
    with pytest.raises(ValueError, match="unknown face detector"):
        load_face_detector("retinaface")
    with pytest.raises(ValueError):
        load_face_detector("animeface", path=wrong)
