"""Annotation assets (episode x shot): faces with expressions, pose per character, captions.

`frame_faces` needs only the clean frames and runs in the shot run. `frame_pose` needs the
character instances of the layers, and `frame_captions` needs everything, so both run in the
layers run, after the layers. Each writes one LanceDB table keyed by the frame `id` (pose: frame
and instance), replacing a shot's rows in one commit.
"""


import time

import dagster as dg
import numpy as np

from anime_assets import progress
from anime_assets.defs.layers import BACKGROUND, CHARACTER, EFFECT
from anime_assets.defs.partitions import episode_shot_partitions
from anime_assets.defs.resources import AnnotationModelsResource, EmbedderResource, StorageResource
from anime_assets.defs.shots import _SINGLE_RUN, _check_real_shots, _EpisodeCache, _per_shot_table, _targets, clean_frames
from anime_assets.models import selection
from anime_assets.models.clip import ModelUnavailable
from anime_assets.stages import captions as cp
from anime_assets.stages import faces as fc
from anime_assets.stages import pose as ps
from anime_assets.storage import schema as fs
from anime_assets.storage.tables import FramesTableError, captions_table, faces_table, layers_table, pose_table
from anime_assets.vision.contact import markdown_image, png_bytes

GROUP = "annotations"
MIN_INSIDE_MASK = 0.5  # median share of confident keypoints on their own character's mask


def _zero_shot(embedder: EmbedderResource):
    """(ZeroShot or None, why not): CLIP zero-shot when the embedder is a real CLIP."""
    from anime_assets.models.zeroshot import ZeroShot

    model, _ = embedder.load()
    try:
        return ZeroShot(model), None
    except ModelUnavailable as e:
        return None, e.reason


def _expression_judge(context, embedder: EmbedderResource, models: AnnotationModelsResource):
    """(ExpressionJudge or None, reason it is None)."""
    no_tagger = None
    choice = (models.expression or "auto").strip().lower()
    if choice in ("auto", "tagger"):
        tagger, no_tagger = models.load_tagger()
        if tagger is not None:
            return fc.tagger_judge(tagger), None
    if choice in ("auto", "clip"):
        zs, why = _zero_shot(embedder)
        if zs is not None:
            if choice == "auto":
                context.log.warning(f"expression from CLIP zero-shot on the face crops: {no_tagger}")
            return fc.clip_judge(zs), None
    r = selection.resolve_expression(choice, selection.resolve("tagger", models.tagger),
                                     selection.resolve("embedder", embedder.embedder))
    return None, r[1] or "no expression model could be loaded"


def _frames_of(storage: StorageResource, zero_shot):
    """The `frames` table when it holds the zero-shot model's own image vectors (reuse them),
    else None."""
    if zero_shot is None:
        return None
    try:
        frames = storage.frames_for_reading()
    except FramesTableError:  # no frames table yet
        return None
    return frames if frames.embedding_model == zero_shot.embedder.model_id else None


def _read(table, episode, shot) -> list[dict]:
    return table.read_partition(episode, shot).to_pylist()


