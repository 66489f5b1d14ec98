"""Anime face boxes: a dedicated YOLO face detector when it is available, animeface otherwise.

`load_face_detector("auto")` picks, best first:

* ``anime-face-yolo``: deepghs' YOLOv8 anime face detector (hf-hub ``deepghs/anime_face_detection``,
  file ``face_detect_v1.4_s/model.onnx``, the model behind ``imgutils.detect.detect_faces``), run
  with onnxruntime on the CPU. Taken from `path`, else the Hugging Face cache, else downloaded when
  ``allow_download`` and HF_HUB_OFFLINE is not set. Boxes and a score only (no eyes or colours).
* ``animeface``: the nvxs detector compiled into the `animeface` wheel (`vision.faces`), offline;
  boxes plus eye / mouth / nose / chin positions and skin, hair and eye colours.

When "auto" falls back, the detector's ``fallback_reason`` says why the YOLO model could not be
used (one line, e.g. "anime-face-yolo unavailable (hf-hub:deepghs/anime_face_detection/
face_detect_v1.4_s/model.onnx is not in the Hugging Face cache at ... and HF_HUB_OFFLINE is set)");
it is None when the first choice loaded. An explicit `path` that cannot be loaded is an error,
not a reason to fall back.

Both detectors' ``detect(rgb)`` take an RGB uint8 frame and return dicts best first, in frame
pixels: ``bbox`` [x0, y0, x1, y1] (ints, x1/y1 exclusive, clipped to the frame) and ``likelihood``
(float, 4 decimals); animeface adds ``skin``, ``hair``, ``left_eye``, ``right_eye``, ``mouth``,
``nose`` and ``chin``, which the YOLO dicts do not have (callers read them with ``.get``).

The real model, as published (sources: the model card and file tree of
huggingface.co/deepghs/anime_face_detection; deepghs/imgutils ``imgutils/detect/face.py``,
``imgutils/detect/_yolo.py`` and ``imgutils/generic/yolo.py``; deepghs/yolov8 ``yolov8/onnx.py``):

* Ultralytics YOLOv8, one class ``face`` (labels.json ``["face"]``), trained by deepghs on the
  Roboflow "Anime Face CreateML" data set, exported with ``dynamic=True`` (opset 14): input
  ``images`` float32 1x3xHxW, RGB in [0, 1], H and W free (multiples of the stride 32); output
  ``output0`` 1x5xN, rows cx, cy, w, h (input pixels) and the class score (already a
  probability), one column per anchor; no NMS in the graph. Ultralytics stamps ``imgsz``
  ([640, 640]), ``stride`` and ``names`` ({0: 'face'}) into the ONNX metadata.
* imgutils runs it at 640 px (``max_infer_size=640``) with ``conf_threshold=0.25`` and
  ``iou_threshold=0.7``, the defaults used here. The model card's F1-optimal threshold for
  v1.4_s is 0.307 (F1 0.95, threshold.json).
* Resizing: imgutils stretches the frame (to 640x640, or in older releases to the long side 640
  with each side rounded up to a multiple of 32). Here the frame is letterboxed as Ultralytics
  itself predicts and validates (where the card's F1 comes from): long side scaled to 640, the
  aspect kept, padded with grey 114 to the next multiple of 32 (dynamic input; 640x384 for 16:9)
  or to the model's fixed input size (a static export), then boxes are mapped back.
"""

from __future__ import annotations

import ast
import json
import math
import os
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from anime_assets.models.clip import ModelUnavailable, as_rgb_uint8, resize
from anime_assets.models.segment import best_or_fallback, file_sha12, hub_file, loader_key, onnx_session

