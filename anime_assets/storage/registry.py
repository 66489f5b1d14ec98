"""The character registry's three LanceDB tables: `characters`, `outfits`, `character_instances`.

Registry rows (characters, outfits) are upserted by id and never deleted, so an id once given
stays valid (a merged character keeps its row and points at the one it became). Instance rows
are replaced per episode in one commit, like every other table. Updates of the registry are
serialised by a file lock beside the database: two episodes finishing at once must not both
create "the new character".
"""

from __future__ import annotations

import contextlib
import fcntl
from datetime import datetime, timedelta, timezone
from pathlib import Path

import lancedb
import pyarrow as pa

from anime_assets.storage import schema as fs
from anime_assets.storage.tables import FrameTables, _ensure_primary_key, _list_tables, _replace_scope, partition_filter


class RegistryStore:
    def __init__(self, db_uri: str | Path, dim: int):
        self.db_uri = str(db_uri)
        self.dim = dim
        self.db = lancedb.connect(self.db_uri, read_consistency_interval=timedelta(0))
        self._tables: dict[str, object] = {}

    def _table(self, name: str, schema: pa.Schema, key: str):
        if name not in self._tables:
            if name in set(_list_tables(self.db)):
                table = self.db.open_table(name)
            else:
                table = self.db.create_table(name, schema=schema)
            if key == fs.ID:
                _ensure_primary_key(self.db, name, table)
            self._tables[name] = table
        return self._tables[name]

    @property
    def characters(self):
        return self._table(fs.CHARACTERS_TABLE, fs.characters_schema(self.dim), fs.CHARACTER_ID)

    @property
    def outfits(self):
        return self._table(fs.OUTFITS_TABLE, fs.outfits_schema(self.dim), fs.OUTFIT_ID)

    @property
    def instances(self):
        return self._table(fs.CHARACTER_INSTANCES_TABLE, fs.character_instances_schema(self.dim), fs.ID)

    # ---------------------------------------------------------------- reads
    @staticmethod
    def _all(table, where: str | None = None) -> list[dict]:
        q = table.search().limit(None)
        if where:
            q = q.where(where)
        return q.to_arrow().to_pylist()

    def read_characters(self) -> list[dict]:
        return sorted(self._all(self.characters), key=lambda r: r[fs.CHARACTER_ID])

    def read_outfits(self) -> list[dict]:
        return sorted(self._all(self.outfits), key=lambda r: r[fs.OUTFIT_ID])

    def read_instances(self, episode: str | None = None) -> list[dict]:
        return sorted(self._all(self.instances, partition_filter(episode)), key=lambda r: r[fs.ID])

    # ---------------------------------------------------------------- writes
    def _upsert(self, table, schema: pa.Schema, key: str, rows: list[dict]) -> None:
        if not rows:
            return
        now = datetime.now(timezone.utc)
        data = pa.Table.from_pylist([{**r, fs.UPDATED_AT: now} for r in rows], schema=schema)
        FrameTables._retry(lambda: table.merge_insert(key).when_matched_update_all()
                           .when_not_matched_insert_all().execute(data))

    def upsert_characters(self, rows: list[dict]) -> None:
        self._upsert(self.characters, fs.characters_schema(self.dim), fs.CHARACTER_ID, rows)

    def upsert_outfits(self, rows: list[dict]) -> None:
        self._upsert(self.outfits, fs.outfits_schema(self.dim), fs.OUTFIT_ID, rows)

    def replace_episode_instances(self, episode: str, rows: list[dict]) -> None:
        schema = fs.character_instances_schema(self.dim)
        now = datetime.now(timezone.utc)
        for r in rows:
            if r[fs.EPISODE] != episode:
                raise ValueError(f"instance {r[fs.ID]!r} is not of episode {episode}")
        data = pa.Table.from_pylist([{**r, fs.UPDATED_AT: now} for r in rows], schema=schema)
        _replace_scope(self.instances, data, partition_filter(episode), episode, "")

    def reassign(self, column: str, old: str, new: str, where: str | None = None) -> None:
        """Set `column` from `old` to `new` on instance rows (ids are validated registry ids)."""
        for v in (old, new):
            if not _is_registry_id(v):
                raise ValueError(f"not a registry id: {v!r}")
        clause = f"{column} = '{old}'" + (f" AND {where}" if where else "")
        FrameTables._retry(lambda: self.instances.update(where=clause, values={column: new}))

    @contextlib.contextmanager
    def lock(self):
        """Exclusive lock over registry updates (local databases; a no-op for object stores)."""
        if "://" in self.db_uri:
            yield
            return
        path = Path(self.db_uri) / ".registry.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)


def _is_registry_id(v: str) -> bool:
    return len(v) == 5 and v[0] in "co" and v[1:].isdigit()
