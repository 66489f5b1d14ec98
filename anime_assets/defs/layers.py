"""Layer assets (episode x shot): character, effect and background layers of every kept frame.

One multi-asset computes the three together, because each layer is defined by the others (the
background plate decides what is character, the character decides what is effect, both decide
what the background must fill). They stay three assets in the graph, each with its own folder,
checks and preview, and are materialised together per shot.
"""


import time

import dagster as dg

from anime_assets import progress
from anime_assets.defs.episodes import frame_index
from anime_assets.defs.resources import LayerModelsResource, StorageResource
from anime_assets.defs.shots import _SINGLE_RUN, _check_real_shots, _EpisodeCache, _per_shot_table, _targets, clean_frames
from anime_assets.defs.partitions import episode_shot_partitions
from anime_assets.stages import layers as ly
from anime_assets.storage.media import MediaStore
from anime_assets.storage.tables import layers_table
from anime_assets.vision.contact import markdown_image, png_bytes
from anime_assets.vision.layers import LayerConfig

GROUP = "layers"
CODE_VERSION = "1"
MIN_RECOMPOSITION_PSNR = 30.0  # dB: below this the three layers do not add back up to the frame
MIN_CONSECUTIVE_IOU = 0.9  # consecutive kept frames of a shot: lower means flickering masks

_deps = [clean_frames, frame_index]
CHARACTER = dg.AssetSpec(ly.CHARACTER, deps=_deps, partitions_def=episode_shot_partitions, group_name=GROUP,
                         code_version=CODE_VERSION, kinds={"image"},
                         description="Per kept frame: the characters as RGBA (straight alpha, effects taken off) "
                                     "and an instance-id mask with ids stable through the shot.")
EFFECT = dg.AssetSpec(ly.EFFECT, deps=_deps, partitions_def=episode_shot_partitions, group_name=GROUP,
                      code_version=CODE_VERSION, kinds={"image"},
                      description="Per kept frame: glows, auras, magic circles, flashes as RGBA plus the blend "
                                  "mode (normal, add, screen) that recomposes the frame.")
BACKGROUND = dg.AssetSpec(ly.BACKGROUND, deps=_deps, partitions_def=episode_shot_partitions, group_name=GROUP,
                          code_version=CODE_VERSION, kinds={"image", "lancedb"},
                          description="Per kept frame: the background with characters and effects removed, cut "
                                      "from ONE plate per shot (no flicker), never-visible parts inpainted. Rows "
                                      "of the LanceDB `layers` table point at all three layers.")


