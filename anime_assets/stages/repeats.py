"""Openings, endings and other repeated sequences across the season -> LanceDB `shot_repeats`.

Each shot's signature is its kept frames' stored vectors (CLIP, else the colour-layout
descriptor), in order; `vision.repeats.find_repeats` finds runs of shots that repeat across
episodes with the same cuts. The table is replaced whole: one row per flagged shot.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa

from anime_assets.stages.shot_boundaries import load_shots
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaStore
from anime_assets.vision.repeats import ShotSignature, find_repeats, flag_map

TABLE = "shot_repeats"
SCHEMA = pa.schema([
    pa.field(fs.ID, pa.string(), nullable=False),  # "<episode>/<shot>"
    pa.field(fs.EPISODE, pa.string(), nullable=False),
    pa.field(fs.SHOT, pa.string(), nullable=False),
    pa.field("group", pa.string(), nullable=False),  # "r00", one per repeated sequence
    pa.field("kind", pa.string(), nullable=False),  # opening | ending | repeat
    pa.field("group_seconds", pa.float32()),
    pa.field("group_similarity", pa.float32()),
    pa.field("episodes_in_group", pa.int32()),
    pa.field(fs.UPDATED_AT, pa.timestamp("us", tz="UTC")),
], metadata={b"shot_repeats_schema_version": b"1"})


def signatures(store: MediaStore, tables, episodes: list[str]) -> dict[str, list[ShotSignature]]:
    ids, vectors = tables.read_vectors()
    by_shot = defaultdict(list)
    for fid, v in zip(ids, vectors):
        episode, shot, _ = fid.split("/")
        by_shot[(episode, shot)].append((fid, v))
    out = {}
    for episode in episodes:
        doc = load_shots(store, episode)
        sigs = []
        for s in doc["shots"]:
            rows = sorted(by_shot.get((episode, s["shot"]), []))
            if rows:
                sigs.append(ShotSignature(episode, s["shot"], s["start"], s["end"], float(doc["fps"]),
                                          np.stack([v for _, v in rows]).astype(np.float32)))
        out[episode] = sigs
    return out


def find_and_write(store: MediaStore, tables, db, episodes: list[str], min_seconds: float):
    groups = find_repeats(signatures(store, tables, episodes), min_seconds=min_seconds)
    flags = flag_map(groups)
    info = {g.group: g for g in groups}
    now = datetime.now(timezone.utc)
    rows = [{fs.ID: f"{e}/{s}", fs.EPISODE: e, fs.SHOT: s, "group": gid, "kind": kind,
             "group_seconds": info[gid].seconds, "group_similarity": info[gid].similarity,
             "episodes_in_group": len({m[0] for m in info[gid].members}), fs.UPDATED_AT: now}
            for (e, s), (gid, kind) in sorted(flags.items())]
    data = pa.Table.from_pylist(rows, schema=SCHEMA)
    db.create_table(TABLE, data=data, mode="overwrite")  # the whole season, in one commit
    return groups, rows
