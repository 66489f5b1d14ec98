"""Tags and a kohya-style caption for every kept frame of one shot -> LanceDB `captions` rows.

Facts come from the other assets' rows (layers: instances, effects, camera; faces: expressions;
pose: framing and arm tags), the anime tagger on the whole frame and CLIP zero-shot scene tags
when those models are here. What is not known is left out and named in `caption_sources`.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from anime_assets import PIPELINE_VERSION
from anime_assets.stages.faces import read_kept
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.vision.captions import FrameFacts, caption, sources_note

GENERAL_THRESHOLD = 0.35  # WD tagger conventions
# Instances smaller than this share of the frame are fragments of a character the mask split,
# not characters (on the sample: one 0.4% fragment beside a 12% character); they are not counted.
MIN_CHARACTER_AREA = 0.005
CHARACTER_THRESHOLD = 0.85


def _by_frame(rows: list[dict]) -> dict[int, dict]:
    return {r[fs.FRAME_INDEX]: r for r in rows}


def caption_rows(store: MediaStore, episode: str, shot: str, layers_rows: list[dict], faces_rows: list[dict],
                 pose_rows: list[dict], tagger=None, zero_shot=None, missing: dict[str, str] | None = None,
                 characters_reason: str = "the character registry does not exist yet",
                 frame_vectors: dict[int, np.ndarray] | None = None) -> list[dict]:
    """`frame_vectors`: the shot's stored CLIP vectors by frame index, when `frames` holds vectors
    of the zero-shot model (then no frame is embedded again)."""
    layers, faces = _by_frame(layers_rows), _by_frame(faces_rows)
    poses: dict[int, list[dict]] = defaultdict(list)
    for p in pose_rows:
        poses[p[fs.FRAME_INDEX]].append(p)
    kept = list(read_kept(store, episode, shot))
    if not kept:
        return []
    h, w = kept[0][1].shape[:2]
    xs = [r[fs.CAMERA_X] for r in layers_rows if r.get(fs.CAMERA_X) is not None]
    ys = [r[fs.CAMERA_Y] for r in layers_rows if r.get(fs.CAMERA_Y) is not None]
    travel = max(max(xs) - min(xs), (max(ys) - min(ys)) * w / max(h, 1)) / w if xs and ys else None
    images = [rgb for _, rgb in kept]
    tagged = tagger.predict(images) if tagger is not None else None
    scenes = framings = None
    if zero_shot is not None:
        frames = [r["frame"] for r, _ in kept]
        vectors = (np.stack([frame_vectors[f] for f in frames]).astype(np.float32)
                   if frame_vectors and all(f in frame_vectors for f in frames) else zero_shot.image_vectors(images))
        scenes, framings = zero_shot.scene_tags(vectors), zero_shot.shot_types(vectors)
    rows = []
    for i, (r, rgb) in enumerate(kept):
        frame = r["frame"]
        lrow, frow = layers.get(frame), faces.get(frame)
        gone = dict(missing or {})
        gone["character names"] = characters_reason
        facts = FrameFacts(width=w, height=h, camera_travel=travel)
        if lrow is None:
            gone["layers"] = "no layers row for this frame"
        else:
            facts.n_instances = sum(i["area"] >= MIN_CHARACTER_AREA for i in lrow[fs.INSTANCES] or [])
            facts.effect_blend, facts.effect_coverage = lrow[fs.EFFECT_BLEND], lrow[fs.EFFECT_COVERAGE]
        if frow is None:
            gone["faces"] = "no faces row for this frame"
        elif frow[fs.N_FACES]:
            labels = [f["expression"] for f in frow[fs.FACES] if f["expression"]]
            facts.expressions = labels
            if not labels:
                gone["expression"] = frow[fs.EXPRESSION_REASON] or "not judged"
        ps = sorted(poses.get(frame, []), key=lambda p: p[fs.INSTANCE_ID])
        facts.pose_tags = [p[fs.POSE_TAGS] for p in ps if p[fs.POSE_TAGS] is not None]
        if ps and not facts.pose_tags:
            gone.setdefault("pose", ps[0][fs.POSE_REASON] or "no pose")
        if tagged is not None:
            probs = dict(zip(tagger.names, tagged[i].tolist()))
            cats = dict(zip(tagger.names, tagger.categories.tolist()))
            facts.tagger_tags = sorted(((t, p) for t, p in probs.items() if cats[t] == 0 and p >= GENERAL_THRESHOLD),
                                       key=lambda tp: -tp[1])
            facts.tagger_characters = sorted(((t, p) for t, p in probs.items()
                                              if cats[t] == 4 and p >= CHARACTER_THRESHOLD), key=lambda tp: -tp[1])
        if scenes is not None:
            facts.scene_tags, facts.shot_type = scenes[i], framings[i]
        facts.missing = gone
        text, tags = caption(facts)
        rows.append({
            fs.ID: fs.frame_id(episode, shot, frame), fs.EPISODE: episode, fs.SHOT: shot, fs.FRAME_INDEX: frame,
            fs.TAGS: [{"tag": t, "score": s, "source": src} for t, s, src in tags],
            fs.CAPTION: text, fs.CHARACTERS: None, fs.CAPTION_SOURCES: sources_note(facts),
            fs.TAGGER_MODEL: tagger.model_id if tagger is not None else "none",
            fs.PIPELINE_VERSION: PIPELINE_VERSION,
        })
    return rows
