"""Pose keypoints of one character instance, behind one small interface.

`load_pose_estimator("auto")` picks, best first:

* ``dwpose``: DWPose whole-body (hf-hub ``yzd-v/DWPose``, file ``dw-ll_ucoco_384.onnx``,
  Apache-2.0), RTMPose-l distilled, 133 COCO-WholeBody keypoints, run with onnxruntime on the
  CPU. Taken from `path`, else the Hugging Face cache, else downloaded when ``allow_download``
  and HF_HUB_OFFLINE is not set. Top-down as its authors run it: the instance box padded by
  1.25 and grown to the input aspect (288 x 384), RGB normalised with the ImageNet mean/std,
  SimCC outputs decoded by arg-max (split ratio read from the output lengths).
* ``mediapipe``: MediaPipe BlazePose full landmarks (``pose_landmark_full.tflite``, Apache-2.0,
  taken out of the mediapipe 0.10.21 wheel by scripts/setup.sh), run with ai-edge-litert; works
  offline. 33 landmarks.
* otherwise `ModelUnavailable(reason)`.

Both run on a crop of the instance box the caller gives: we already know where each character
is from the layer masks, so MediaPipe's person detector (``pose_detection.tflite``, trained on
photos of real people) is not run; it would only look again for what the masks already give.
The landmark model is fed what its own graph feeds it: a square ROI around the whole person
(here: the box's long side x 1.25, a box cut by the bottom of the frame first extended down by
its height), the outside of the frame black, floats in [0, 1]. DWPose's accuracy on anime is
not measured here (its weights could not be fetched on the offline development machine; the
tests run a stand-in with its exact signature).

When "auto" falls back, ``fallback_reason`` says why DWPose was not used (one line, e.g.
"dwpose-ll-ucoco-384 unavailable (hf-hub:yzd-v/DWPose/dw-ll_ucoco_384.onnx is not in the
Hugging Face cache at ... and HF_HUB_OFFLINE is set)"); it is None when DWPose loaded. Sessions
and interpreters are cached per process, keyed by the model file (path, size, mtime).

No Dagster here. Keypoints come back as (K, 3) float32 (x, y, score) in image pixels, scores in
[0, 1]; `anime_assets.vision.pose.body17(kp, est.keypoint_names)` gives the COCO 17 body points.
"""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from anime_assets.models import registry
from anime_assets.models.clip import ModelUnavailable, as_rgb_uint8, usable_cores
from anime_assets.models.segment import (
    _file_key, best_or_fallback, file_sha12, hub_file, loader_key, one_line, onnx_session,
)
from anime_assets.vision.pose import (
    BLAZEPOSE33,
    COCO17,
    COCO_WHOLEBODY133,
    crop_to_input,
    person_crop,
    simcc_decode,
    to_image,
)

DWPOSE = "dwpose-ll-ucoco-384"
DWPOSE_REPO = "yzd-v/DWPose"
DWPOSE_FILE = "dw-ll_ucoco_384.onnx"
DWPOSE_MEAN = (123.675, 116.28, 103.53)
DWPOSE_STD = (58.395, 57.12, 57.375)
MEDIAPIPE_POSE = "mediapipe-pose-landmark-full"
MEDIAPIPE_VERSION = registry.MEDIAPIPE_PIN.partition("==")[2]
CROP_PAD = 1.25  # both models: the box grown by 25% (RTMPose's bbox padding; MediaPipe's ROI scale)
# BlazePose reads its square ROI as the whole body: a character cut by the bottom of the frame
# (medium shot, close-up) is squashed into it, hips and knees hallucinated inside the picture.
# Such a box is first extended down by its own height (the body goes on below the frame, as in
# MediaPipe's own tracking ROIs). On the composed sprite frames of the tests this halved the
# keypoint error of medium shots and close-ups (mean 0.07-0.15 -> 0.03-0.07 of the sprite height).
MEDIAPIPE_EXTEND_CUT = 1.0

POSE_NAMES = ("auto", "dwpose", "mediapipe", "none")
_ALIASES = {
    "auto": "auto",
    "dwpose": "dwpose",
    DWPOSE: "dwpose",
    "rtmpose": "dwpose",
    "mediapipe": "mediapipe",
    "mediapipe-pose": "mediapipe",
    MEDIAPIPE_POSE: "mediapipe",
    "blazepose": "mediapipe",
    "none": "none",
    "off": "none",
}


