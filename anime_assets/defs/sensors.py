"""Sensors: the inbox registers episodes; the pipeline sensor moves each episode to its next stage.

1. `episode_inbox`: a new, settled video file in the episodes folder becomes an episode partition
   and a run of the episode-level assets.
2. `episode_pipeline`: a new shot_boundaries materialization launches ONE run of the shot-level
   assets over exactly that episode's real shots; once every shot has embeddings newer than its
   shot boundaries, the episode is clustered, then the season.
3. `dead_runs`: runs whose process died are marked failed (see anime_assets.instance).
Run keys make every request idempotent, so a sensor tick that repeats itself launches nothing twice.
"""


import json
import time

import dagster as dg

from anime_assets.defs.annotations import frame_captions, frame_faces, frame_pose
from anime_assets.defs.characters import character_registry
from anime_assets.defs.clusters import episode_clusters, season_clusters, shot_repeats
from anime_assets.defs.episodes import frame_index, shot_boundaries, source_video
from anime_assets.defs.partitions import EPISODES, shot_range_tags
from anime_assets.defs.resources import StorageResource
from anime_assets.defs.layers import BACKGROUND, CHARACTER, EFFECT
from anime_assets.defs.shots import clean_frames, frame_embeddings
from anime_assets.instance import fail_dead_runs
from anime_assets.keys import shot_key

EPISODE_ASSETS = [source_video.key, frame_index.key, shot_boundaries.key]
SHOT_ASSETS = [clean_frames.key, frame_embeddings.key, frame_faces.key]
# The layers are the heaviest stage (~0.4-0.9 s per kept frame): a run of their own after the
# shot run, so embeddings and clusters of a new episode are not held back by them. Pose and
# captions need the layers' character instances, so they run after the layers in that run.
LAYER_ASSETS = [CHARACTER.key, EFFECT.key, BACKGROUND.key, frame_pose.key, frame_captions.key]
# Runs the CLI executes itself carry this tag; the pipeline sensor leaves their next stages to the CLI.
CLI_TAG = "anime_assets/launched_by"
SETTLE_SECONDS = 5.0  # a file still being copied keeps changing; wait until it has been still this long


def _newly_skipped(context: dg.SensorEvaluationContext, skipped: dict[str, str]) -> None:
    """Log each unusable inbox file once (the cursor remembers which were reported)."""
    reported = set(json.loads(context.cursor)) if context.cursor else set()
    for name, why in skipped.items():
        if name not in reported:
            context.log.warning(f"skipped {why}")
    context.update_cursor(json.dumps(sorted(skipped)))


@dg.sensor(
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=EPISODE_ASSETS,
    description="Registers new video files in the episodes folder as episode partitions and processes them; "
                "files it cannot use (no key, colliding keys) are named with the reason in its log.",
)
def episode_inbox(context: dg.SensorEvaluationContext, storage: StorageResource):
    inbox = storage.inbox()
    known = set(context.instance.get_dynamic_partitions(EPISODES))
    new_keys, requests = [], []
    now = time.time()
    with inbox.locked():
        scan = inbox.scan()
        for key, name in scan.files.items():
            if key in known or now - (inbox.folder / name).stat().st_mtime < SETTLE_SECONDS:
                continue
            inbox.claim(key, name)
            new_keys.append(key)
            requests.append(dg.RunRequest(partition_key=key, run_key=f"ingest-{key}"))
            context.log.info(f"new episode {key} from {name}")
    _newly_skipped(context, scan.skipped)
    skipped = f"; {len(scan.skipped)} file(s) skipped: " + " | ".join(scan.skipped.values()) if scan.skipped else ""
    if not new_keys:
        return dg.SkipReason(f"no new episodes in {inbox.folder}{skipped}")
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[dg.AddDynamicPartitionsRequest(EPISODES, new_keys)],
    )


@dg.sensor(
    minimum_interval_seconds=30,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Marks failed the runs whose process is gone (killed, terminal closed), so no run stays "
                "STARTED for ever and the run queue moves on.",
)
def dead_runs(context: dg.SensorEvaluationContext):
    failed = fail_dead_runs(context.instance)
    for run_id in failed:
        context.log.warning(f"run {run_id}: its process is gone; marked failed")
    return dg.SkipReason(f"marked {len(failed)} dead run(s) failed" if failed else "no dead runs")


