"""Faces asset (episode x shot): anime face boxes of every kept frame in the LanceDB `faces` table."""


import time

import dagster as dg

from anime_assets import progress
from anime_assets.defs.partitions import episode_shot_partitions
from anime_assets.defs.resources import StorageResource
from anime_assets.defs.shots import _SINGLE_RUN, _check_real_shots, _EpisodeCache, _targets, clean_frames
from anime_assets.stages import faces as fc
from anime_assets.storage.tables import faces_table


@dg.asset(
    partitions_def=episode_shot_partitions,
    deps=[clean_frames],
    backfill_policy=_SINGLE_RUN,
    group_name="faces",
    code_version=fc.FACE_MODEL,  # a new detector version marks every shot stale
    kinds={"lancedb"},
    check_specs=[dg.AssetCheckSpec("rows_equal_kept_frames", asset="frame_faces",
                                   description="LanceDB `faces` rows of these shots == their kept frames.")],
    description="Anime face boxes (with hair and eye colours) of every kept frame, from animeface (model "
                "compiled into the package). Expression is null with its reason until a model can judge it.",
)
def frame_faces(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    store = storage.media()
    targets = _targets(context)
    _check_real_shots(context, _EpisodeCache(store), targets)
    table = faces_table(storage.tables().db_uri)
    t0 = time.perf_counter()
    kept = faces = with_face = 0
    for n, (episode, shot) in enumerate(targets):
        rows = fc.face_rows(store, episode, shot)
        table.replace_partition(episode, shot, rows)
        kept += len(rows)
        faces += sum(r["n_faces"] for r in rows)
        with_face += sum(r["n_faces"] > 0 for r in rows)
        progress.report("faces", n + 1, len(targets))
    rows_now = sum(table.count(e, s) for e, s in targets)
    context.log.warning(f"expression left null: {fc.NO_EXPRESSION}")
    return dg.MaterializeResult(
        metadata={"shots": len(targets), "kept_frames": kept, "faces": faces, "frames_with_a_face": with_face,
                  "face_model": fc.FACE_MODEL, "expression": "null (" + fc.NO_EXPRESSION + ")",
                  "seconds": round(time.perf_counter() - t0, 2), "table_version": table.version,
                  "dagster/uri": table.db_uri},
        check_results=[dg.AssetCheckResult(check_name="rows_equal_kept_frames", passed=rows_now == kept,
                                           metadata={"rows": rows_now, "kept_frames": kept})],
    )
