"""Cluster assets: UMAP + HDBSCAN per episode, and across every episode."""


import dagster as dg

from anime_assets.defs.partitions import episode_partitions
from anime_assets.defs.resources import StorageResource
from anime_assets.defs.shots import frame_embeddings
from anime_assets.stages import clusters as cl
from anime_assets.vision.contact import markdown_image

GROUP = "clusters"


def _metadata(out: dict, tables) -> dict:
    md = {
        "frames": out["frames"], "clusters": out["clusters"], "noise_frames": out["noise"],
        "rows_updated": out["rows_updated"], "seconds": round(out["seconds"], 2),
        "table_version": tables.version, "dagster/uri": tables.db_uri,
    }
    if out["scatter_png"]:
        md["umap"] = dg.MetadataValue.md(markdown_image(out["scatter_png"], "UMAP, coloured by cluster"))
    return md


@dg.asset(
    partitions_def=episode_partitions,
    deps=[frame_embeddings],  # every shot of the episode (Dagster maps episode x shot -> episode)
    group_name=GROUP,
    code_version="1",
    kinds={"lancedb"},
    description="UMAP + HDBSCAN over one episode's frames; writes cluster_episode and the 2-D map back to `frames`.",
)
def episode_clusters(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    tables = storage.frames_for_reading()
    out = cl.cluster_episode(tables, context.partition_key)
    return dg.MaterializeResult(metadata=_metadata(out, tables))


@dg.asset(
    deps=[episode_clusters],
    group_name=GROUP,
    code_version="1",
    kinds={"lancedb"},
    description="UMAP + HDBSCAN over every episode's frames together; writes cluster_global.",
)
def season_clusters(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    tables = storage.frames_for_reading()
    out = cl.cluster_all(tables)
    tables.optimize()  # compaction: every partition replace leaves small fragments behind
    return dg.MaterializeResult(metadata=_metadata(out, tables))