@runtime_checkable
class PoseEstimator(Protocol):
    model_id: str
    skeleton: str
    keypoint_names: tuple[str, ...]
    fallback_reason: str | None

    def predict(self, rgb: np.ndarray, box) -> np.ndarray:
        """(H, W, 3) uint8 RGB + one instance box (x0, y0, x1, y1) in that image ->
        (K, 3) float32 (x, y, score) in image pixels, score in [0, 1]."""
        ...


# ---------------------------------------------------------------- DWPose (ONNX, SimCC)
@dataclass
class DWPose:
    """Top-down RTMPose-style estimator on one instance box; outputs decoded by SimCC arg-max."""

    session: object
    model_id: str
    input_name: str
    x_name: str
    y_name: str
    width: int = 288
    height: int = 384
    skeleton: str = "coco-wholebody-133"
    keypoint_names: tuple[str, ...] = COCO_WHOLEBODY133
    fallback_reason: str | None = None

    def predict(self, rgb: np.ndarray, box) -> np.ndarray:
        rgb = as_rgb_uint8(rgb)
        window = person_crop(box, rgb.shape, self.width / self.height, CROP_PAD)
        patch, affine = crop_to_input(rgb, window, self.width, self.height)
        x = (patch.astype(np.float32) - np.float32(DWPOSE_MEAN)) / np.float32(DWPOSE_STD)
        pixels = np.ascontiguousarray(x.transpose(2, 0, 1)[None])
        sx, sy = self.session.run([self.x_name, self.y_name], {self.input_name: pixels})
        sx, sy = np.asarray(sx, np.float32), np.asarray(sy, np.float32)
        ratio = sx.shape[-1] / self.width
        if abs(sy.shape[-1] / self.height - ratio) > 1e-6:
            raise RuntimeError(f"{self.model_id}: SimCC outputs {sx.shape} / {sy.shape} have different split ratios")
        xy, score = simcc_decode(sx, sy, ratio)
        out = np.empty((len(score), 3), np.float32)
        out[:, :2] = to_image(xy, affine)
        out[:, 2] = np.clip(score, 0.0, 1.0)  # SimCC maxima can pass 1 a little; <= 0 is "not found"
        return out


def _simcc_outputs(outputs, width: int, height: int) -> tuple[str, str, int]:
    """(x name, y name, K) of the two SimCC outputs: by name (simcc_x / simcc_y), else the
    first two outputs in order (as rtmlib reads them)."""
    by_name = {o.name: o for o in outputs}
    if "simcc_x" in by_name and "simcc_y" in by_name:
        ox, oy = by_name["simcc_x"], by_name["simcc_y"]
    elif len(outputs) >= 2:
        ox, oy = outputs[0], outputs[1]
    else:
        raise ValueError(f"expected two SimCC outputs, got {[(o.name, o.shape) for o in outputs]}")
    if len(ox.shape) != 3 or len(oy.shape) != 3:
        raise ValueError(f"SimCC outputs must be (1, K, bins), got {ox.shape} and {oy.shape}")
    k = ox.shape[1] if isinstance(ox.shape[1], int) else oy.shape[1]
    bx, by = ox.shape[2], oy.shape[2]
    if isinstance(bx, int) and isinstance(by, int) and abs(bx / width - by / height) > 1e-6:
        raise ValueError(f"SimCC bins {bx} / {by} do not fit the input {width}x{height}")
    return ox.name, oy.name, k if isinstance(k, int) else -1


def _skeleton_for(k: int) -> tuple[str, tuple[str, ...]]:
    if k == len(COCO_WHOLEBODY133):
        return "coco-wholebody-133", COCO_WHOLEBODY133
    if k == len(COCO17):
        return "coco-17", COCO17
    raise ValueError(f"{k} keypoints: neither COCO-WholeBody 133 nor COCO 17")


