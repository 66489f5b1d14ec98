"""Faces of one shot's kept frames -> LanceDB `faces` rows (one per kept frame, replaced per shot).

Expression is null with its reason: the offline models here cannot judge anime expressions
(a fake label would be a defect); issue 4 adds CLIP zero-shot / tagger expressions.
"""

from __future__ import annotations

import cv2

from anime_assets import PIPELINE_VERSION
from anime_assets.stages import clean_frames as cf
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.vision.faces import detect_faces

FACE_MODEL = "animeface-2.0.3"
NO_EXPRESSION = ("no model that can judge anime expressions is available (needs CLIP weights or an anime "
                 "tagger; the bundled offline models cannot tell)")


def _hex(rgb) -> str:
    return "#%02x%02x%02x" % tuple(int(v) for v in rgb)


def face_rows(store: MediaStore, episode: str, shot: str) -> list[dict]:
    doc = cf.load_shot_frames(store, episode, shot)
    folder = store.partition_dir(cf.ASSET, episode, shot)
    rows = []
    for r in doc["frames"]:
        if not r["kept"]:
            continue
        bgr = cv2.imread(str(folder / r["image"]), cv2.IMREAD_COLOR)
        if bgr is None:
            raise FileNotFoundError(f"{episode}/{shot}: kept frame {r['image']} is missing or unreadable")
        faces = detect_faces(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
        rows.append({
            fs.ID: fs.frame_id(episode, shot, r["frame"]), fs.EPISODE: episode, fs.SHOT: shot,
            fs.FRAME_INDEX: r["frame"],
            fs.FACES: [{"x0": f["bbox"][0], "y0": f["bbox"][1], "x1": f["bbox"][2], "y1": f["bbox"][3],
                        "likelihood": f["likelihood"], "hair": _hex(f["hair"]),
                        "left_eye": _hex(f["left_eye"]["color"]), "right_eye": _hex(f["right_eye"]["color"])}
                       for f in faces],
            fs.N_FACES: len(faces),
            fs.EXPRESSION: None,
            fs.EXPRESSION_REASON: NO_EXPRESSION if faces else "no face",
            fs.FACE_MODEL: FACE_MODEL,
            fs.PIPELINE_VERSION: PIPELINE_VERSION,
        })
    return rows
