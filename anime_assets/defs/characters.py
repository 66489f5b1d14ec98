"""The character registry (per episode, after its layers and faces) and the job that edits it.

`character_registry` matches one episode's character instances to the registry kept across
episodes (see stages/characters.py). `edit_characters` is the same edit as the CLI's
`anime-assets characters name | merge | split`, launched from the UI's launchpad with run config.
"""


import time

import dagster as dg

from anime_assets.defs.annotations import frame_faces
from anime_assets.defs.layers import CHARACTER
from anime_assets.defs.partitions import episode_partitions
from anime_assets.defs.resources import StorageResource
from anime_assets.stages import characters as chs
from anime_assets.storage.tables import faces_table, layers_table
from anime_assets.vision.contact import markdown_image

GROUP = "characters"


def _table_md(rows: list[dict]) -> str:
    head = "| id | name | instances | episodes | outfits | sample |\n|---|---|---|---|---|---|\n"
    body = ""
    for r in rows[:50]:
        sample = ""
        if r["sample"]:
            from anime_assets.storage.media import MediaStore

            path = MediaStore.path_from_uri(r["sample"])
            if path.is_file():
                sample = markdown_image(_thumb(path.read_bytes()), r["id"])
        body += (f"| {r['id']} | {r['name'] or '(unnamed)'} | {r['instances']} | {', '.join(r['episodes'])} | "
                 f"{', '.join(r['outfits'])} | {sample} |\n")
    return head + body


def _thumb(png: bytes, height: int = 96) -> bytes:
    import cv2
    import numpy as np

    im = cv2.imdecode(np.frombuffer(png, np.uint8), cv2.IMREAD_UNCHANGED)
    scale = height / im.shape[0]
    im = cv2.resize(im, (max(1, round(im.shape[1] * scale)), height), interpolation=cv2.INTER_AREA)
    return cv2.imencode(".png", im)[1].tobytes()


@dg.asset(
    partitions_def=episode_partitions,
    deps=[CHARACTER.key, frame_faces],  # every shot of the episode (episode x shot -> episode)
    group_name=GROUP,
    code_version="1|" + chs.DESCRIPTOR,
    kinds={"lancedb"},
    description="Matches the episode's character instances to the persistent registry: outfits by look, "
                "characters by head colours (hair, eyes, skin), so one character in two outfits is one id. "
                "Writes `character_instances` rows; names, merges and splits are never overwritten.",
)
def character_registry(context: dg.AssetExecutionContext, storage: StorageResource) -> dg.MaterializeResult:
    episode = context.partition_key
    uri = storage.tables().db_uri
    t0 = time.perf_counter()
    obs = chs.episode_observations(layers_table(uri).read_partition(episode).to_pylist(),
                                   faces_table(uri).read_partition(episode).to_pylist())
    reg = chs.registry(uri)
    out = chs.assign_episode(reg, storage.media(), episode, obs)
    listing = chs.listing(reg)
    names = {r["id"]: r["name"] for r in listing}
    return dg.MaterializeResult(metadata={
        "instances": out["instances"], "outfit_clusters": out["outfit_clusters"],
        "new_characters": dg.MetadataValue.json(out["new_characters"]),
        "new_outfits": dg.MetadataValue.json(out["new_outfits"]),
        "characters_in_episode": dg.MetadataValue.json({f"{cid} {names.get(cid) or ''}".strip(): n
                                                         for cid, n in out["characters"].items()}),
        "registry": dg.MetadataValue.md(_table_md(listing)),
        "seconds": round(time.perf_counter() - t0, 2), "dagster/uri": uri,
    })


class CharacterEdit(dg.Config):
    """One edit of the registry: name (character, name), merge (character into target), or
    split (outfit of character becomes a new character)."""

    action: str  # name | merge | split
    character: str  # an id ("c0003") or a name
    name: str = ""  # for name
    target: str = ""  # for merge: the character it becomes
    outfit: str = ""  # for split: the outfit ("o0007") that is somebody else


@dg.op(description="Name, merge or split characters of the registry (the CLI's `anime-assets characters`).")
def apply_character_edit(context: dg.OpExecutionContext, config: CharacterEdit, storage: StorageResource) -> None:
    reg = chs.registry(storage.tables().db_uri)
    try:
        if config.action == "name":
            cid = chs.name_character(reg, config.character, config.name)
            context.log.info(f"{cid} is now named {config.name!r}")
        elif config.action == "merge":
            cid = chs.merge_characters(reg, storage.media(), config.character, config.target)
            context.log.info(f"{config.character} merged into {cid}")
        elif config.action == "split":
            cid = chs.split_outfit(reg, storage.media(), config.character, config.outfit)
            context.log.info(f"outfit {config.outfit} is now character {cid}")
        else:
            raise chs.RegistryEditError(f"unknown action {config.action!r}: name, merge or split")
    except chs.RegistryEditError as e:
        raise dg.Failure(description=str(e)) from None
    context.log.info("registry now: " + "; ".join(f"{r['id']} {r['name'] or '(unnamed)'} ({r['instances']})"
                                                   for r in chs.listing(reg)[:20]))


@dg.job(description="Edit the character registry from the launchpad: set action, character and name / target / "
                    "outfit in the run config. Names and merges survive re-clustering and backfills.")
def edit_characters():
    apply_character_edit()