def load_dwpose(path: str | os.PathLike | None = None, *, allow_download: bool = True) -> DWPose:
    """DWPose from `path`, or the HF cache / hub; ModelUnavailable otherwise."""
    if path is not None:
        file = Path(path).expanduser()
    else:
        file = hub_file(DWPOSE_REPO, DWPOSE_FILE, allow_download=allow_download)
    session = onnx_session(file, DWPOSE)
    inputs = session.get_inputs()
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        got = [(i.name, i.shape) for i in inputs]
        raise ModelUnavailable(f"{DWPOSE}: {file} has inputs {got}, expected one 1x3xHxW image")
    h, w = inputs[0].shape[2], inputs[0].shape[3]
    if not (isinstance(h, int) and isinstance(w, int) and h > 0 and w > 0):
        raise ModelUnavailable(f"{DWPOSE}: {file} has a dynamic input size {inputs[0].shape}; expected e.g. 1x3x384x288")
    try:
        x_name, y_name, k = _simcc_outputs(session.get_outputs(), w, h)
        skeleton, names = _skeleton_for(k)
    except ValueError as exc:
        raise ModelUnavailable(f"{DWPOSE}: {file}: {exc}") from exc
    return DWPose(session, f"{DWPOSE}@{file_sha12(file)}", inputs[0].name, x_name, y_name, w, h, skeleton, names)


# ---------------------------------------------------------------- MediaPipe BlazePose (tflite)
@dataclass
class _LandmarkTflite:
    """The pose landmark interpreter (not thread-safe, hence the lock) and the outputs we read."""

    interpreter: object
    input_index: int
    landmarks_index: int
    n_values: int  # landmarks x 5
    flag_index: int | None
    height: int
    width: int
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, x: np.ndarray) -> tuple[np.ndarray, float]:
        """(1, H, W, 3) float32 in [0, 1] -> ((N, 5) raw landmarks, pose presence in [0, 1] or nan)."""
        with self.lock:
            self.interpreter.set_tensor(self.input_index, x)
            self.interpreter.invoke()
            raw = np.array(self.interpreter.get_tensor(self.landmarks_index), np.float32).reshape(-1, 5)
            flag = float("nan")
            if self.flag_index is not None:
                flag = float(np.array(self.interpreter.get_tensor(self.flag_index)).ravel()[0])
        return raw, flag


@lru_cache(maxsize=4)
def _landmark_tflite_cached(path: str, size: int, mtime_ns: int, threads: int) -> _LandmarkTflite:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=path, num_threads=threads)
    interpreter.allocate_tensors()
    inputs = interpreter.get_input_details()
    if len(inputs) != 1 or len(inputs[0]["shape"]) != 4 or int(inputs[0]["shape"][3]) != 3:
        raise ValueError(f"expected one 1xHxWx3 input, got {[tuple(i['shape']) for i in inputs]}")
    _, h, w, _ = (int(d) for d in inputs[0]["shape"])
    landmarks = flag = None
    for out in interpreter.get_output_details():
        shape = tuple(int(d) for d in out["shape"])
        # BlazePose: Identity (1, 195) = 39 x (x, y, z, visibility, presence) - 33 body + 6
        # auxiliary ROI points; Identity_1 (1, 1) the pose flag; the rest are the segmentation,
        # a heatmap and world landmarks (1, 117), which are told apart by size.
        if len(shape) == 2 and shape[0] == 1 and shape[1] % 5 == 0 and shape[1] >= 33 * 5:
            if landmarks is None or shape[1] == 195:
                landmarks = (out["index"], shape[1])
        elif shape in ((1, 1), (1,)):
            flag = out["index"]
    if landmarks is None:
        got = [tuple(int(d) for d in o["shape"]) for o in interpreter.get_output_details()]
        raise ValueError(f"no (1, 33+ x 5) landmark output among {got}")
    return _LandmarkTflite(interpreter, int(inputs[0]["index"]), landmarks[0], landmarks[1], flag, h, w)


def _landmark_tflite(path: Path) -> _LandmarkTflite:
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError as exc:
        raise ModelUnavailable(f"ai-edge-litert is not installed ({exc}); run scripts/setup.sh") from exc
    if not path.is_file():
        raise ModelUnavailable(f"{MEDIAPIPE_POSE}: {path} does not exist")
    try:
        return _landmark_tflite_cached(*_file_key(path), usable_cores())
    except Exception as exc:
        raise ModelUnavailable(f"{MEDIAPIPE_POSE}: cannot load {path}: {type(exc).__name__}: {one_line(exc)}") from exc


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.clip(x, -50.0, 50.0)))).astype(np.float32)


