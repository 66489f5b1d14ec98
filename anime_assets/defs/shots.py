"""Shot-level assets (episode x shot): clean frames and their embeddings in LanceDB.

Both take a single-run backfill policy: the sensor and the CLI launch ONE run per episode
covering exactly its real shots (a contiguous key range), so models load once per run and
Dagster's per-run overhead is paid once per episode, not 400 times. A run for a single
shot works the same way.
"""


import time

import cv2
import dagster as dg

from anime_assets import progress
from anime_assets.defs.episodes import _fail, frame_index, shot_boundaries
from anime_assets.defs.partitions import episode_shot_partitions, split_key
from anime_assets.defs.resources import EmbedderResource, StorageResource
from anime_assets.stages import clean_frames as cf
from anime_assets.stages import embeddings as emb
from anime_assets.stages import frame_index as fi
from anime_assets.stages import shot_boundaries as sb
from anime_assets.storage.media import MediaStore
from anime_assets.vision.contact import contact_sheet, markdown_image, png_bytes
from anime_assets.vision.shots import transition_frames

GROUP = "shots"
_SINGLE_RUN = dg.BackfillPolicy.single_run()


def _targets(context: dg.AssetExecutionContext) -> list[tuple[str, str]]:
    return [split_key(k) for k in context.partition_keys]


def _per_shot_table(rows: list[dict], columns: list[str]) -> str:
    head = "| " + " | ".join(columns) + " |\n|" + "---|" * len(columns) + "\n"
    body = "".join("| " + " | ".join(str(r.get(c, "")) for c in columns) + " |\n" for r in rows[:400])
    more = f"\n... and {len(rows) - 400} more shots" if len(rows) > 400 else ""
    return head + body + more


class _EpisodeCache:
    """Frame index and shots of each episode, loaded once per run."""

    def __init__(self, store):
        self.store = store
        self._index: dict[str, fi.FrameIndex] = {}
        self._shots: dict[str, dict] = {}

    def index(self, episode: str) -> fi.FrameIndex:
        if episode not in self._index:
            self._index[episode] = fi.load_frame_index(self.store, episode)
        return self._index[episode]

    def shots(self, episode: str) -> dict:
        if episode not in self._shots:
            self._shots[episode] = sb.load_shots(self.store, episode)
        return self._shots[episode]


def _check_real_shots(context, cache: _EpisodeCache, targets) -> None:
    """Fail at once, before any work, if a requested (episode, shot) pair does not exist."""
    for episode, shot in targets:
        try:
            cf.shot_span(cache.shots(episode), episode, shot)
        except (cf.ShotNotFound, FileNotFoundError) as e:
            raise _fail(context, str(e)) from None


