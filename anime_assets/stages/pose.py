"""Pose of every character instance of one shot's kept frames -> LanceDB `pose` rows.

The character layers already know where each character is (instance boxes and the instance-id
mask, stable through the shot), so the pose model runs on each instance's box directly: no
person detector, and a keypoint can be checked against the instance's own mask.
"""

from __future__ import annotations

import cv2
import numpy as np

from anime_assets import PIPELINE_VERSION
from anime_assets.stages.faces import read_kept
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.vision.pose import body17, draw_skeleton, inside_mask_fraction, pose_tags

SCORE_THRESHOLD = 0.3  # keypoints below this are kept in the row but not drawn, tagged or checked
PREVIEW_HEIGHT = 200


def instances_by_frame(layers_rows: list[dict]) -> dict[int, dict]:
    return {r[fs.FRAME_INDEX]: r for r in layers_rows}


def _instance_mask(uri: str, shape) -> np.ndarray | None:
    ids = cv2.imread(str(MediaStore.path_from_uri(uri)), cv2.IMREAD_UNCHANGED) if uri else None
    if ids is not None and ids.shape[:2] != tuple(shape[:2]):
        ids = cv2.resize(ids, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)
    return ids


def pose_rows(store: MediaStore, episode: str, shot: str, layers_rows: list[dict], estimator,
              no_model_reason: str = "", preview_frames: int = 3):
    """(rows, preview RGB strip or None, stats). One row per instance of every kept frame."""
    layers = instances_by_frame(layers_rows)
    rows, drawn, fractions = [], [], []
    kept = list(read_kept(store, episode, shot))
    picks = set(np.linspace(0, len(kept) - 1, num=min(preview_frames, len(kept))).round().astype(int).tolist())
    for n, (r, rgb) in enumerate(kept):
        lrow = layers.get(r["frame"])
        if lrow is None:
            raise RuntimeError(f"{episode}/{shot}: frame {r['frame']} has no layers row; materialise the "
                               "character layers of this shot first")
        ids = _instance_mask(lrow[fs.INSTANCE_MASK_URI], rgb.shape) if estimator is not None else None
        frame_poses = []
        for inst in lrow[fs.INSTANCES] or []:
            box = (inst["x0"], inst["y0"], inst["x1"], inst["y1"])
            row = {
                fs.ID: fs.pose_id(lrow[fs.ID], inst["id"]), fs.EPISODE: episode, fs.SHOT: shot,
                fs.FRAME_INDEX: r["frame"], fs.FRAME_ID: lrow[fs.ID], fs.INSTANCE_ID: inst["id"],
                fs.BOX: list(box), fs.PIPELINE_VERSION: PIPELINE_VERSION,
                fs.POSE_MODEL: estimator.model_id if estimator is not None else "none",
            }
            if estimator is None:
                row.update({fs.KEYPOINTS: None, fs.BODY17: None, fs.SKELETON: None, fs.POSE_TAGS: None,
                            fs.INSIDE_MASK: None, fs.POSE_REASON: no_model_reason})
            else:
                kps = np.asarray(estimator.predict(rgb, box), np.float32)
                k17 = body17(kps, estimator.keypoint_names)
                inside = inside_mask_fraction(k17, ids == inst["id"], SCORE_THRESHOLD) if ids is not None else None
                if inside is not None and np.isfinite(inside):
                    fractions.append(float(inside))
                row.update({
                    fs.KEYPOINTS: [{"name": name, "x": float(x), "y": float(y), "score": float(s)}
                                   for name, (x, y, s) in zip(estimator.keypoint_names, kps)],
                    fs.BODY17: k17.astype(np.float32).tolist(), fs.SKELETON: estimator.skeleton,
                    fs.POSE_TAGS: pose_tags(k17, box, rgb.shape, SCORE_THRESHOLD),
                    fs.INSIDE_MASK: None if inside is None or not np.isfinite(inside) else float(inside),
                    fs.POSE_REASON: None,
                })
                frame_poses.append(k17)
            rows.append(row)
        if n in picks and frame_poses:
            drawn.append(_preview(rgb, frame_poses))
    strip = np.concatenate(drawn, axis=1) if drawn else None
    stats = {"kept": len(kept), "instances": len(rows),
             "inside_mask_median": float(np.median(fractions)) if fractions else None}
    return rows, strip, stats


def _preview(rgb: np.ndarray, poses: list[np.ndarray], height: int = PREVIEW_HEIGHT) -> np.ndarray:
    """The frame at preview size with the skeletons drawn at that size (lines drawn on the full
    frame and then shrunk would vanish)."""
    scale = height / rgb.shape[0]
    small = cv2.resize(rgb, (max(1, round(rgb.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
    scaled = [np.concatenate([p[:, :2] * scale, p[:, 2:]], axis=1) for p in poses]
    return draw_skeleton(small, scaled, SCORE_THRESHOLD, thickness=2)