@dataclass
class MediapipePose:
    """BlazePose full landmarks on a square crop of the instance box (no person detector).

    The crop is the box's long side x 1.25, after extending a box cut by the bottom of the frame
    down by its own height (MEDIAPIPE_EXTEND_CUT). Not done, as not needed for the upright
    characters measured: MediaPipe's rotation of the ROI to the body axis, and its second pass
    on the ROI that the first pass's auxiliary points give (tried: ~0.007 of the sprite height
    better on average, worse on some, twice the time).

    Score = sigmoid(visibility): the model's visibility and presence outputs are logits (they
    range over about -4..13 on the fixture frames; the graph applies a sigmoid to both). The pose
    flag (probability that a person is in the crop) is kept in ``last_presence``, not folded in:
    on anime medium shots it is often near 0 while the head and shoulder points are right.
    """

    model: _LandmarkTflite
    model_id: str
    skeleton: str = "blazepose-33"
    keypoint_names: tuple[str, ...] = BLAZEPOSE33
    fallback_reason: str | None = None
    last_presence: float = float("nan")

    def predict(self, rgb: np.ndarray, box) -> np.ndarray:
        rgb = as_rgb_uint8(rgb)
        m = self.model
        window = person_crop(box, rgb.shape, m.width / m.height, CROP_PAD, extend_cut=MEDIAPIPE_EXTEND_CUT)
        patch, affine = crop_to_input(rgb, window, m.width, m.height)
        x = (patch.astype(np.float32) * np.float32(1.0 / 255.0))[None]
        raw, self.last_presence = m(x)
        raw = raw[: len(BLAZEPOSE33)]
        out = np.empty((len(raw), 3), np.float32)
        out[:, :2] = to_image(raw[:, :2], affine)
        out[:, 2] = _sigmoid(raw[:, 3])
        return out


def load_mediapipe_pose(path: str | os.PathLike | None = None) -> MediapipePose:
    """pose_landmark_full.tflite as extracted by scripts/setup.sh, or an explicit .tflite `path`."""
    if path is not None:
        file = Path(path).expanduser()
        model = _landmark_tflite(file)
        model_id = f"{MEDIAPIPE_POSE}@{file_sha12(file)}"
    else:
        ok, why = registry.is_available(MEDIAPIPE_POSE)
        if not ok:
            raise ModelUnavailable(why)
        model = _landmark_tflite(registry.local_files(MEDIAPIPE_POSE)[0])
        model_id = f"{MEDIAPIPE_POSE}-{MEDIAPIPE_VERSION}"
    if model.n_values < 5 * len(BLAZEPOSE33):
        raise ModelUnavailable(f"{MEDIAPIPE_POSE}: {model.n_values // 5} landmarks, expected 33 or more")
    return MediapipePose(model, model_id)


# ---------------------------------------------------------------- choosing
def load_pose_estimator(
    name: str = "auto", *, allow_download: bool = True, path: str | os.PathLike | None = None
) -> PoseEstimator:
    """A pose estimator by name: "auto" | "dwpose" | "mediapipe" | "none".

    "auto": DWPose (`path`, else the HF cache, else a download when allowed and online) ->
    MediaPipe BlazePose (its ``fallback_reason`` says why) -> ModelUnavailable. An explicit `path`
    that cannot be loaded is an error, not a reason to fall back ("auto" and "dwpose" read it as
    DWPose ONNX, "mediapipe" as the landmark tflite). "none" raises ModelUnavailable (pose turned
    off). Unknown names raise ValueError.
    """
    key = loader_key(name, _ALIASES, POSE_NAMES, "pose estimator",
                     "pose keypoints are turned off (pose estimator 'none')")
    if key == "dwpose":
        return load_dwpose(path, allow_download=allow_download)
    if key == "mediapipe":
        return load_mediapipe_pose(path)
    if path is not None:
        return load_dwpose(path, allow_download=allow_download)
    return best_or_fallback("pose model", DWPOSE, lambda: load_dwpose(None, allow_download=allow_download),
                            MEDIAPIPE_POSE, load_mediapipe_pose)