@dg.asset(
    partitions_def=episode_shot_partitions,
    deps=[frame_index, shot_boundaries],
    backfill_policy=_SINGLE_RUN,
    group_name=GROUP,
    code_version="1",
    kinds={"image"},
    description="Kept frames of each shot: holds, pans over a still drawing, repeats, flashes, black/white "
                "and transition frames dropped (each with its reason); keyframes marked.",
)
def clean_frames(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    store = storage.media()
    cache = _EpisodeCache(store)
    targets = _targets(context)
    _check_real_shots(context, cache, targets)
    t0 = time.perf_counter()
    rows, sheet_images, totals = [], [], {"frames": 0, "kept": 0, "keyframes": 0}
    dropped: dict[str, int] = {}
    for n, (episode, shot) in enumerate(targets):
        doc = cache.shots(episode)
        transitions = transition_frames(doc["boundaries"])
        res = cf.select_clean_frames(store, cache.index(episode), doc, transitions, episode, shot)
        totals["frames"] += res.n_frames
        totals["kept"] += len(res.kept)
        totals["keyframes"] += sum(k.is_keyframe for k in res.kept)
        for r, c in res.dropped_by_reason.items():
            dropped[r] = dropped.get(r, 0) + c
        rows.append({"shot": f"{episode}/{shot}", "frames": res.n_frames, "kept": len(res.kept),
                     **{r: c for r, c in sorted(res.dropped_by_reason.items())}})
        keys = [k for k in res.kept if k.is_keyframe] or res.kept[:1]
        if keys and len(sheet_images) < 12:
            sheet_images.append(cv2.imread(str(keys[0].path), cv2.IMREAD_REDUCED_COLOR_4))
        progress.report("clean frames", n + 1, len(targets))
    sheet = contact_sheet(sheet_images)
    reasons = sorted(dropped)
    single = len(targets) == 1
    folder = store.partition_dir(cf.ASSET, *targets[0]) if single else store.partition_dir(cf.ASSET, targets[0][0])
    return dg.MaterializeResult(metadata={
        "shots": len(targets),
        **totals,
        "dropped": dg.MetadataValue.json(dropped),
        "kept_fraction": round(totals["kept"] / max(totals["frames"], 1), 4),
        "seconds": round(time.perf_counter() - t0, 2),
        "per_shot": dg.MetadataValue.md(_per_shot_table(rows, ["shot", "frames", "kept", *reasons])),
        "keyframes_preview": dg.MetadataValue.md(markdown_image(png_bytes(sheet), "keyframes")),
        "dagster/uri": MediaStore.uri(folder),
    })


@dg.asset(
    partitions_def=episode_shot_partitions,
    deps=[clean_frames],
    backfill_policy=_SINGLE_RUN,
    group_name=GROUP,
    code_version="1",
    kinds={"lancedb"},
    check_specs=[
        dg.AssetCheckSpec("no_nan_vectors", asset="frame_embeddings"),
        dg.AssetCheckSpec("rows_equal_kept_frames", asset="frame_embeddings",
                          description="LanceDB rows of these shots == their kept frames (no duplicates, none missing)."),
    ],
    description="One LanceDB row per kept frame (table `frames`) with its CLIP vector; each shot's rows "
                "replaced in one commit.",
)
def frame_embeddings(context: dg.AssetExecutionContext, storage: StorageResource,
                     embedder: EmbedderResource) -> dg.MaterializeResult:
    store = storage.media()
    cache = _EpisodeCache(store)
    targets = _targets(context)
    _check_real_shots(context, cache, targets)
    t0 = time.perf_counter()
    model, warning = embedder.load()
    load_s = time.perf_counter() - t0
    if warning:
        context.log.warning(warning)
    tables = storage.tables()
    note = tables.open_frames(model.model_id, model.dim)
    if note:
        context.log.warning(note)
    kept_total = rows_total = nan_total = 0
    embed_s = write_s = 0.0
    mismatched = []
    for n, (episode, shot) in enumerate(targets):
        doc = cf.load_shot_frames(store, episode, shot)
        folder = store.partition_dir(cf.ASSET, episode, shot)
        index = cache.index(episode)
        kept = [cf.KeptFrame(r["frame"], r["pts"], folder / r["image"], r.get("quality", float("nan")),
                             bool(r.get("keyframe"))) for r in doc["frames"] if r["kept"]]
        out = emb.embed_shot(tables, model, episode, shot, kept, index.width, index.height)
        kept_total += len(kept)
        nan_total += out["nan_vectors"]
        embed_s += out["embed_seconds"]
        write_s += out["write_seconds"]
        count = tables.count(episode, shot)
        rows_total += count
        if count != len(kept):
            mismatched.append(f"{episode}/{shot}: {count} rows for {len(kept)} kept frames")
        progress.report("embeddings", n + 1, len(targets))
    return dg.MaterializeResult(
        metadata={
            "shots": len(targets),
            "rows": rows_total,
            "embedding_model": model.model_id,
            "dim": model.dim,
            "offline_fallback": bool(warning),
            "model_load_seconds": round(load_s, 3),
            "embed_seconds": round(embed_s, 2),
            "images_per_second": round(kept_total / embed_s, 1) if embed_s else 0.0,
            "write_seconds": round(write_s, 2),
            "table_version": tables.version,
            "dagster/uri": tables.db_uri,
        },
        check_results=[
            dg.AssetCheckResult(check_name="no_nan_vectors", passed=nan_total == 0,
                                metadata={"nan_vectors": nan_total}),
            dg.AssetCheckResult(check_name="rows_equal_kept_frames", passed=not mismatched,
                                metadata={"rows": rows_total, "kept_frames": kept_total,
                                          "mismatches": dg.MetadataValue.json(mismatched[:20])}),
        ],
    )
