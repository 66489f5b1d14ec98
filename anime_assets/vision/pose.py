"""Per-character pose keypoints: crops, SimCC decoding, skeleton mapping, drawing and tags.

Pure numpy / OpenCV; no Dagster and no model loading (see `anime_assets.models.pose`).

Coordinates are image pixels, x to the right and y down, in the continuous convention that
RTMPose / mmpose use for top-down crops: a crop window (cx, cy, w, h) of `out_w` x `out_h` input
pixels maps input pixel x to image ``cx - w/2 + x * w / out_w`` (and the same for y). Keypoint
arrays are (K, 3) float32 rows of (x, y, score); "confident" means score >= threshold.

Skeletons: `COCO17` (the COCO body), `BLAZEPOSE33` (MediaPipe BlazePose) and
`COCO_WHOLEBODY133` (DWPose: the 17 COCO body points, 6 foot, 68 face, 2 x 21 hand points).
`body17` maps any of them onto COCO17 by keypoint name.
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

COCO17 = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)  # fmt: skip
_I = {name: i for i, name in enumerate(COCO17)}
NOSE, L_EYE, R_EYE, L_EAR, R_EAR = 0, 1, 2, 3, 4
L_SHOULDER, R_SHOULDER, L_ELBOW, R_ELBOW, L_WRIST, R_WRIST = 5, 6, 7, 8, 9, 10
L_HIP, R_HIP, L_KNEE, R_KNEE, L_ANKLE, R_ANKLE = 11, 12, 13, 14, 15, 16
HEAD = (NOSE, L_EYE, R_EYE, L_EAR, R_EAR)

# Limbs to draw, as index pairs into COCO17 (legs, hips, torso, arms, face).
COCO17_EDGES = (
    (L_ANKLE, L_KNEE), (L_KNEE, L_HIP), (R_ANKLE, R_KNEE), (R_KNEE, R_HIP), (L_HIP, R_HIP),
    (L_SHOULDER, L_HIP), (R_SHOULDER, R_HIP), (L_SHOULDER, R_SHOULDER),
    (L_SHOULDER, L_ELBOW), (L_ELBOW, L_WRIST), (R_SHOULDER, R_ELBOW), (R_ELBOW, R_WRIST),
    (L_EYE, R_EYE), (NOSE, L_EYE), (NOSE, R_EYE), (L_EYE, L_EAR), (R_EYE, R_EAR),
    (L_EAR, L_SHOULDER), (R_EAR, R_SHOULDER),
)  # fmt: skip

BLAZEPOSE33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)  # fmt: skip

COCO_WHOLEBODY133 = (
    COCO17
    + ("left_big_toe", "left_small_toe", "left_heel", "right_big_toe", "right_small_toe", "right_heel")
    + tuple(f"face_{i}" for i in range(68))
    + tuple(f"left_hand_{i}" for i in range(21))
    + tuple(f"right_hand_{i}" for i in range(21))
)

# One colour per instance (RGB), cycled.
PALETTE = (
    (255, 64, 64), (64, 160, 255), (64, 220, 96), (255, 200, 0),
    (200, 80, 255), (0, 220, 220), (255, 128, 0), (255, 96, 192),
)  # fmt: skip


# ---------------------------------------------------------------- crops and decoding
def person_crop(
    box, frame_shape, aspect_w_over_h: float, pad: float = 1.25, *, extend_cut: float = 0.0
) -> tuple[float, float, float, float]:
    """The crop window (cx, cy, w, h) for an instance box (x0, y0, x1, y1): the box centre, the
    box's sides times `pad`, then widened or heightened (never shrunk) to the model's aspect
    w/h, as RTMPose's top-down pipeline does. The window may reach outside the frame (that part
    is filled by `crop_to_input`); sides under 1 px count as 1 px.

    `extend_cut`: when the box reaches the bottom edge of the frame (frame_shape (H, W[, C])),
    i.e. the character goes on below the picture, its bottom is first moved down by
    extend_cut x its height, for models that expect the whole body in the window (BlazePose).
    """
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    if not all(np.isfinite((x0, y0, x1, y1))):
        raise ValueError(f"box must be finite, got {box!r}")
    if aspect_w_over_h <= 0 or pad <= 0:
        raise ValueError("aspect and pad must be positive")
    y0, y1 = min(y0, y1), max(y0, y1)
    if extend_cut > 0 and y1 >= cut_edge(frame_shape):
        y1 += extend_cut * max(y1 - y0, 1.0)
    cx, cy = (x0 + x1) / 2.0, (y0 + y1) / 2.0
    w = max(abs(x1 - x0), 1.0) * pad
    h = max(abs(y1 - y0), 1.0) * pad
    if w > h * aspect_w_over_h:
        h = w / aspect_w_over_h
    else:
        w = h * aspect_w_over_h
    return cx, cy, w, h


def cut_edge(frame_shape) -> float:
    """A box whose bottom y1 reaches this is cut by the bottom of the frame (1 px slack, for
    masks that end a pixel short after resizing)."""
    return float(frame_shape[0]) - 1.0


def window_affine(window, out_w: int, out_h: int) -> np.ndarray:
    """2x3 affine mapping input (patch) pixel coordinates to image coordinates for `window`."""
    cx, cy, w, h = (float(v) for v in window)
    sx, sy = w / out_w, h / out_h
    return np.array([[sx, 0.0, cx - w / 2.0], [0.0, sy, cy - h / 2.0]], np.float64)


def crop_to_input(rgb: np.ndarray, window, out_w: int, out_h: int) -> tuple[np.ndarray, np.ndarray]:
    """Cut `window` (cx, cy, w, h) out of `rgb` resampled to out_w x out_h (bilinear).

    Returns (patch (out_h, out_w, 3) uint8, affine 2x3 patch coords -> image coords). Pixels of
    the window outside the frame are filled with 0 (black): both models were trained and are run
    by their authors that way (mmpose/rtmlib's top-down warpAffine keeps OpenCV's default
    constant 0 border; MediaPipe's ImageToTensor uses BORDER_ZERO), so black is what they read as
    "outside the picture". Grey would be new to them.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got {rgb.shape}")
    affine = window_affine(window, out_w, out_h)
    src, sample = np.ascontiguousarray(rgb), affine
    # Shrinking a 1080p character by 3-4x with bilinear sampling aliases thin line art; shrink
    # the frame by the whole factor first with INTER_AREA (an average), then warp the rest.
    f = int(min(affine[0, 0], affine[1, 1]))
    if f >= 2:
        # Only the part of the frame under the window (plus a margin) is shrunk.
        h, w = rgb.shape[:2]
        cx, cy, ww, wh = (float(v) for v in window)
        rx0, rx1 = max(0, int(cx - ww / 2) - 2 * f), min(w, int(np.ceil(cx + ww / 2)) + 2 * f)
        ry0, ry1 = max(0, int(cy - wh / 2) - 2 * f), min(h, int(np.ceil(cy + wh / 2)) + 2 * f)
        if rx1 - rx0 >= 1 and ry1 - ry0 >= 1:
            # Padded (black, like the rest of the outside) to whole multiples of f: cv2's
            # INTER_AREA is several times faster for an exact integer factor.
            region = src[ry0:ry1, rx0:rx1]
            pad_y, pad_x = -(ry1 - ry0) % f, -(rx1 - rx0) % f
            if pad_x or pad_y:
                region = cv2.copyMakeBorder(region, 0, pad_y, 0, pad_x, cv2.BORDER_CONSTANT, value=(0, 0, 0))
            src = cv2.resize(region, (region.shape[1] // f, region.shape[0] // f), interpolation=cv2.INTER_AREA)
            # small index j covers region pixels j*f .. j*f + f - 1: region index = j*f + (f - 1)/2
            sample = np.array([[affine[0, 0] / f, 0.0, (affine[0, 2] - rx0 - (f - 1) / 2) / f],
                               [0.0, affine[1, 1] / f, (affine[1, 2] - ry0 - (f - 1) / 2) / f]])  # fmt: skip
    # WARP_INVERSE_MAP: the matrix maps destination (patch) pixels to source pixels.
    patch = cv2.warpAffine(
        src, sample, (int(out_w), int(out_h)),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0),
    )  # fmt: skip
    return patch, affine


def simcc_decode(simcc_x: np.ndarray, simcc_y: np.ndarray, split_ratio: float = 2.0) -> tuple[np.ndarray, np.ndarray]:
    """SimCC classification vectors -> keypoints in input pixels.

    simcc_x (K, Wx) / (1, K, Wx) and simcc_y (K, Hy) / (1, K, Hy): each keypoint's location is
    the arg-max bin of each axis divided by `split_ratio` (bins per input pixel); its score is the
    smaller of the two maxima (a keypoint is only as sure as its less sure axis). Returns
    (xy float32 (K, 2), score float32 (K,)); scores are raw (not clipped).
    """
    sx = np.asarray(simcc_x, np.float32)
    sy = np.asarray(simcc_y, np.float32)
    if sx.ndim == 3:
        sx = sx[0]
    if sy.ndim == 3:
        sy = sy[0]
    if sx.ndim != 2 or sy.ndim != 2 or sx.shape[0] != sy.shape[0]:
        raise ValueError(f"simcc shapes do not match: {np.shape(simcc_x)} vs {np.shape(simcc_y)}")
    ix = np.argmax(sx, axis=1)
    iy = np.argmax(sy, axis=1)
    rows = np.arange(sx.shape[0])
    xy = np.stack([ix, iy], axis=1).astype(np.float32) / np.float32(split_ratio)
    score = np.minimum(sx[rows, ix], sy[rows, iy]).astype(np.float32)
    return xy, score


def to_image(xy: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """(K, 2) patch coordinates -> (K, 2) image coordinates through a 2x3 affine."""
    xy = np.asarray(xy, np.float64).reshape(-1, 2)
    a = np.asarray(affine, np.float64)
    return (xy @ a[:, :2].T + a[:, 2]).astype(np.float32)


def body17(keypoints: np.ndarray, names: Sequence[str]) -> np.ndarray:
    """(K, 3) keypoints of any named skeleton -> (17, 3) in COCO17 order, by name (the first
    keypoint of each name wins); COCO17 points the skeleton lacks get (0, 0, 0)."""
    kp = np.asarray(keypoints, np.float32)
    if kp.ndim != 2 or kp.shape[1] < 3 or kp.shape[0] != len(names):
        raise ValueError(f"keypoints {kp.shape} do not match {len(names)} names")
    out = np.zeros((17, 3), np.float32)
    seen = set()
    for i, name in enumerate(names):
        j = _I.get(name)
        if j is not None and j not in seen:
            out[j] = kp[i, :3]
            seen.add(j)
    return out


# ---------------------------------------------------------------- drawing
def draw_skeleton(rgb: np.ndarray, poses, threshold: float = 0.3, colours=None,
                  thickness: int | None = None) -> np.ndarray:
    """A copy of `rgb` with each (17, 3) pose drawn: limbs between confident joints as
    anti-aliased lines in the instance's colour, joints as filled dots with a dark rim.
    Line width: `thickness`, else about 1/250 of the short side (at least 1 px)."""
    out = np.array(rgb, np.uint8, copy=True, order="C")
    h, w = out.shape[:2]
    thick = thickness or max(1, int(round(min(h, w) / 250)))
    radius = thick + 1
    colours = list(colours) if colours else list(PALETTE)
    for n, pose in enumerate(poses):
        kp = np.asarray(pose, np.float32)
        colour = tuple(int(c) for c in colours[n % len(colours)])
        ok = (kp[:, 2] >= threshold) & np.all(np.isfinite(kp[:, :2]), axis=1)
        for a, b in COCO17_EDGES:
            if ok[a] and ok[b]:
                cv2.line(out, _pt(kp[a]), _pt(kp[b]), colour, thick, cv2.LINE_AA, shift=4)
        for j in np.flatnonzero(ok):
            cv2.circle(out, _pt(kp[j]), radius, (0, 0, 0), -1, cv2.LINE_AA, shift=4)
            cv2.circle(out, _pt(kp[j]), max(1, radius - 1), colour, -1, cv2.LINE_AA, shift=4)
    return out


def _pt(p) -> tuple[int, int]:
    # Sub-pixel drawing with shift=4 (coordinates in 1/16 px), clamped to cv2's int range.
    return (int(np.clip(round(float(p[0]) * 16), -(2**26), 2**26)), int(np.clip(round(float(p[1]) * 16), -(2**26), 2**26)))


# ---------------------------------------------------------------- tags and checks
def pose_tags(kp17: np.ndarray, box, frame_shape, threshold: float = 0.3) -> list[str]:
    """Danbooru tags (kohya-style: lower case, spaces) that the keypoints and the box support.

    A keypoint counts when score >= threshold and it lies inside the frame; "cut" means the
    instance box (x0, y0, x1, y1) reaches the bottom edge of the frame (H, W[, C]). One rule a line:

    * nothing at all when fewer than 4 keypoints count, or no head point and no shoulder does.
    * nothing at all unless the counted groups run top to bottom in the picture (head above
      shoulders above hips above knees above ankles, by mean y): "above the head" means nothing
      for a lying or upside-down figure, and a squashed prediction is not to be trusted.
    * "full body": an ankle counts, a head point or shoulder counts, and the box is not cut.
    * "cowboy shot": a knee counts, no ankle does, and the box is cut (framed from the thighs up).
    * hips count, no knee or ankle, box cut: the frame's bottom lies < 0.25 torso lengths
      (shoulder centre to hip centre) below the hips -> "upper body" (cut about the waist);
      0.35 to 1.2 -> "cowboy shot" (thighs in frame); otherwise none (in between, or legs that
      should be in frame but were not found).
    * both shoulders, no hip, knee or ankle, box cut: room below the shoulders >= 1 shoulder
      width -> "upper body" (chest in frame); < 0.5 -> "portrait" (head and shoulders); else none.
    * two or more head points and no shoulder, hip, knee or ankle: "portrait".
    * "arms up" / "arm up": a shoulder counts, a wrist lies above the highest head point and its
      elbow (when it counts) above its shoulder; both arms -> "arms up", one -> "arm up".
    * "from behind": no nose or eye counts, both shoulders do, the person's left shoulder lies
      >= 15% of the box width to the image's left of the right one (the mirror of a front view),
      and the hips, when both count, agree.

    Never tagged: "hands on hips" (a wrist by the hip is as often a hand behind the back or on a
    skirt, and anime draws both), sitting / lying and the like (17 points' angles do not settle them).
    """
    kp = np.asarray(kp17, np.float32)
    if kp.shape != (17, 3):
        raise ValueError(f"expected (17, 3) keypoints, got {kp.shape}")
    fh, fw = int(frame_shape[0]), int(frame_shape[1])
    x, y, s = kp[:, 0], kp[:, 1], kp[:, 2]
    ok = (s >= threshold) & np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= fw) & (y >= 0) & (y <= fh)
    groups = {
        "head": [j for j in HEAD if ok[j]],
        "shoulders": [j for j in (L_SHOULDER, R_SHOULDER) if ok[j]],
        "hips": [j for j in (L_HIP, R_HIP) if ok[j]],
        "knees": [j for j in (L_KNEE, R_KNEE) if ok[j]],
        "ankles": [j for j in (L_ANKLE, R_ANKLE) if ok[j]],
    }
    head, shoulders, hips, knees, ankles = groups.values()
    if ok.sum() < 4 or not (head or shoulders):
        return []
    levels = [float(np.mean(y[g])) for g in groups.values() if g]
    if not all(a < b for a, b in zip(levels, levels[1:])):
        return []
    cut = box is not None and float(box[3]) >= cut_edge(frame_shape)

    tags: list[str] = []
    framing = _framing(x, y, ok, fh, cut)
    if framing:
        tags.append(framing)

    if head and shoulders:
        top = float(np.min(y[head]))
        raised = 0
        for wrist, elbow, shoulder in ((L_WRIST, L_ELBOW, L_SHOULDER), (R_WRIST, R_ELBOW, R_SHOULDER)):
            if not ok[wrist] or y[wrist] >= top:
                continue
            if ok[elbow] and ok[shoulder] and y[elbow] >= y[shoulder]:
                continue
            raised += 1
        if raised == 2:
            tags.append("arms up")
        elif raised == 1:
            tags.append("arm up")

    face = ok[NOSE] or ok[L_EYE] or ok[R_EYE]
    if not face and len(shoulders) == 2:
        bw = abs(float(box[2]) - float(box[0])) if box is not None else float(fw)
        gap = float(x[R_SHOULDER] - x[L_SHOULDER])  # > 0: the left shoulder on the image's left
        hips_agree = not (ok[L_HIP] and ok[R_HIP]) or x[R_HIP] > x[L_HIP]
        if gap >= 0.15 * max(bw, 1.0) and hips_agree:
            tags.append("from behind")
    return tags


def _framing(x: np.ndarray, y: np.ndarray, ok: np.ndarray, fh: int, cut: bool) -> str | None:
    """The framing rules of `pose_tags` (one tag at most)."""
    head = [j for j in HEAD if ok[j]]
    shoulders = [j for j in (L_SHOULDER, R_SHOULDER) if ok[j]]
    hips = [j for j in (L_HIP, R_HIP) if ok[j]]
    if ok[L_ANKLE] or ok[R_ANKLE]:
        return None if cut else "full body"
    if ok[L_KNEE] or ok[R_KNEE]:
        return "cowboy shot" if cut else None
    if hips:
        if not (cut and shoulders):
            return None
        hip_y = float(np.mean(y[hips]))
        torso = float(np.hypot(np.mean(x[hips]) - np.mean(x[shoulders]), hip_y - np.mean(y[shoulders])))
        if torso <= 1.0:
            return None
        room = (fh - hip_y) / torso
        if room < 0.25:
            return "upper body"
        return "cowboy shot" if 0.35 <= room < 1.2 else None
    if len(shoulders) == 2:
        width = float(abs(x[L_SHOULDER] - x[R_SHOULDER]))
        room = fh - float(np.mean(y[shoulders]))
        if not cut or width <= 1.0:
            return None
        if room >= width:
            return "upper body"
        return "portrait" if room < 0.5 * width else None
    if not shoulders and len(head) >= 2:
        return "portrait"
    return None


def inside_mask_fraction(kp17: np.ndarray, mask: np.ndarray, threshold: float = 0.3, tol: int = 3) -> float:
    """Share of confident keypoints (score >= threshold) that lie on the mask (> 0.5), allowing
    `tol` px (a square window) for keypoints on the outline; a keypoint more than `tol` px outside
    the image is off the mask. 0.0 when no keypoint is confident (no evidence either way)."""
    kp = np.asarray(kp17, np.float32)
    m = np.asarray(mask) > 0.5
    h, w = m.shape[:2]
    sel = (kp[:, 2] >= threshold) & np.all(np.isfinite(kp[:, :2]), axis=1)
    if not sel.any():
        return 0.0
    hits = 0
    for px, py in kp[sel, :2]:
        xi, yi = int(np.floor(px)), int(np.floor(py))
        x0, x1 = max(0, xi - tol), min(w, xi + tol + 1)
        y0, y1 = max(0, yi - tol), min(h, yi + tol + 1)
        if x0 < x1 and y0 < y1 and m[y0:y1, x0:x1].any():
            hits += 1
    return hits / int(sel.sum())
