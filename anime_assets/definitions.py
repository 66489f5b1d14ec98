"""The Dagster Definitions: every asset, check, sensor and resource of anime_assets.

The models each stage runs are resolved here, once, from local files (`models.selection`), and
each asset's code version carries the ids of its models: pull a better model or choose another
(`ANIME_ASSETS_<STAGE>=...`), reload the definitions, and exactly the partitions made with the
old model show as stale in the UI.
"""

from __future__ import annotations

import dagster as dg

from anime_assets.defs import annotations, characters, clusters, episodes, layers, sensors, shots
from anime_assets.defs.resources import (
    AnnotationModelsResource, EmbedderResource, LayerModelsResource, ShotDetectorResource, StorageResource,
)
from anime_assets.models import selection

BASE_ASSETS = [
    episodes.source_video, episodes.frame_index, episodes.shot_boundaries,
    shots.clean_frames, shots.frame_embeddings, annotations.frame_faces, layers.shot_layers,
    annotations.frame_pose, annotations.frame_captions, characters.character_registry,
    clusters.episode_clusters, clusters.season_clusters, clusters.shot_repeats,
]


def expression_choice() -> str:
    return selection.env_choice("expression")


def model_versions(models: dict[str, selection.Resolved], expression: str = "auto") -> dict[str, str]:
    """Asset key -> the ids of the models it runs (appended to its code version)."""
    seg = f"{models['segmenter'].model_id}+{models['inpainter'].model_id}"
    source, _ = selection.resolve_expression(expression, models["tagger"], models["embedder"])
    clip = models["embedder"].model_id if models["embedder"].name == selection.CANDIDATES["embedder"]["clip"] else "none"
    return {
        "shot_boundaries": "transnetv2@" + selection.model_version("transnetv2"),
        "frame_embeddings": models["embedder"].model_id,
        "character_layers": seg, "effect_layers": seg, "background_layers": seg,
        "frame_faces": f"{models['faces'].model_id}+expr:"
                       + selection.expression_model_id(source, models["tagger"], models["embedder"]),
        "frame_pose": models["pose"].model_id,
        "frame_captions": f"tagger:{models['tagger'].model_id}+clip:{clip}",
    }


def with_model_versions(assets, versions: dict[str, str]):
    def tie(spec: dg.AssetSpec) -> dg.AssetSpec:
        part = versions.get(spec.key.to_user_string())
        return spec.replace_attributes(code_version=f"{spec.code_version}|{part}") if part else spec

    return [a.map_asset_specs(tie) for a in assets]


MODELS = selection.resolve_all()
ALL_ASSETS = with_model_versions(BASE_ASSETS, model_versions(MODELS, expression_choice()))

# The main job: the whole graph. Launch it for one episode's shots with the range tags (see README).
episode_job = dg.define_asset_job(
    "episode_assets",
    selection=dg.AssetSelection.assets(*sensors.EPISODE_ASSETS),
    partitions_def=episodes.episode_partitions,
    description="Source video, decode pass and shot boundaries of one episode.",
)


def resources() -> dict:
    """Model choices come from ANIME_ASSETS_<STAGE> (default auto), the same the code versions use."""
    return {
        "storage": StorageResource(),
        "shot_detector": ShotDetectorResource(),
        "embedder": EmbedderResource(embedder=selection.env_choice("embedder")),
        "layer_models": LayerModelsResource(segmenter=selection.env_choice("segmenter"),
                                            inpainter=selection.env_choice("inpainter")),
        "annotation_models": AnnotationModelsResource(faces=selection.env_choice("faces"),
                                                      pose=selection.env_choice("pose"),
                                                      tagger=selection.env_choice("tagger"),
                                                      expression=expression_choice()),
    }


defs = dg.Definitions(
    assets=ALL_ASSETS,
    jobs=[episode_job, characters.edit_characters],
    sensors=[sensors.episode_inbox, sensors.episode_pipeline, sensors.dead_runs],
    resources=resources(),
    executor=dg.in_process_executor,  # 2 cores: steps run one after another; models stay loaded per run
)