def _latest(instance: dg.DagsterInstance, key: dg.AssetKey, partition: str | None):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition] if partition else None),
        limit=1, ascending=False,
    ).records
    return records[0] if records else None


def shots_of(record) -> int:
    meta = record.asset_materialization.metadata
    return int(meta["shots"].value) if "shots" in meta else 0


def _from_cli(instance: dg.DagsterInstance, record) -> bool:
    run = instance.get_run_by_id(record.run_id)
    return run is not None and CLI_TAG in run.tags


def _fetch_new(instance: dg.DagsterInstance, key: dg.AssetKey, after: int, limit: int):
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, after_storage_id=after), limit=limit).records
    return [r for r in records if not _from_cli(instance, r)], max([after, *(r.storage_id for r in records)])


def next_stage_requests(instance: dg.DagsterInstance, after_storage_id: int) -> tuple[list[dg.RunRequest], int]:
    """Run requests for episodes whose shot boundaries or embeddings changed since `after_storage_id`."""
    requests: list[dg.RunRequest] = []
    new_bounds, c1 = _fetch_new(instance, shot_boundaries.key, after_storage_id, 1000)
    for rec in new_bounds:
        episode = rec.partition_key
        n = shots_of(rec)
        if n:
            requests.append(dg.RunRequest(
                run_key=f"shots-{episode}-{rec.storage_id}", asset_selection=SHOT_ASSETS,
                tags=shot_range_tags(episode, n),
            ))
    new_embeds, c2 = _fetch_new(instance, frame_embeddings.key, after_storage_id, 10000)
    touched = set()
    for rec in new_embeds:
        touched.add(rec.partition_key.split("|")[0])
    for episode in sorted(touched):
        bounds = _latest(instance, shot_boundaries.key, episode)
        if bounds is None:
            continue
        n = shots_of(bounds)
        done = [_latest(instance, frame_embeddings.key, f"{episode}|{shot_key(i)}") for i in range(n)]
        if n and all(r is not None and r.storage_id > bounds.storage_id for r in done):
            last = max(r.storage_id for r in done)
            requests.append(dg.RunRequest(run_key=f"clusters-{episode}-{last}", partition_key=episode,
                                          asset_selection=[episode_clusters.key]))
            requests.append(dg.RunRequest(run_key=f"layers-{episode}-{last}", asset_selection=LAYER_ASSETS,
                                          tags=shot_range_tags(episode, n)))
    # Once every shot's captions (the last asset of the layers run) are newer than the shot
    # boundaries, the episode's characters are matched to the registry.
    new_caps, c4 = _fetch_new(instance, frame_captions.key, after_storage_id, 10000)
    for episode in sorted({rec.partition_key.split("|")[0] for rec in new_caps}):
        bounds = _latest(instance, shot_boundaries.key, episode)
        n = shots_of(bounds) if bounds is not None else 0
        done = [_latest(instance, frame_captions.key, f"{episode}|{shot_key(i)}") for i in range(n)]
        if n and all(r is not None and r.storage_id > bounds.storage_id for r in done):
            last = max(r.storage_id for r in done)
            requests.append(dg.RunRequest(run_key=f"characters-{episode}-{last}", partition_key=episode,
                                          asset_selection=[character_registry.key]))
    new_clusters, c3 = _fetch_new(instance, episode_clusters.key, after_storage_id, 1000)
    if new_clusters:
        last = max(r.storage_id for r in new_clusters)
        requests.append(dg.RunRequest(run_key=f"season-{last}", asset_selection=[season_clusters.key,
                                                                                 shot_repeats.key]))
    return requests, max(c1, c2, c3, c4)


@dg.sensor(
    minimum_interval_seconds=15,
    default_status=dg.DefaultSensorStatus.RUNNING,
    asset_selection=[*SHOT_ASSETS, *LAYER_ASSETS, character_registry.key, episode_clusters.key, season_clusters.key,
                     shot_repeats.key],
    description="Launches each episode's next stage: its real shots in one run, then its clusters and (a run of "
                "their own) its layers, pose and captions, then its characters and the season's clusters.",
)
def episode_pipeline(context: dg.SensorEvaluationContext):
    after = json.loads(context.cursor)["after"] if context.cursor else 0
    requests, cursor = next_stage_requests(context.instance, after)
    context.update_cursor(json.dumps({"after": cursor}))
    if not requests:
        return dg.SkipReason("nothing new")
    return requests