@dg.asset(
    partitions_def=episode_shot_partitions,
    deps=[clean_frames],
    backfill_policy=_SINGLE_RUN,
    group_name=GROUP,
    code_version="2",  # + the face and expression models (definitions.py)
    kinds={"lancedb"},
    check_specs=[dg.AssetCheckSpec("rows_equal_kept_frames", asset="frame_faces",
                                   description="LanceDB `faces` rows of these shots == their kept frames.")],
    description="Anime face boxes of every kept frame (the YOLO anime face detector when here, else animeface, "
                "compiled into its package, which adds hair and eye colours), each with an expression label of a fixed set and its scores (anime tagger, "
                "else CLIP zero-shot on the face crop), or null with the reason.",
)
def frame_faces(context: dg.AssetExecutionContext, storage: StorageResource, embedder: EmbedderResource,
                annotation_models: AnnotationModelsResource) -> dg.MaterializeResult:
    store = storage.media()
    targets = _targets(context)
    _check_real_shots(context, _EpisodeCache(store), targets)
    detector, warning = annotation_models.load_faces()
    if detector is None:
        raise dg.Failure(description=warning)
    if warning:
        context.log.warning(warning)
    judge, why = _expression_judge(context, embedder, annotation_models)
    if judge is None:
        context.log.warning(f"expression left null: {why}")
    table = faces_table(storage.tables().db_uri)
    t0 = time.perf_counter()
    kept = faces = with_face = labelled = 0
    labels: dict[str, int] = {}
    for n, (episode, shot) in enumerate(targets):
        rows = fc.face_rows(store, episode, shot, detector, judge, why or "")
        table.replace_partition(episode, shot, rows)
        kept += len(rows)
        faces += sum(r[fs.N_FACES] for r in rows)
        with_face += sum(r[fs.N_FACES] > 0 for r in rows)
        for r in rows:
            if r[fs.EXPRESSION]:
                labelled += 1
                labels[r[fs.EXPRESSION]] = labels.get(r[fs.EXPRESSION], 0) + 1
        progress.report("faces", n + 1, len(targets))
    rows_now = sum(table.count(e, s) for e, s in targets)
    return dg.MaterializeResult(
        metadata={"shots": len(targets), "kept_frames": kept, "faces": faces, "frames_with_a_face": with_face,
                  "frames_with_an_expression": labelled, "expressions": dg.MetadataValue.json(labels),
                  "face_model": detector.model_id, "expression_model": judge.model_id if judge else f"none ({why})",
                  "seconds": round(time.perf_counter() - t0, 2), "table_version": table.version,
                  "dagster/uri": table.db_uri},
        check_results=[dg.AssetCheckResult(check_name="rows_equal_kept_frames", passed=rows_now == kept,
                                           metadata={"rows": rows_now, "kept_frames": kept})],
    )


