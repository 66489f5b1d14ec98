"""Cluster assets: UMAP + HDBSCAN per episode, and across every episode."""


import dagster as dg

from anime_assets.defs.partitions import episode_partitions
from anime_assets.defs.resources import StorageResource
from anime_assets.defs.shots import frame_embeddings
from anime_assets.stages import clusters as cl
from anime_assets.vision.contact import markdown_image

GROUP = "clusters"
MIN_REPEAT_SECONDS = 20.0  # an opening or ending lasts far longer; shorter repeats are stock shots


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
    index = tables.ensure_vector_index()  # from 100k rows: text queries use it
    return dg.MaterializeResult(metadata={**_metadata(out, tables), "vector_index": index or "none needed"})


@dg.asset(
    deps=[episode_clusters],
    group_name=GROUP,
    code_version="1",
    kinds={"lancedb"},
    description="Openings, endings and other shot sequences repeated across episodes (same shots, same cuts), "
                "from the frames' vectors; LanceDB `shot_repeats` flags their shots so trainers can leave "
                "them out or keep one copy.",
)
def shot_repeats(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    import lancedb

    from anime_assets.defs.partitions import EPISODES
    from anime_assets.stages import repeats as rp

    tables = storage.frames_for_reading()
    episodes = sorted(e for e in context.instance.get_dynamic_partitions(EPISODES)
                      if tables.count(e) > 0)
    groups, rows = rp.find_and_write(storage.media(), tables, lancedb.connect(tables.db_uri), episodes,
                                     MIN_REPEAT_SECONDS)
    table = "| group | kind | seconds | episodes | shots |\n|---|---|---|---|---|\n" + "".join(
        f"| {g.group} | {g.kind} | {g.seconds:.1f} | {len(g.members)} | "
        f"{'; '.join(f'{e}: {s[0]}-{s[-1]}' for e, s in g.members[:6])} |\n" for g in groups)
    return dg.MaterializeResult(metadata={
        "episodes": len(episodes), "groups": len(groups), "flagged_shots": len(rows),
        "openings": sum(g.kind == "opening" for g in groups), "endings": sum(g.kind == "ending" for g in groups),
        "repeats": dg.MetadataValue.md(table if groups else "no repeated sequences"), "dagster/uri": tables.db_uri})
