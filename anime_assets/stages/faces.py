"""Faces of one shot's kept frames -> LanceDB `faces` rows (one per kept frame, replaced per shot).

Faces come from the YOLO anime face detector when it is here, else animeface (compiled into its
package). Each face gets an expression label of the fixed set with scores, judged on its face crop by an
anime tagger's expression tags, or by CLIP zero-shot; with neither model here the label is null
with the reason (a guess passed off as a label would be a defect).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from anime_assets import PIPELINE_VERSION
from anime_assets.stages import clean_frames as cf
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.vision.expression import expression_from_tags, face_crop


@dataclass
class ExpressionJudge:
    """Face crops -> [(label or None, {label: score}, reason or None)], from one model."""

    model_id: str
    judge: Callable[[list[np.ndarray]], list[tuple[str | None, dict[str, float], str | None]]]


def tagger_judge(tagger) -> ExpressionJudge:
    def judge(crops):
        probs = tagger.predict(crops) if crops else np.zeros((0, len(tagger.names)), np.float32)
        return [expression_from_tags(dict(zip(tagger.names, p.tolist()))) for p in probs]

    return ExpressionJudge(tagger.model_id, judge)


def clip_judge(zero_shot) -> ExpressionJudge:
    def judge(crops):
        return [(label, scores, None) for label, scores in zero_shot.expressions(crops)] if crops else []

    return ExpressionJudge(zero_shot.model_id, judge)


def _hex(rgb) -> str | None:
    return None if rgb is None else "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def _eye(face: dict, side: str) -> str | None:
    return _hex((face.get(side) or {}).get("color"))


def read_kept(store: MediaStore, episode: str, shot: str):
    """(frame record, RGB image) of every kept frame of the shot, in order."""
    doc = cf.load_shot_frames(store, episode, shot)
    folder = store.partition_dir(cf.ASSET, episode, shot)
    for r in doc["frames"]:
        if not r["kept"]:
            continue
        bgr = cv2.imread(str(folder / r["image"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"{episode}/{shot}: kept frame {r['image']} is missing or unreadable")
        yield r, cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def face_rows(store: MediaStore, episode: str, shot: str, detector, judge: ExpressionJudge | None,
              no_judge_reason: str = "") -> list[dict]:
    """`detector.detect(rgb)` gives face dicts (bbox, likelihood; animeface adds colours)."""
    rows = []
    for r, rgb in read_kept(store, episode, shot):
        faces = detector.detect(rgb)
        verdicts = judge.judge([face_crop(rgb, f["bbox"]) for f in faces]) if judge and faces else []
        records = []
        for i, f in enumerate(faces):
            label, scores, _ = verdicts[i] if verdicts else (None, {}, None)
            records.append({
                "x0": f["bbox"][0], "y0": f["bbox"][1], "x1": f["bbox"][2], "y1": f["bbox"][3],
                "likelihood": f["likelihood"], "hair": _hex(f.get("hair")),
                "left_eye": _eye(f, "left_eye"), "right_eye": _eye(f, "right_eye"),
                "expression": label,
                "expression_scores": [{"label": k, "score": float(v)}
                                      for k, v in sorted(scores.items(), key=lambda kv: -kv[1])],
            })
        # The frame's expression is its largest face's: the one a caption is about.
        main = max(range(len(faces)), key=lambda i: _area(faces[i]["bbox"])) if faces else None
        label = records[main]["expression"] if main is not None else None
        if not faces:
            reason = "no face"
        elif judge is None:
            reason = no_judge_reason
        elif label is None:
            reason = verdicts[main][2] or "no expression scored high enough"
        else:
            reason = None
        rows.append({
            fs.ID: fs.frame_id(episode, shot, r["frame"]), fs.EPISODE: episode, fs.SHOT: shot,
            fs.FRAME_INDEX: r["frame"], fs.FACES: records, fs.N_FACES: len(faces),
            fs.EXPRESSION: label, fs.EXPRESSION_REASON: reason,
            fs.EXPRESSION_MODEL: judge.model_id if judge else "none",
            fs.FACE_MODEL: detector.model_id, fs.PIPELINE_VERSION: PIPELINE_VERSION,
        })
    return rows


def _area(b) -> int:
    return max(0, b[2] - b[0]) * max(0, b[3] - b[1])
