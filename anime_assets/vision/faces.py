"""Anime face boxes per frame, with eye, mouth and hair colours (the `animeface` package:
the nvxs anime face detector compiled into the wheel, no download).

numpy in, plain dicts out; no Dagster. animeface reads PIL images and silently finds no faces
with Pillow >= 12, so `detect_faces` refuses to run there instead of returning a false "no face".
"""

from __future__ import annotations

import cv2
import numpy as np

MAX_SIDE = 512  # animeface costs ~90 ms at 512 px on 2 cores; faces in a 1080p frame are large enough


class FaceDetectorUnavailable(RuntimeError):
    pass


def _check_pillow() -> None:
    import PIL

    major = int(PIL.__version__.split(".")[0])
    if major >= 12:
        raise FaceDetectorUnavailable(
            f"animeface finds no faces with Pillow {PIL.__version__} (needs < 12); pin pillow<12")


def _box(b, f: float) -> list[int]:
    return [int(round(b.x / f)), int(round(b.y / f)), int(round((b.x + b.width) / f)), int(round((b.y + b.height) / f))]


def detect_faces(rgb: np.ndarray, min_likelihood: float = 0.5, max_side: int = MAX_SIDE) -> list[dict]:
    """Faces in an RGB uint8 frame, best first: {bbox [x0, y0, x1, y1], likelihood, skin, hair,
    left_eye {bbox, color}, right_eye {bbox, color}, mouth, nose, chin} in frame pixels
    (colours RGB 0-255)."""
    try:
        import animeface
        from PIL import Image
    except ImportError as e:
        raise FaceDetectorUnavailable(f"animeface is not installed ({e})") from None
    _check_pillow()
    h, w = rgb.shape[:2]
    f = min(1.0, max_side / max(h, w))
    small = cv2.resize(rgb, (max(1, round(w * f)), max(1, round(h * f))), interpolation=cv2.INTER_AREA) if f < 1 else rgb
    faces = []
    for face in animeface.detect(Image.fromarray(np.ascontiguousarray(small))):
        if face.likelihood < min_likelihood:
            continue

        def colour(c):
            return [int(c.r), int(c.g), int(c.b)]

        faces.append({
            "bbox": _box(face.face.pos, f),
            "likelihood": round(float(face.likelihood), 4),
            "skin": colour(face.skin.color),
            "hair": colour(face.hair.color),
            "left_eye": {"bbox": _box(face.left_eye.pos, f), "color": colour(face.left_eye.color)},
            "right_eye": {"bbox": _box(face.right_eye.pos, f), "color": colour(face.right_eye.color)},
            "mouth": _box(face.mouth.pos, f),
            "nose": [int(round(face.nose.pos.x / f)), int(round(face.nose.pos.y / f))],
            "chin": [int(round(face.chin.pos.x / f)), int(round(face.chin.pos.y / f))],
        })
    faces.sort(key=lambda d: -d["likelihood"])
    return faces
