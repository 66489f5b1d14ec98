"""Episode-level assets: the source video, its one decode pass, its shots."""


import hashlib
import time

import cv2
import dagster as dg
import numpy as np

from anime_assets import progress
from anime_assets.defs.partitions import episode_partitions, ensure_shot_keys
from anime_assets.defs.resources import ShotDetectorResource, StorageResource
from anime_assets.stages import frame_index as fi
from anime_assets.stages import shot_boundaries as sb
from anime_assets.storage.media import MediaStore
from anime_assets.vision import decode
from anime_assets.vision.contact import contact_sheet, curve_plot, markdown_image, png_bytes

GROUP = "episodes"


def _sha256(path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _fail(context: dg.AssetExecutionContext, message: str) -> dg.Failure:
    """One line in the log and in the UI; only this partition fails."""
    context.log.error(message)
    return dg.Failure(description=message, allow_retries=False)


@dg.asset(
    partitions_def=episode_partitions,
    group_name=GROUP,
    code_version="1",
    kinds={"video"},
    description="The episode's video file in the inbox, checked to be decodable.",
)
def source_video(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    episode = context.partition_key
    try:
        path = storage.episode_video(episode)
        info = decode.probe(path)
    except (decode.VideoError, FileNotFoundError, ValueError) as e:
        raise _fail(context, str(e)) from None
    if info.rotation:
        context.log.info(f"{path.name}: display matrix turns it {info.rotation} degrees; frames are stored upright")
    if info.rotation_tag:
        context.log.warning(f"{path.name}: a bare 'rotate' tag of {info.rotation_tag} degrees (no display matrix) "
                            "is not applied, as players ignore it too; frames are stored as coded")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(path)),
            "rotation_deg": info.rotation,
            "dagster/uri": MediaStore.uri(path),
            "resolution": f"{info.width}x{info.height}",
            "fps": info.fps,
            "duration_s": round(info.duration, 3),
            "frames_estimated": info.n_frames,
            "codec": info.codec,
            "pix_fmt": info.pix_fmt,
            "size_bytes": info.size_bytes,
            "sha256": _sha256(path),
        },
        data_version=dg.DataVersion(f"{info.size_bytes}-{path.stat().st_mtime_ns}"),
    )


@dg.asset(
    partitions_def=episode_partitions,
    deps=[source_video],
    group_name=GROUP,
    code_version="2",  # 2: frames of rotated files are stored upright (issue 10)
    kinds={"numpy"},
    check_specs=[dg.AssetCheckSpec("frames_found", asset="frame_index",
                                   description="The decode pass found frames and at least one new drawing.")],
    description="One decode pass: per-frame small views, timestamps and drawing decisions; "
                "candidate frames (new drawings) written at full resolution.",
)
def frame_index(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    episode = context.partition_key
    store = storage.media()
    try:
        path = storage.episode_video(episode)
        index = fi.build_frame_index(
            path, store, episode, image_format=storage.image_format, jpeg_quality=storage.jpeg_quality,
            progress=lambda done, total: progress.report(f"{episode}: decode", done, total),
        )
    except (decode.VideoError, FileNotFoundError, ValueError) as e:
        raise _fail(context, str(e)) from None
    st = index.stats
    reasons = {}
    for code in np.unique(index.reason):
        if code:
            reasons[fi.REASONS[code - 1]] = int((index.reason == code).sum())
    sample = [fi.candidate_path(store, episode, int(i), index.image_format)
              for i in index.cand_idx[np.linspace(0, len(index.cand_idx) - 1, min(8, len(index.cand_idx))).astype(int)]] \
        if len(index.cand_idx) else []
    sheet = contact_sheet([cv2.imread(str(p), cv2.IMREAD_REDUCED_COLOR_4) for p in sample])
    folder = store.partition_dir(fi.ASSET, episode)
    return dg.MaterializeResult(
        metadata={
            "frames": st["frames"],
            "candidates": st["candidates"],
            "dropped_online": dg.MetadataValue.json(reasons),
            "decode_seconds": round(st["seconds"], 2),
            "decode_fps": round(st["fps"], 1),
            "tracker_ms_per_frame": round(st["tracker_ms_per_frame"], 3),
            "writer_seconds": round(st["writer_seconds"], 2),
            "resolution": f"{index.width}x{index.height}",
            "preview": dg.MetadataValue.md(markdown_image(png_bytes(sheet), "candidates")),
            "dagster/uri": MediaStore.uri(folder),
        },
        check_results=[dg.AssetCheckResult(
            check_name="frames_found", passed=bool(st["frames"] > 0 and st["candidates"] > 0),
            metadata={"frames": st["frames"], "candidates": st["candidates"]},
        )],
    )


@dg.asset(
    partitions_def=episode_partitions,
    deps=[frame_index],
    group_name=GROUP,
    code_version="1",
    kinds={"pytorch"},
    description="Shot boundaries (TransNetV2 fused with classical evidence; flashes are not cuts, "
                "a gradual transition is one boundary). Registers the episode's shot partitions.",
)
def shot_boundaries(context: dg.AssetExecutionContext, storage: StorageResource,
                    shot_detector: ShotDetectorResource) -> dg.MaterializeResult:
    episode = context.partition_key
    store = storage.media()
    try:
        index = fi.load_frame_index(store, episode)
    except FileNotFoundError as e:
        raise _fail(context, str(e)) from None
    t0 = time.perf_counter()
    scorer = shot_detector.scorer()
    if scorer is None:
        context.log.warning("TransNetV2 disabled: classical shot detection only (weaker on dissolves)")
    load_s = time.perf_counter() - t0
    det, seconds = sb.detect_episode_shots(index, scorer)
    detector = "transnetv2+classical" if scorer is not None else "classical"
    doc = sb.shots_document(episode, index, det, detector)
    path = sb.write_shots(store, episode, doc)
    keys = ensure_shot_keys(context.instance, len(doc["shots"]))
    kinds: dict[str, int] = {}
    for b in doc["boundaries"]:
        kinds[b["kind"]] = kinds.get(b["kind"], 0) + 1
    lengths = [s["end"] - s["start"] for s in doc["shots"]]
    curves = {k: v for k, v in det.scores.items() if isinstance(v, np.ndarray) and v.ndim == 1}
    plot = curve_plot(dict(list(curves.items())[:3]), marks=[s["start"] for s in doc["shots"][1:]])
    return dg.MaterializeResult(
        metadata={
            "shots": len(doc["shots"]),
            "shot_keys": f"{keys[0]}..{keys[-1]}" if keys else "",
            "boundaries_by_kind": dg.MetadataValue.json(kinds),
            "flashes_not_cuts": len(doc["flashes"]),
            "shortest_shot_frames": min(lengths) if lengths else 0,
            "median_shot_frames": float(np.median(lengths)) if lengths else 0.0,
            "detector": detector,
            "model_load_seconds": round(load_s, 3),
            "detect_seconds": round(seconds, 2),
            "ms_per_frame": round(1000 * seconds / max(index.n_frames, 1), 3),
            "scores": dg.MetadataValue.md(markdown_image(png_bytes(plot), "shot scores")),
            "dagster/uri": MediaStore.uri(path),
        }
    )
