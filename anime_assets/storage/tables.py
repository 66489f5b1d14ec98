"""LanceDB `frames` table: one commit per partition replace, one embedding model per table.

Why merge_insert and not delete+add: a delete followed by an add is two commits, and a reader
between them sees the partition missing (or, with add first, doubled). `merge_insert` on the
primary key `id` with `when_not_matched_by_source_delete(<this partition>)` updates, inserts and
deletes that partition's rows in ONE commit. The table declares `id` as its (unenforced)
primary key; without it concurrent merge_inserts from several processes can each insert the
same new id and leave duplicates, with it Lance detects the conflict and retries.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import lancedb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from anime_assets.keys import validate_key
from anime_assets.storage import schema as fs

log = logging.getLogger(__name__)
VECTOR_INDEX_MIN_ROWS = 100_000

PRIMARY_KEY_META = b"lance-schema:unenforced-primary-key:position"
# Commit conflicts between writer processes are retried by Lance itself; these outer retries
# only cover the rare "too many conflicts" error under heavy contention.
WRITE_ATTEMPTS = 8


class FramesTableError(RuntimeError):
    """The frames table is missing, of another model, or rows do not fit its schema."""


@dataclass(frozen=True)
class ReplaceResult:
    episode: str
    shot: str
    rows: int
    inserted: int
    updated: int
    deleted: int
    version: int


def partition_filter(episode: str | None = None, shot: str | None = None) -> str | None:
    """SQL filter for a partition, built only from validated keys (so no quoting is possible)."""
    clauses = []
    if episode is not None:
        clauses.append(f"{fs.EPISODE} = '{validate_key(episode, 'episode')}'")
    if shot is not None:
        if episode is None:
            raise ValueError("a shot filter needs its episode")
        clauses.append(f"{fs.SHOT} = '{validate_key(shot, 'shot')}'")
    return " AND ".join(clauses) if clauses else None


class FrameTables:
    """The frames table of one LanceDB database (a local folder now, s3://... later)."""

    def __init__(
        self,
        db_uri: str | Path,
        storage_options: dict[str, str] | None = None,
        read_consistency_interval: timedelta | None = timedelta(0),
    ):
        # read_consistency_interval=0: every read checks for the latest version, so a reader
        # sees commits made by writer processes (the default would pin the first version seen).
        self.db_uri = str(db_uri)
        self.storage_options = storage_options
        self.db = lancedb.connect(
            self.db_uri,
            storage_options=storage_options,
            read_consistency_interval=read_consistency_interval,
        )
        self._table = None

    # ---- opening -----------------------------------------------------------------
    def open_frames(self, embedding_model: str | None = None, dim: int | None = None) -> str | None:
        """Create or open `frames` for vectors of `embedding_model` with `dim` floats.

        If the existing table holds another model's vectors (or another dim), its rows are
        kept as `frames__<old_model_slug>` and a fresh `frames` is started; the returned note
        says so (None when nothing happened). With no model given, opens the existing table
        as is (readers). LanceDB OSS cannot rename tables, so "kept" means copied then dropped;
        run this once (e.g. in the resource setup) before starting parallel writers.
        """
        if embedding_model is None:
            if not self._exists(fs.FRAMES_TABLE):
                raise FramesTableError(f"no '{fs.FRAMES_TABLE}' table in {self.db_uri}")
            self._table = self.db.open_table(fs.FRAMES_TABLE)
            return None
        if dim is None:
            raise ValueError("open_frames needs dim together with embedding_model")

        note = None
        if self._exists(fs.FRAMES_TABLE):
            table = self.db.open_table(fs.FRAMES_TABLE)
            old_model = fs.schema_embedding_model(table.schema)
            old_dim = fs.schema_dim(table.schema)
            if old_model == embedding_model and old_dim == dim:
                self._ensure_primary_key(table)
                self._table = table
                return None
            archived = self._archive(table, old_model or "unknown", old_dim)
            note = (
                f"'{fs.FRAMES_TABLE}' held vectors of {old_model!r} (dim {old_dim}); they are kept in "
                f"'{archived}' and a fresh '{fs.FRAMES_TABLE}' was started for {embedding_model!r} (dim {dim})"
            )
            log.warning(note)

        self._table = self._create(embedding_model, dim)
        return note

    @property
    def table(self):
        if self._table is None:
            raise FramesTableError("call open_frames() first")
        return self._table

    @property
    def embedding_model(self) -> str | None:
        return fs.schema_embedding_model(self.table.schema)

    @property
    def dim(self) -> int:
        return fs.schema_dim(self.table.schema)

    @property
    def version(self) -> int:
        """Current table version: record it to pin a dataset (see `pinned`)."""
        return self.table.version

    def pinned(self, version: int):
        """A read-only view of the table as of `version` (for reproducible training sets)."""
        table = self.db.open_table(fs.FRAMES_TABLE)
        table.checkout(version)
        return table

    def table_names(self) -> list[str]:
        return sorted(self._list_tables())

    # ---- writing -----------------------------------------------------------------
    def replace_partition(self, episode: str, shot: str, rows: pa.Table) -> ReplaceResult:
        """Make the partition (episode, shot) hold exactly `rows`, in one commit.

        `rows` may omit nullable columns (they become null; `updated_at` becomes now) and may be
        empty (the partition has no kept frames any more: its rows are deleted).
        """
        episode = validate_key(episode, "episode")
        shot = validate_key(shot, "shot")
        scope = partition_filter(episode, shot)
        table = self.table
        data = self._conform(rows, episode, shot)

        return _replace_scope(table, data, scope, episode, shot)

    def update_clusters(self, rows: pa.Table) -> int:
        """Write cluster columns (by id) back without touching vectors or other columns.

        `rows` has `id` plus any of the cluster columns; ids not in the table are ignored
        (a partition may have been replaced since the vectors were read). Returns rows updated.
        """
        wanted = fs.cluster_update_schema()
        present = [f for f in wanted if f.name in rows.column_names]
        if fs.ID not in rows.column_names or len(present) < 2:
            raise FramesTableError(f"update_clusters needs '{fs.ID}' and at least one of {fs.CLUSTER_COLUMNS}")
        extra = set(rows.column_names) - set(wanted.names)
        if extra:
            raise FramesTableError(f"update_clusters only writes {fs.CLUSTER_COLUMNS}, got {sorted(extra)}")
        if rows.num_rows == 0:
            return 0
        data = rows.select([f.name for f in present]).cast(pa.schema(present))
        _check_unique_ids(data)
        table = self.table
        result = self._retry(lambda: table.merge_insert(fs.ID).when_matched_update_all().execute(data))
        return int(result.num_updated_rows)

    def optimize(self, cleanup_older_than: timedelta = timedelta(days=7), delete_unverified: bool = False):
        """Compact small files (every partition replace adds some) and drop versions older than
        `cleanup_older_than`. Pinned versions older than that stop being readable."""
        return self.table.optimize(cleanup_older_than=cleanup_older_than, delete_unverified=delete_unverified)

    def ensure_vector_index(self, min_rows: int = VECTOR_INDEX_MIN_ROWS) -> str | None:
        """An IVF_SQ cosine index on the vectors once the table has `min_rows` rows (built again
        when the table grew 50% since). Below ~100k rows a flat search is as fast; at 1M rows
        the index answers filtered top-20 queries in ~23 ms p95 (bench/bench_query.py).
        Returns what it did, or None."""
        from lancedb.index import IvfSq

        n = self.table.count_rows()
        if n < min_rows:
            return None
        indexed = [i for i in self.table.list_indices() if fs.VECTOR in i.columns]
        if indexed:
            stats = self.table.index_stats(indexed[0].name)
            if stats is not None and stats.num_unindexed_rows < n // 2:
                if stats.num_unindexed_rows:
                    self.table.optimize()  # folds new rows into the existing index
                return "updated" if stats.num_unindexed_rows else None
        parts = max(1, round(n ** 0.5))
        self.table.create_index(fs.VECTOR, config=IvfSq(distance_type="cosine", num_partitions=parts), replace=True)
        return f"IVF_SQ index, {parts} partitions, {n} rows"

    # ---- reading -----------------------------------------------------------------
    def count(self, episode: str | None = None, shot: str | None = None) -> int:
        return self.table.count_rows(partition_filter(episode, shot))

    def read_partition(self, episode: str, shot: str | None = None, columns: list[str] | None = None) -> pa.Table:
        """Rows of one shot (or a whole episode), sorted by id."""
        query = self.table.search().where(partition_filter(episode, shot)).limit(None)
        if columns is not None:
            query = query.select(list(dict.fromkeys([fs.ID, *columns])))
        return query.to_arrow().sort_by(fs.ID)

    def read_vectors(self, episode: str | None = None) -> tuple[list[str], np.ndarray]:
        """(ids sorted, vectors (n, dim) float32) of an episode or of the whole table."""
        query = self.table.search().select([fs.ID, fs.VECTOR]).limit(None)
        scope = partition_filter(episode)
        if scope:
            query = query.where(scope)
        data = query.to_arrow().sort_by(fs.ID)
        dim = self.dim
        if data.num_rows == 0:
            return [], np.zeros((0, dim), np.float32)
        flat = pc.list_flatten(data.column(fs.VECTOR).combine_chunks())
        vectors = flat.to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)
        return data.column(fs.ID).to_pylist(), vectors

    # ---- internals ---------------------------------------------------------------
    def _conform(self, rows: pa.Table, episode: str, shot: str) -> pa.Table:
        """Cast `rows` to the table schema, filling optional columns; reject rows of other
        partitions, duplicate ids, or another model's vectors."""
        target = self.table.schema
        model = fs.schema_embedding_model(target)
        n = rows.num_rows
        unknown = set(rows.column_names) - set(target.names)
        if unknown:
            raise FramesTableError(f"columns not in the frames schema: {sorted(unknown)}")
        columns = []
        for field in target:
            defaulted = field.name in (fs.EMBEDDING_MODEL, fs.UPDATED_AT)
            if field.name in rows.column_names and not (defaulted and rows.column(field.name).null_count == n > 0):
                column = rows.column(field.name)
                try:
                    column = column.cast(field.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
                    raise FramesTableError(f"column {field.name!r}: cannot cast {column.type} to {field.type}: {exc}") from exc
            elif field.name == fs.EMBEDDING_MODEL:
                column = pa.array([model] * n, field.type)
            elif field.name == fs.UPDATED_AT:
                column = pa.array([datetime.now(timezone.utc)] * n, field.type)
            elif field.nullable:
                column = pa.nulls(n, field.type)
            else:
                raise FramesTableError(f"required column {field.name!r} missing")
            if not field.nullable and column.null_count:
                raise FramesTableError(f"column {field.name!r} has nulls")
            columns.append(column)
        data = pa.Table.from_arrays(columns, schema=target)
        if n == 0:
            return data

        for name, expected in ((fs.EPISODE, episode), (fs.SHOT, shot), (fs.EMBEDDING_MODEL, model)):
            values = set(data.column(name).to_pylist())
            if values != {expected}:
                raise FramesTableError(f"rows for {episode}/{shot} have {name} {sorted(map(str, values))}, expected {expected!r}")
        _check_unique_ids(data)
        prefix = f"{episode}/{shot}/"
        bad = [i for i in data.column(fs.ID).to_pylist() if not i.startswith(prefix)]
        if bad:
            raise FramesTableError(f"ids must start with {prefix!r}, got e.g. {bad[0]!r}")
        if data.column(fs.VECTOR).null_count:
            raise FramesTableError("rows without a vector")
        return data

    def _create(self, embedding_model: str, dim: int):
        schema = fs.frames_schema(dim, embedding_model)
        try:
            table = self.db.create_table(fs.FRAMES_TABLE, schema=schema)
        except (ValueError, OSError, RuntimeError) as exc:
            # Another process created it first: use theirs if it is for the same model.
            if not self._exists(fs.FRAMES_TABLE):
                raise
            table = self.db.open_table(fs.FRAMES_TABLE)
            if fs.schema_embedding_model(table.schema) != embedding_model or fs.schema_dim(table.schema) != dim:
                raise FramesTableError(f"'{fs.FRAMES_TABLE}' was created concurrently for another model") from exc
        self._ensure_primary_key(table)
        return table

    def _ensure_primary_key(self, table) -> None:
        _ensure_primary_key(self.db, fs.FRAMES_TABLE, table)

    def _archive(self, table, old_model: str, old_dim: int) -> str:
        """Copy `table` to a free `frames__<slug>` name, then drop `frames` (no rename in OSS)."""
        base = f"{fs.FRAMES_TABLE}__{fs.model_slug(old_model)}"
        if old_dim != fs.schema_dim(table.schema):
            base += f"_d{old_dim}"
        existing = set(self._list_tables())
        name, n = base, 2
        while name in existing:
            name, n = f"{base}__{n}", n + 1
        expected = table.count_rows()
        reader = table.search().limit(None).to_batches()
        archived = self.db.create_table(name, data=reader, schema=table.schema)
        if archived.count_rows() != expected:
            raise FramesTableError(f"archiving to {name!r} copied {archived.count_rows()} of {expected} rows; kept both")
        self.db.drop_table(fs.FRAMES_TABLE)
        return name

    def _exists(self, name: str) -> bool:
        return name in set(self._list_tables())

    def _list_tables(self) -> list[str]:
        return _list_tables(self.db)

    @staticmethod
    def _retry(op):
        delay = 0.05
        for attempt in range(WRITE_ATTEMPTS):
            try:
                return op()
            except Exception as exc:  # Lance raises generic errors for commit conflicts
                text = str(exc).lower()
                retryable = any(word in text for word in ("conflict", "retry", "concurrent", "too many"))
                if not retryable or attempt == WRITE_ATTEMPTS - 1:
                    raise
                log.info("frames write conflict (attempt %d), retrying: %s", attempt + 1, exc)
                time.sleep(delay)
                delay = min(delay * 2, 1.0)
        raise AssertionError("unreachable")


def _check_unique_ids(data: pa.Table) -> None:
    ids = data.column(fs.ID)
    if pc.count_distinct(ids).as_py() != len(ids):
        raise FramesTableError("duplicate ids in rows")


def rows_from_records(records: list[dict[str, Any]], dim: int) -> pa.Table:
    """Build a frames table from a list of dicts (tests, small writers); missing keys -> null."""
    schema = fs.frames_schema(dim)
    return pa.Table.from_pylist(records, schema=schema) if records else schema.empty_table()


class KeyedTable:
    """A per-frame side table keyed by the frames' `id` (layers now; pose, faces later).

    Same write rule as `frames`: each shot's rows replaced in ONE merge_insert commit on an
    unenforced primary key, so re-running a partition never duplicates or drops rows.
    """

    def __init__(self, db_uri: str | Path, name: str, schema: pa.Schema,
                 storage_options: dict[str, str] | None = None):
        self.db_uri = str(db_uri)
        self.name = name
        self.schema = schema
        self.db = lancedb.connect(self.db_uri, storage_options=storage_options,
                                  read_consistency_interval=timedelta(0))
        self._table = None

    @property
    def table(self):
        if self._table is None:
            if self.name in set(_list_tables(self.db)):
                self._table = self.db.open_table(self.name)
                if _schema_versions(self._table.schema) != _schema_versions(self.schema):
                    # Rows of an older schema cannot take the new columns. The table is derived
                    # data: the asset's code version changed with the schema, so its partitions
                    # show as stale and re-materialising them refills it.
                    log.warning("%s: table schema %s is older than %s; recreating it (re-materialise its "
                                 "asset's partitions)", self.name, _schema_versions(self._table.schema),
                                 _schema_versions(self.schema))
                    self.db.drop_table(self.name)
                    self._table = self.db.create_table(self.name, schema=self.schema)
            else:
                try:
                    self._table = self.db.create_table(self.name, schema=self.schema)
                except (ValueError, OSError, RuntimeError):
                    if self.name not in set(_list_tables(self.db)):
                        raise
                    self._table = self.db.open_table(self.name)
            _ensure_primary_key(self.db, self.name, self._table)
        return self._table

    @property
    def version(self) -> int:
        return self.table.version

    def replace_partition(self, episode: str, shot: str, records: list[dict[str, Any]]) -> ReplaceResult:
        episode = validate_key(episode, "episode")
        shot = validate_key(shot, "shot")
        scope = partition_filter(episode, shot)
        now = datetime.now(timezone.utc)
        rows = [{**r, fs.UPDATED_AT: r.get(fs.UPDATED_AT, now)} for r in records]
        data = pa.Table.from_pylist(rows, schema=self.schema) if rows else self.schema.empty_table()
        prefix = f"{episode}/{shot}/"
        for r in rows:
            if r.get(fs.EPISODE) != episode or r.get(fs.SHOT) != shot or not str(r.get(fs.ID)).startswith(prefix):
                raise FramesTableError(f"{self.name}: row {r.get(fs.ID)!r} is not of partition {episode}/{shot}")
        return _replace_scope(self.table, data, scope, episode, shot)

    def count(self, episode: str | None = None, shot: str | None = None) -> int:
        return self.table.count_rows(partition_filter(episode, shot))

    def read_partition(self, episode: str, shot: str | None = None) -> pa.Table:
        query = self.table.search().where(partition_filter(episode, shot)).limit(None)
        return query.to_arrow().sort_by(fs.ID)


def _schema_versions(schema: pa.Schema) -> dict[bytes, bytes]:
    return {k: v for k, v in (schema.metadata or {}).items() if k.endswith(b"schema_version")}


def _ensure_primary_key(db, name: str, table) -> None:
    """Declare `id` the table's unenforced primary key (once; see the module docstring)."""
    field = table.schema.field(fs.ID)
    if field.metadata and PRIMARY_KEY_META in field.metadata:
        return
    try:
        table.set_unenforced_primary_key(fs.ID)
    except Exception:
        # A concurrent opener may have set it between our check and our call.
        field = db.open_table(name).schema.field(fs.ID)
        if not (field.metadata and PRIMARY_KEY_META in field.metadata):
            raise


def _list_tables(db) -> list[str]:
    names: list[str] = []
    token = None
    while True:  # list_tables is paginated
        page = db.list_tables(page_token=token)
        names.extend(page.tables)
        token = page.page_token
        if not token:
            return names


def _replace_scope(table, data: pa.Table, scope: str, episode: str, shot: str) -> ReplaceResult:
    """Make `scope` hold exactly `data` in one commit (an empty `data` deletes the scope)."""
    if data.num_rows == 0:
        before = table.count_rows(scope)
        if before:
            FrameTables._retry(lambda: table.delete(scope))
        return ReplaceResult(episode, shot, 0, 0, 0, before, table.version)
    _check_unique_ids(data)
    result = FrameTables._retry(
        lambda: table.merge_insert(fs.ID)
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .when_not_matched_by_source_delete(scope)
        .execute(data)
    )
    return ReplaceResult(episode, shot, data.num_rows, int(result.num_inserted_rows),
                         int(result.num_updated_rows), int(result.num_deleted_rows), int(result.version))


def layers_table(db_uri: str | Path, storage_options: dict[str, str] | None = None) -> KeyedTable:
    return KeyedTable(db_uri, fs.LAYERS_TABLE, fs.layers_schema(), storage_options)


def faces_table(db_uri: str | Path, storage_options: dict[str, str] | None = None) -> KeyedTable:
    return KeyedTable(db_uri, fs.FACES_TABLE, fs.faces_schema(), storage_options)


def pose_table(db_uri: str | Path, storage_options: dict[str, str] | None = None) -> KeyedTable:
    return KeyedTable(db_uri, fs.POSE_TABLE, fs.pose_schema(), storage_options)


def captions_table(db_uri: str | Path, storage_options: dict[str, str] | None = None) -> KeyedTable:
    return KeyedTable(db_uri, fs.CAPTIONS_TABLE, fs.captions_schema(), storage_options)