ANIME_FACE_YOLO = "anime-face-yolo"
ANIMEFACE = "animeface"
REPO = "deepghs/anime_face_detection"
# v1.4 is the newest face model in the repo and imgutils' default version; of the two v1.4 sizes
# the card gives the "s" model (YOLOv8s, 11.1M params) F1 0.95 against 0.94 for "n" (3.01M), and
# imgutils calls "s" the more accurate one. (The card's F1 of older versions, up to 0.97 for v0_n,
# were measured on earlier, smaller validation sets and do not compare.) About 45 MB.
FILE = "face_detect_v1.4_s/model.onnx"
INPUT_SIZE = 640  # imgutils' max_infer_size and the metadata's imgsz
STRIDE = 32
CONF_THRESHOLD = 0.25  # imgutils' default; the card's F1-optimal threshold is 0.307
IOU_THRESHOLD = 0.7  # imgutils' (and Ultralytics') NMS IoU
MAX_DETECTIONS = 300  # Ultralytics' max_det
PAD_VALUE = 114  # Ultralytics' letterbox grey
NAMES = ("auto", ANIME_FACE_YOLO, ANIMEFACE)
_ALIASES = {
    "auto": "auto",
    ANIME_FACE_YOLO: ANIME_FACE_YOLO,
    "yolo": ANIME_FACE_YOLO,
    "face-yolo": ANIME_FACE_YOLO,
    ANIMEFACE: ANIMEFACE,
    "nvxs": ANIMEFACE,
}


@runtime_checkable
class FaceDetector(Protocol):
    model_id: str
    fallback_reason: str | None

    def detect(self, rgb: np.ndarray) -> list[dict]:
        """(H, W, 3) uint8 RGB -> face dicts (bbox, likelihood, ...), best first."""
        ...


# ---------------------------------------------------------------- YOLO (ONNX)
@dataclass(frozen=True)
class Letterbox:
    """Where the frame sits in the model input: input x = frame x * scale_x + left (y alike)."""

    scale_x: float  # resized / original width (the resize rounds, so x and y may differ slightly)
    scale_y: float
    left: int
    top: int
    width: int  # of the whole input
    height: int