@dg.multi_asset(
    specs=[CHARACTER, EFFECT, BACKGROUND],
    partitions_def=episode_shot_partitions,
    backfill_policy=_SINGLE_RUN,
    check_specs=[
        dg.AssetCheckSpec("mask_coverage", asset=ly.CHARACTER,
                          description="Kept frames whose character mask covers 0.1%-95% of the frame (reported; "
                                      "fails only when every frame of a shot is full or every shot empty)."),
        dg.AssetCheckSpec("mask_flicker", asset=ly.CHARACTER,
                          description=f"Consecutive kept frames of a shot: mask IoU >= {MIN_CONSECUTIVE_IOU}."),
        dg.AssetCheckSpec("recomposition", asset=ly.BACKGROUND,
                          description=f"background + character + effect recomposes each frame "
                                      f"(PSNR >= {MIN_RECOMPOSITION_PSNR} dB)."),
        dg.AssetCheckSpec("rows_equal_kept_frames", asset=ly.BACKGROUND,
                          description="LanceDB `layers` rows of these shots == their kept frames."),
    ],
)
def shot_layers(context: dg.AssetExecutionContext, storage: StorageResource, layer_models: LayerModelsResource):
    store = storage.media()
    cache = _EpisodeCache(store)
    targets = _targets(context)
    _check_real_shots(context, cache, targets)
    models, warnings = layer_models.load()
    for w in warnings:
        context.log.warning(w)
    table = layers_table(storage.tables().db_uri)
    config = LayerConfig(work_width=layer_models.work_width)
    t0 = time.perf_counter()
    shots = ly.layer_shots(store, table, targets, storage.episode_video, cache.index, models, config,
                           storage.image_format, storage.jpeg_quality, report=progress.report)
    strips = [(f"{s['episode']}/{s['shot']}", s["strip"]) for s in shots if s["strip"] is not None][:4]
    seconds = time.perf_counter() - t0
    kept = sum(s["kept"] for s in shots)
    rows = sum(table.count(e, sh) for e, sh in targets)
    single = len(targets) == 1
    common = {"shots": len(targets), "kept_frames": kept, "seconds": round(seconds, 2),
              "seconds_per_kept_frame": round(seconds / kept, 3) if kept else None,
              "segmentation_model": models.segmentation_id, "inpaint_model": models.inpaint_id}
    preview = "\n\n".join(f"**{name}** — original · character · effect · background\n\n"
                          + markdown_image(png_bytes(strip[..., ::-1]), name) for name, strip in strips)

    def folder(asset: str):
        return MediaStore.uri(store.partition_dir(asset, *targets[0]) if single
                              else store.partition_dir(asset, targets[0][0]))

    table_rows = [{"shot": f"{s['episode']}/{s['shot']}", "kept": s["kept"], "coverage": s["character_coverage"],
                   "instances": len(s["instances"]), "fx": s["frames_with_effects"],
                   "inpainted": s["background_inpainted"], "psnr_min": s["recomposition_psnr_min"],
                   "iou_min": s["consecutive_iou_min"], "s": s["seconds"]} for s in shots]
    per_shot = dg.MetadataValue.md(_per_shot_table(table_rows, list(table_rows[0]) if table_rows else ["shot"]))

    coverages = [s["character_coverage"] for s in shots if s["kept"]]
    flicker = [s["consecutive_iou_min"] for s in shots if s["consecutive_iou_min"] is not None]
    psnrs = [s["recomposition_psnr_min"] for s in shots if s["recomposition_psnr_min"] is not None]
    flickering = [r["shot"] for r, s in zip(table_rows, shots)
                  if s["consecutive_iou_min"] is not None and s["consecutive_iou_min"] < MIN_CONSECUTIVE_IOU]
    bad_psnr = [r["shot"] for r, s in zip(table_rows, shots)
                if s["recomposition_psnr_min"] is not None and s["recomposition_psnr_min"] < MIN_RECOMPOSITION_PSNR]
    blends = {m: sum(s["blend_modes"][m] for s in shots) for m in ("normal", "add", "screen")}

    yield dg.MaterializeResult(asset_key=ly.CHARACTER, metadata={
        **common, "mean_coverage": round(sum(coverages) / len(coverages), 4) if coverages else 0.0,
        "min_consecutive_iou": min(flicker) if flicker else None,
        "per_shot": per_shot, "layers_preview": dg.MetadataValue.md(preview or "no kept frames"),
        "dagster/uri": folder(ly.CHARACTER)})
    yield dg.MaterializeResult(asset_key=ly.EFFECT, metadata={
        **common, "frames_with_effects": sum(s["frames_with_effects"] for s in shots),
        "blend_modes": dg.MetadataValue.json(blends),
        "layers_preview": dg.MetadataValue.md(preview or "no kept frames"), "dagster/uri": folder(ly.EFFECT)})
    yield dg.MaterializeResult(asset_key=ly.BACKGROUND, metadata={
        **common, "mean_inpainted": round(sum(s["background_inpainted"] for s in shots) / max(len(shots), 1), 4),
        "min_recomposition_psnr": min(psnrs) if psnrs else None, "rows": rows,
        "table_version": table.version, "per_shot": per_shot,
        "layers_preview": dg.MetadataValue.md(preview or "no kept frames"), "dagster/uri": folder(ly.BACKGROUND)})

    yield dg.AssetCheckResult(asset_key=ly.CHARACTER, check_name="mask_coverage",
                              passed=not coverages or (0.0 < max(coverages) and min(coverages) < 0.95),
                              metadata={"per_shot_mean_coverage": dg.MetadataValue.json(coverages[:400])})
    yield dg.AssetCheckResult(asset_key=ly.CHARACTER, check_name="mask_flicker", passed=not flickering,
                              metadata={"min_consecutive_iou": min(flicker) if flicker else None,
                                        "flickering_shots": dg.MetadataValue.json(flickering[:50])})
    yield dg.AssetCheckResult(asset_key=ly.BACKGROUND, check_name="recomposition", passed=not bad_psnr,
                              metadata={"min_psnr_db": min(psnrs) if psnrs else None,
                                        "shots_below": dg.MetadataValue.json(bad_psnr[:50])})
    yield dg.AssetCheckResult(asset_key=ly.BACKGROUND, check_name="rows_equal_kept_frames", passed=rows == kept,
                              metadata={"rows": rows, "kept_frames": kept})
