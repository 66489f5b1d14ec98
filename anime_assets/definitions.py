"""The Dagster Definitions: every asset, check, sensor and resource of anime_assets."""

from __future__ import annotations

import dagster as dg

from anime_assets.defs import clusters, episodes, faces, layers, sensors, shots
from anime_assets.defs.resources import (
    EmbedderResource, LayerModelsResource, ShotDetectorResource, StorageResource,
)

ALL_ASSETS = [
    episodes.source_video, episodes.frame_index, episodes.shot_boundaries,
    shots.clean_frames, shots.frame_embeddings, faces.frame_faces, layers.shot_layers,
    clusters.episode_clusters, clusters.season_clusters,
]

# The main job: the whole graph. Launch it for one episode's shots with the range tags (see README).
episode_job = dg.define_asset_job(
    "episode_assets",
    selection=dg.AssetSelection.assets(*sensors.EPISODE_ASSETS),
    partitions_def=episodes.episode_partitions,
    description="Source video, decode pass and shot boundaries of one episode.",
)


def resources() -> dict:
    return {
        "storage": StorageResource(),
        "shot_detector": ShotDetectorResource(),
        "embedder": EmbedderResource(),
        "layer_models": LayerModelsResource(),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[episode_job],
    sensors=[sensors.episode_inbox, sensors.episode_pipeline],
    resources=resources(),
    executor=dg.in_process_executor,  # 2 cores: steps run one after another; models stay loaded per run
)