def letterbox_geometry(
    h: int, w: int, size: int, static: tuple[int, int] | None = None, stride: int = STRIDE
) -> tuple[Letterbox, int, int]:
    """The letterbox of an h x w frame and the size (nw, nh) the frame is resized to.

    Dynamic input (`static` None): long side -> `size`, the other side padded up to a multiple of
    `stride`. Static (height, width) input: the frame fitted inside it. Padding is split evenly,
    the odd pixel going to the bottom / right."""
    if static is not None:
        ch, cw = static
        scale = min(ch / h, cw / w)
    else:
        scale = size / max(h, w)
    nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
    if static is None:
        cw, ch = math.ceil(nw / stride) * stride, math.ceil(nh / stride) * stride
    nw, nh = min(nw, cw), min(nh, ch)
    return Letterbox(nw / w, nh / h, (cw - nw) // 2, (ch - nh) // 2, cw, ch), nw, nh


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices of the kept (N, 4) x0 y0 x1 y1 boxes, best first;
    a box goes when its IoU with a kept, better one is above `iou_threshold`."""
    order = np.argsort(-scores, kind="stable")
    areas = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order.size:
        best, rest = int(order[0]), order[1:]
        keep.append(best)
        iw = np.clip(np.minimum(boxes[best, 2], boxes[rest, 2]) - np.maximum(boxes[best, 0], boxes[rest, 0]), 0, None)
        ih = np.clip(np.minimum(boxes[best, 3], boxes[rest, 3]) - np.maximum(boxes[best, 1], boxes[rest, 1]), 0, None)
        inter = iw * ih
        union = areas[best] + areas[rest] - inter
        iou = np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)
        order = rest[iou <= iou_threshold]
    return keep


@dataclass
class YoloFaceDetector:
    """A YOLOv8 face detector ONNX (deepghs/anime_face_detection layout): letterbox, run, keep
    scores above `conf_threshold`, NMS at `iou_threshold`, map boxes back to the frame."""

    session: object
    model_id: str
    input_name: str
    input_size: int = INPUT_SIZE  # long side of the model input
    static_shape: tuple[int, int] | None = None  # (H, W) of a fixed-size export, else None
    labels: tuple[str, ...] = ("face",)
    conf_threshold: float = CONF_THRESHOLD
    iou_threshold: float = IOU_THRESHOLD
    max_detections: int = MAX_DETECTIONS
    fallback_reason: str | None = None

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, Letterbox]:
        """RGB uint8 frame -> (1x3xHxW float32 RGB in [0, 1], its letterbox)."""
        rgb = as_rgb_uint8(rgb)
        h, w = rgb.shape[:2]
        box, nw, nh = letterbox_geometry(h, w, self.input_size, self.static_shape)
        canvas = np.full((box.height, box.width, 3), PAD_VALUE, np.uint8)
        canvas[box.top : box.top + nh, box.left : box.left + nw] = resize(rgb, nw, nh)
        pixels = canvas.transpose(2, 0, 1)[None].astype(np.float32) * np.float32(1.0 / 255.0)
        return np.ascontiguousarray(pixels), box

    def _candidates(self, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Raw output -> ((N, 4) cx cy w h, (N,) best class score)."""
        out = np.asarray(out, np.float32)
        while out.ndim > 2 and out.shape[0] == 1:
            out = out[0]
        rows = 4 + len(self.labels)
        if out.ndim != 2 or rows not in out.shape:
            raise ValueError(f"{self.model_id}: output of shape {out.shape}, expected {rows} x N (YOLOv8 layout)")
        if out.shape[0] != rows:  # an export transposed to N x (4 + classes)
            out = out.T
        return out[:4].T, out[4:].max(axis=0)

    def detect(self, rgb: np.ndarray) -> list[dict]:
        pixels, box = self.preprocess(rgb)
        h, w = np.asarray(rgb).shape[:2]
        out = self.session.run(None, {self.input_name: pixels})[0]
        xywh, scores = self._candidates(out)
        sel = scores > self.conf_threshold
        xywh, scores = xywh[sel], scores[sel]
        if not len(scores):
            return []
        half = xywh[:, 2:4] / 2
        xyxy = np.concatenate([xywh[:, :2] - half, xywh[:, :2] + half], axis=1)
        keep = nms(xyxy, scores, self.iou_threshold)[: self.max_detections]
        # input pixels -> frame pixels, clipped to the frame (as Ultralytics' scale_boxes)
        offset = np.array([box.left, box.top, box.left, box.top], np.float64)
        gain = np.array([box.scale_x, box.scale_y, box.scale_x, box.scale_y], np.float64)
        frame = (xyxy[keep].astype(np.float64) - offset) / gain
        frame = np.clip(np.round(frame), 0, [w, h, w, h]).astype(int)
        faces = []
        for (x0, y0, x1, y1), score in zip(frame.tolist(), scores[keep].tolist()):
            if x1 > x0 and y1 > y0:  # a box that lay in the padding only
                faces.append({"bbox": [x0, y0, x1, y1], "likelihood": round(float(score), 4)})
        return faces


def _metadata(session) -> dict[str, str]:
    try:
        return dict(session.get_modelmeta().custom_metadata_map or {})
    except Exception:  # a session without metadata support
        return {}


def _labels(meta: dict[str, str]) -> tuple[str, ...]:
    """Class names from Ultralytics' metadata ("{0: 'face'}"), else ("face",)."""
    try:
        names = ast.literal_eval(meta["names"])
        return tuple(str(names[i]) for i in range(len(names))) or ("face",)
    except (KeyError, ValueError, SyntaxError, TypeError):
        return ("face",)


def _imgsz(meta: dict[str, str]) -> int:
    try:
        size = json.loads(meta["imgsz"])
        return int(max(size) if isinstance(size, list) else size)
    except (KeyError, ValueError, TypeError):
        return INPUT_SIZE


def load_yolo_face(path: str | os.PathLike | None = None, *, allow_download: bool = True) -> YoloFaceDetector:
    """The YOLO anime face detector from `path`, or the HF cache / hub; ModelUnavailable otherwise."""
    file = Path(path).expanduser() if path is not None else hub_file(REPO, FILE, allow_download=allow_download)
    session = onnx_session(file, ANIME_FACE_YOLO)
    inputs, outputs = session.get_inputs(), session.get_outputs()
    shape = inputs[0].shape if len(inputs) == 1 else []
    if len(shape) != 4 or (isinstance(shape[1], int) and shape[1] != 3):
        got = [(i.name, i.shape) for i in inputs]
        raise ModelUnavailable(f"{ANIME_FACE_YOLO}: {file} has inputs {got}, expected one 1x3xHxW image")
    if not outputs or len(outputs[0].shape) not in (2, 3):
        got = [(o.name, o.shape) for o in outputs]
        raise ModelUnavailable(f"{ANIME_FACE_YOLO}: {file} has outputs {got}, expected 1 x (4 + classes) x N")
    meta = _metadata(session)
    _, _, ih, iw = inputs[0].shape
    static = (ih, iw) if isinstance(ih, int) and isinstance(iw, int) and ih > 0 and iw > 0 else None
    size = max(static) if static else _imgsz(meta)
    return YoloFaceDetector(
        session=session,
        model_id=f"{ANIME_FACE_YOLO}@{file_sha12(file)}",
        input_name=inputs[0].name,
        input_size=size,
        static_shape=static,
        labels=_labels(meta),
    )


# ---------------------------------------------------------------- animeface (offline)
def animeface_version() -> str:
    try:
        return importlib_metadata.version("animeface")
    except importlib_metadata.PackageNotFoundError as exc:
        raise ModelUnavailable("animeface is not installed; run scripts/setup.sh") from exc


@dataclass
class AnimefaceDetector:
    """`vision.faces.detect_faces` (the animeface package) behind the detector interface."""

    model_id: str
    min_likelihood: float = 0.5
    fallback_reason: str | None = None
    input_size: int | None = None  # animeface has no fixed input; frames are shrunk to MAX_SIDE

    def detect(self, rgb: np.ndarray) -> list[dict]:
        from anime_assets.vision import faces

        return faces.detect_faces(as_rgb_uint8(rgb), min_likelihood=self.min_likelihood)


def load_animeface() -> AnimefaceDetector:
    version = animeface_version()
    from anime_assets.vision import faces

    try:
        faces._check_pillow()
    except faces.FaceDetectorUnavailable as exc:
        raise ModelUnavailable(f"{ANIMEFACE}: {exc}") from exc
    return AnimefaceDetector(model_id=f"{ANIMEFACE}-{version}", input_size=faces.MAX_SIDE)


# ---------------------------------------------------------------- choosing
def load_face_detector(
    name: str = "auto", *, allow_download: bool = True, path: str | os.PathLike | None = None
) -> FaceDetector:
    """A face detector by name: "auto" | "anime-face-yolo" | "animeface".

    "auto": anime-face-yolo (`path`, else the HF cache, else a download when allowed and online)
    -> animeface (its ``fallback_reason`` says why) -> ModelUnavailable. An explicit `path` that
    cannot be loaded raises ModelUnavailable instead of falling back. Unknown names raise
    ValueError; so does a `path` with "animeface" (it has no model file).
    """
    key = loader_key(name, _ALIASES, NAMES, "face detector")
    if key == ANIMEFACE:
        if path is not None:
            raise ValueError(f"{ANIMEFACE} takes no model file (got path={path!s})")
        return load_animeface()
    if key == ANIME_FACE_YOLO or path is not None:
        return load_yolo_face(path, allow_download=allow_download)
    return best_or_fallback("face detector", ANIME_FACE_YOLO, lambda: load_yolo_face(None, allow_download=allow_download),
                            ANIMEFACE, load_animeface)