@dg.asset(
    partitions_def=episode_shot_partitions,
    deps=[clean_frames, CHARACTER.key],
    backfill_policy=_SINGLE_RUN,
    group_name=GROUP,
    code_version="1",  # + the pose model (definitions.py)
    kinds={"lancedb"},
    check_specs=[
        dg.AssetCheckSpec("rows_equal_instances", asset="frame_pose",
                          description="LanceDB `pose` rows == character instances of the kept frames."),
        dg.AssetCheckSpec("keypoints_on_character", asset="frame_pose",
                          description=f"Median share of confident keypoints on their own character's mask "
                                      f">= {MIN_INSIDE_MASK} (a warning: the model is lost on these drawings)."),
    ],
    description="Keypoints with confidences of every character instance of every kept frame, in image pixels "
                "(DWPose whole-body when here, else MediaPipe pose from the registry wheel), with the COCO-17 "
                "body and the framing / arm tags they support. Preview: skeletons over the frames.",
)
def frame_pose(context: dg.AssetExecutionContext, storage: StorageResource,
               annotation_models: AnnotationModelsResource) -> dg.MaterializeResult:
    store = storage.media()
    targets = _targets(context)
    _check_real_shots(context, _EpisodeCache(store), targets)
    estimator, warning = annotation_models.load_pose()
    if warning:
        context.log.warning(warning)
    layers, table = layers_table(storage.tables().db_uri), pose_table(storage.tables().db_uri)
    t0 = time.perf_counter()
    per_shot, strips, expected, medians = [], [], 0, []
    for n, (episode, shot) in enumerate(targets):
        lrows = _read(layers, episode, shot)
        rows, strip, stats = ps.pose_rows(store, episode, shot, lrows, estimator, warning or "")
        table.replace_partition(episode, shot, rows)
        expected += sum(len(r[fs.INSTANCES] or []) for r in lrows)
        if strip is not None and len(strips) < 4:
            strips.append((f"{episode}/{shot}", strip))
        if stats["inside_mask_median"] is not None:
            medians.append(stats["inside_mask_median"])
        per_shot.append({"shot": f"{episode}/{shot}", "kept": stats["kept"], "instances": stats["instances"],
                         "on_mask": None if stats["inside_mask_median"] is None
                         else round(stats["inside_mask_median"], 2)})
        progress.report("pose", n + 1, len(targets))
    rows_now = sum(table.count(e, s) for e, s in targets)
    preview = "\n\n".join(f"**{name}** — skeletons (COCO-17 body)\n\n" + markdown_image(png_bytes(s[..., ::-1]), name)
                          for name, s in strips)
    median = sorted(medians)[len(medians) // 2] if medians else None
    return dg.MaterializeResult(
        metadata={"shots": len(targets), "instances": rows_now,
                  "pose_model": estimator.model_id if estimator else f"none ({warning})",
                  "median_keypoints_on_character": median,
                  "seconds": round(time.perf_counter() - t0, 2), "table_version": table.version,
                  "per_shot": dg.MetadataValue.md(_per_shot_table(per_shot, ["shot", "kept", "instances", "on_mask"])),
                  "pose_preview": dg.MetadataValue.md(preview or "no characters with keypoints"),
                  "dagster/uri": table.db_uri},
        check_results=[
            dg.AssetCheckResult(check_name="rows_equal_instances", passed=rows_now == expected,
                                metadata={"rows": rows_now, "instances": expected}),
            dg.AssetCheckResult(check_name="keypoints_on_character", passed=median is None or median >= MIN_INSIDE_MASK,
                                severity=dg.AssetCheckSeverity.WARN,
                                metadata={"median": median, "shots_measured": len(medians)}),
        ],
    )


@dg.asset(
    partitions_def=episode_shot_partitions,
    deps=[clean_frames, CHARACTER.key, EFFECT.key, BACKGROUND.key, frame_faces, frame_pose],
    backfill_policy=_SINGLE_RUN,
    group_name=GROUP,
    code_version="1",  # + the tagger and CLIP (definitions.py)
    kinds={"lancedb"},
    check_specs=[dg.AssetCheckSpec("rows_equal_kept_frames", asset="frame_captions",
                                   description="LanceDB `captions` rows of these shots == their kept frames.")],
    description="Tags (with source and score) and a kohya-style caption for every kept frame: characters, "
                "expression, pose and framing, anime tagger tags, effects, CLIP scene tags, shot facts. "
                "Says nothing it does not know: missing sources are named per row.",
)
def frame_captions(context: dg.AssetExecutionContext, storage: StorageResource, embedder: EmbedderResource,
                   annotation_models: AnnotationModelsResource) -> dg.MaterializeResult:
    store = storage.media()
    targets = _targets(context)
    _check_real_shots(context, _EpisodeCache(store), targets)
    missing = {}
    tagger, warning = annotation_models.load_tagger()
    if warning:
        context.log.warning(f"{warning}; captions use only what the other assets measured")
        missing["tagger tags"] = "no anime tagger here (`anime-assets models list` says why)"
    zero_shot, why = _zero_shot(embedder)
    if zero_shot is None:
        context.log.warning(f"no CLIP scene tags: {why}")
        missing["scene tags"] = "no CLIP weights here (CLIP zero-shot needs them)"
    uri = storage.tables().db_uri
    layers, faces, poses, table = layers_table(uri), faces_table(uri), pose_table(uri), captions_table(uri)
    t0 = time.perf_counter()
    kept, examples = 0, []
    frames = _frames_of(storage, zero_shot)
    for n, (episode, shot) in enumerate(targets):
        vectors = None
        if frames is not None:
            got = frames.read_partition(episode, shot, columns=[fs.FRAME_INDEX, fs.VECTOR]).to_pylist()
            vectors = {r[fs.FRAME_INDEX]: np.asarray(r[fs.VECTOR], np.float32) for r in got}
        rows = cp.caption_rows(store, episode, shot, _read(layers, episode, shot), _read(faces, episode, shot),
                               _read(poses, episode, shot), tagger, zero_shot, missing, frame_vectors=vectors)
        table.replace_partition(episode, shot, rows)
        kept += len(rows)
        if rows and len(examples) < 12:
            examples.append({"frame": rows[0][fs.ID], "caption": rows[0][fs.CAPTION] or "(empty)"})
        progress.report("captions", n + 1, len(targets))
    rows_now = sum(table.count(e, s) for e, s in targets)
    return dg.MaterializeResult(
        metadata={"shots": len(targets), "kept_frames": kept,
                  "tagger_model": tagger.model_id if tagger else "none",
                  "scene_tags_model": zero_shot.model_id if zero_shot else "none",
                  "missing": dg.MetadataValue.json(missing),
                  "examples": dg.MetadataValue.md(_per_shot_table(examples, ["frame", "caption"])),
                  "seconds": round(time.perf_counter() - t0, 2), "table_version": table.version,
                  "dagster/uri": table.db_uri},
        check_results=[dg.AssetCheckResult(check_name="rows_equal_kept_frames", passed=rows_now == kept,
                                           metadata={"rows": rows_now, "kept_frames": kept})],
    )
