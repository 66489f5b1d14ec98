"""MediaStore atomic writes, the frames schema contract, and FrameTables partition replaces
(idempotence, isolation, concurrent readers and concurrent writer processes)."""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
from datetime import timedelta

import cv2
import numpy as np
import pyarrow as pa
import pytest

from anime_assets.keys import KeyError_, shot_key
from anime_assets.storage import schema as fs
from anime_assets.storage.media import MediaNameError, MediaStore
from anime_assets.storage.tables import FrameTables, FramesTableError, partition_filter

DIM = 8


# ---------------------------------------------------------------- helpers
def make_rows(episode: str, shot: str, n: int, seed: int = 0, dim: int = DIM) -> pa.Table:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return pa.table(
        {
            fs.ID: [fs.frame_id(episode, shot, i) for i in range(n)],
            fs.EPISODE: [episode] * n,
            fs.SHOT: [shot] * n,
            fs.FRAME_INDEX: pa.array(range(n), pa.int32()),
            fs.PTS_SECONDS: [i / 24 for i in range(n)],
            fs.IMAGE_URI: [f"file:///media/{episode}/{shot}/{i:06d}.jpg" for i in range(n)],
            fs.VECTOR: pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), dim),
        }
    )


def open_tables(path, model="test:model", dim=DIM) -> FrameTables:
    tables = FrameTables(path)
    tables.open_frames(model, dim)
    return tables


# ---------------------------------------------------------------- media
def test_media_write_bytes_and_image(tmp_path):
    store = MediaStore(tmp_path)
    path = store.write_bytes("frames", "ep01", "s0000", "a.bin", b"hello")
    assert path == tmp_path.resolve() / "frames" / "ep01" / "s0000" / "a.bin"
    assert path.read_bytes() == b"hello"
    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = (255, 0, 0)
    jpg = store.write_image("frames", "ep01", None, "thumb.jpg", img)
    assert jpg.parent.name == "ep01"
    decoded = cv2.imread(str(jpg))
    assert decoded.shape == (20, 30, 3) and decoded[10, 5, 0] > 200
    assert store.uri(jpg).startswith("file://") and store.path_from_uri(store.uri(jpg)) == jpg
    # No temp files left behind.
    assert store.list_names("frames", "ep01", "s0000") == ["a.bin"]
    assert [p.name for p in path.parent.iterdir()] == ["a.bin"]


@pytest.mark.parametrize("bad", ["../x", "a/b", "..", ".hidden", "", "a b", "x\x00"])
def test_media_rejects_bad_names(tmp_path, bad):
    with pytest.raises(MediaNameError):
        MediaStore(tmp_path).write_bytes("frames", "ep01", None, bad, b"")


def test_media_rejects_bad_keys(tmp_path):
    with pytest.raises(KeyError_):
        MediaStore(tmp_path).write_bytes("frames", "../ep", None, "a.jpg", b"")
    with pytest.raises(KeyError_):
        MediaStore(tmp_path).partition_dir("frames", "ep01", "S/0")


def test_media_commit_dir_replaces_partition_and_cleans_stale(tmp_path):
    store = MediaStore(tmp_path)
    first = store.staging_dir("frames", "ep01", "s0000")
    for i in range(3):
        (first / f"{i}.jpg").write_bytes(b"old")
    final = store.commit_dir(first, "frames", "ep01", "s0000")
    assert sorted(p.name for p in final.iterdir()) == ["0.jpg", "1.jpg", "2.jpg"]

    # A crashed attempt leaves a staging folder; the next attempt removes it.
    crashed = store.staging_dir("frames", "ep01", "s0000")
    (crashed / "junk.jpg").write_bytes(b"x")
    second = store.staging_dir("frames", "ep01", "s0000")
    assert not crashed.exists()
    (second / "new.jpg").write_bytes(b"new")
    store.commit_dir(second, "frames", "ep01", "s0000")
    assert store.list_names("frames", "ep01", "s0000") == ["new.jpg"]
    # Only the final folder remains next to it: no staging / retired leftovers.
    assert [p.name for p in final.parent.iterdir()] == ["s0000"]

    assert store.remove_partition("frames", "ep01", "s0000")
    assert not final.exists() and not store.remove_partition("frames", "ep01", "s0000")


def test_media_commit_dir_rejects_foreign_folder(tmp_path):
    store = MediaStore(tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    with pytest.raises(ValueError):
        store.commit_dir(other, "frames", "ep01", "s0000")


def test_media_reader_never_sees_half_partition(tmp_path):
    """While a writer replaces a 20-file partition over and over, a reader listing the folder
    always finds all 20 files (never a half-filled or missing folder). The grace period keeps a
    replaced folder alive while a reader that opened it just before the swap is still reading."""
    store = MediaStore(tmp_path, retired_grace_s=60)
    n_files, rounds = 20, 40

    def build(generation: int):
        staging = store.staging_dir("frames", "ep01", "s0001")
        for i in range(n_files):
            (staging / f"{i:03d}.txt").write_text(str(generation))
        store.commit_dir(staging, "frames", "ep01", "s0001")

    build(0)
    folder = store.partition_dir("frames", "ep01", "s0001")
    stop = threading.Event()
    seen: list[int] = []

    def reader():
        while not stop.is_set():
            seen.append(len(os.listdir(folder)))  # FileNotFoundError would fail the test

    thread = threading.Thread(target=reader)
    thread.start()
    for generation in range(1, rounds + 1):
        build(generation)
    stop.set()
    thread.join()
    assert seen and set(seen) == {n_files}
    assert {p.read_text() for p in folder.iterdir()} == {str(rounds)}


# ---------------------------------------------------------------- schema contract
def test_schema_contract_writer_equals_reader(tmp_path):
    schema = fs.frames_schema(DIM, "test:model")
    assert schema.names == [
        "id", "episode", "shot", "frame_index", "pts_seconds", "image_uri", "width", "height",
        "quality", "is_keyframe", "vector", "embedding_model", "pipeline_version",
        "cluster_episode", "cluster_global", "cluster_probability", "umap_x", "umap_y", "updated_at",
    ]  # fmt: skip
    assert not schema.field(fs.ID).nullable
    assert schema.field(fs.VECTOR).type == pa.list_(pa.float32(), DIM)
    assert schema.field(fs.FRAME_INDEX).type == pa.int32()
    assert fs.schema_embedding_model(schema) == "test:model" and fs.schema_dim(schema) == DIM

    tables = open_tables(tmp_path / "db")
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 3))
    stored = tables.table.schema
    assert fs.check_frames_schema(stored, DIM) == []
    assert fs.schema_embedding_model(stored) == "test:model" and fs.schema_dim(stored) == DIM
    read_back = tables.read_partition("ep01", "s0000")
    assert fs.check_frames_schema(read_back.schema, DIM) == []
    # The checker does notice drift.
    drifted = stored.remove(stored.get_field_index(fs.QUALITY))
    assert fs.check_frames_schema(drifted, DIM) == ["missing column 'quality'"]


def test_frame_id_and_filters_are_validated():
    assert fs.frame_id("ep01", "s0003", 12) == "ep01/s0003/000012"
    with pytest.raises(KeyError_):
        fs.frame_id("ep'01", "s0000", 0)
    assert partition_filter("ep01", "s0000") == "episode = 'ep01' AND shot = 's0000'"
    with pytest.raises(KeyError_):
        partition_filter("x' OR '1'='1")


# ---------------------------------------------------------------- tables
def test_replace_partition_is_idempotent_and_isolated(tmp_path):
    tables = open_tables(tmp_path / "db")
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 5))
    tables.replace_partition("ep01", "s0001", make_rows("ep01", "s0001", 4))
    b_before = tables.read_partition("ep01", "s0001")

    for seed in (1, 2):  # twice: same count, no duplicates, no missing rows
        result = tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 5, seed=seed))
        assert tables.count("ep01", "s0000") == 5
    assert result.updated == 5 and result.inserted == 0 and result.deleted == 0
    ids = tables.read_partition("ep01", "s0000").column(fs.ID).to_pylist()
    assert ids == [fs.frame_id("ep01", "s0000", i) for i in range(5)]

    # Fewer kept frames now: the extra rows go, in the same commit.
    result = tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 2))
    assert result.deleted == 3 and tables.count("ep01", "s0000") == 2

    # B untouched by all of that (same rows, same vectors, same timestamps).
    assert tables.read_partition("ep01", "s0001").equals(b_before)

    # Empty partition: its rows are deleted, others stay.
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 0))
    assert tables.count("ep01", "s0000") == 0 and tables.count("ep01", "s0001") == 4
    assert tables.count() == 4


def test_replace_partition_rejects_foreign_rows(tmp_path):
    tables = open_tables(tmp_path / "db")
    with pytest.raises(FramesTableError):
        tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0001", 2))
    with pytest.raises(FramesTableError):  # wrong dim
        tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 2, dim=DIM + 1))
    rows = make_rows("ep01", "s0000", 2)
    dup = pa.concat_tables([rows, rows])
    with pytest.raises(FramesTableError):
        tables.replace_partition("ep01", "s0000", dup)
    other_model = rows.append_column(fs.EMBEDDING_MODEL, pa.array(["other:model"] * 2))
    with pytest.raises(FramesTableError):
        tables.replace_partition("ep01", "s0000", other_model)
    assert tables.count() == 0


def test_update_clusters_keeps_vectors(tmp_path):
    tables = open_tables(tmp_path / "db")
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 4))
    ids, before = tables.read_vectors("ep01")
    update = pa.table(
        {
            fs.ID: ids + ["ep01/s0009/000000"],  # an id that no longer exists is ignored
            fs.CLUSTER_EPISODE: pa.array([0, 0, 1, -1, 5], pa.int32()),
            fs.CLUSTER_PROBABILITY: pa.array([1.0, 0.9, 0.8, 0.0, 1.0], pa.float32()),
            fs.UMAP_X: pa.array([0.1, 0.2, 0.3, 0.4, 0.5], pa.float32()),
            fs.UMAP_Y: pa.array([1, 2, 3, 4, 5], pa.float32()),
        }
    )
    assert tables.update_clusters(update) == 4
    assert tables.count() == 4
    _, after = tables.read_vectors("ep01")
    np.testing.assert_array_equal(before, after)
    part = tables.read_partition("ep01", "s0000")
    assert part.column(fs.CLUSTER_EPISODE).to_pylist() == [0, 0, 1, -1]
    assert part.column(fs.CLUSTER_GLOBAL).null_count == 4  # not part of this update
    assert part.column(fs.IMAGE_URI).null_count == 0
    with pytest.raises(FramesTableError):
        tables.update_clusters(pa.table({fs.ID: ids, fs.VECTOR: [[0.0] * DIM] * 4}))


def test_read_vectors_shape_and_order(tmp_path):
    tables = open_tables(tmp_path / "db")
    rows = make_rows("ep02", "s0003", 3, seed=7)
    tables.replace_partition("ep02", "s0003", rows)
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 2))
    ids, vectors = tables.read_vectors("ep02")
    assert ids == rows.column(fs.ID).to_pylist()
    assert vectors.dtype == np.float32 and vectors.shape == (3, DIM)
    expected = np.stack([np.asarray(v, np.float32) for v in rows.column(fs.VECTOR).to_pylist()])
    np.testing.assert_array_equal(vectors, expected)
    assert tables.read_vectors()[1].shape == (5, DIM)
    assert tables.read_vectors("ep99")[1].shape == (0, DIM)


def test_model_switch_archives_old_table(tmp_path):
    tables = open_tables(tmp_path / "db", model="open_clip:ViT-B-32/laion2b_s34b_b79k", dim=DIM)
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 3))
    note = tables.open_frames("offline:colour-layout-v1", 16)
    assert note and "frames__open_clip_vit-b-32_laion2b_s34b_b79k" in note
    assert tables.count() == 0 and tables.dim == 16
    assert tables.embedding_model == "offline:colour-layout-v1"
    assert "frames__open_clip_vit-b-32_laion2b_s34b_b79k" in tables.table_names()
    archived = tables.db.open_table("frames__open_clip_vit-b-32_laion2b_s34b_b79k")
    assert archived.count_rows() == 3
    # Reopening with the same model is a no-op.
    assert tables.open_frames("offline:colour-layout-v1", 16) is None
    # A reader opening without a model gets whatever is there.
    reader = FrameTables(tmp_path / "db")
    assert reader.open_frames() is None and reader.dim == 16


@pytest.mark.filterwarnings("ignore:optimize\\(cleanup_older_than=0\\)")
def test_version_pinning_and_optimize(tmp_path):
    tables = open_tables(tmp_path / "db")
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 3))
    pinned_version = tables.version
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 1))
    assert tables.pinned(pinned_version).count_rows() == 3
    for i in range(3):
        tables.replace_partition("ep01", shot_key(i + 1), make_rows("ep01", shot_key(i + 1), 2))
    tables.optimize(cleanup_older_than=timedelta(0), delete_unverified=True)
    assert tables.count() == 7
    assert fs.check_frames_schema(tables.table.schema, DIM) == []


def test_reader_thread_never_sees_partition_missing_or_doubled(tmp_path):
    tables = open_tables(tmp_path / "db")
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 6))
    reader = FrameTables(tmp_path / "db")
    reader.open_frames()
    stop = threading.Event()
    counts: list[int] = []

    def read_loop():
        while not stop.is_set():
            counts.append(reader.count("ep01", "s0000"))

    thread = threading.Thread(target=read_loop)
    thread.start()
    try:
        for seed in range(12):
            tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 6, seed=seed))
    finally:
        stop.set()
        thread.join()
    assert len(counts) > 5 and set(counts) == {6}, sorted(set(counts))


# Module-level so spawned processes can import them.
def _writer_process(db_path: str, episode: str, shots: list[str], n_rows: int, rounds: int, seed: int) -> None:
    tables = FrameTables(db_path)
    tables.open_frames("test:model", DIM)
    for r in range(rounds):
        for shot in shots:
            tables.replace_partition(episode, shot, make_rows(episode, shot, n_rows, seed=seed * 100 + r))


def _reader_process(db_path: str, episode: str, shot: str, ready, stop, queue) -> None:
    tables = FrameTables(db_path)
    tables.open_frames()
    counts = set()
    reads = 0
    ready.set()
    while not stop.is_set():
        counts.add(tables.count(episode, shot))
        reads += 1
    queue.put((sorted(counts), reads, tables.version))


def test_concurrent_writer_processes_and_reader_process(tmp_path):
    """3 writer processes replace overlapping partitions (all write s0000 and s0001) while a
    reader process counts s0000; exact counts at the end and at every read."""
    db_path = str(tmp_path / "db")
    tables = open_tables(db_path)
    tables.replace_partition("ep01", "s0000", make_rows("ep01", "s0000", 5))
    ctx = mp.get_context("spawn")  # no fork: LanceDB runs its own threads
    queue = ctx.Queue()
    writers = [
        ctx.Process(target=_writer_process, args=(db_path, "ep01", ["s0000", "s0001", shot_key(10 + w)], 5, 4, w))
        for w in range(3)
    ]
    ready, stop = ctx.Event(), ctx.Event()
    reader = ctx.Process(target=_reader_process, args=(db_path, "ep01", "s0000", ready, stop, queue))
    reader.start()
    assert ready.wait(timeout=60)
    start_version = tables.version
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=120)
        assert w.exitcode == 0
    stop.set()
    counts, reads, reader_version = queue.get(timeout=60)
    reader.join(timeout=30)
    # The reader overlapped the writers (it saw their commits) and always counted exactly 5.
    assert counts == [5] and reads > 10, (counts, reads)
    assert reader_version >= start_version + 3 * 4 * 3

    assert tables.count("ep01", "s0000") == 5
    assert tables.count("ep01", "s0001") == 5
    for w in range(3):
        assert tables.count("ep01", shot_key(10 + w)) == 5
    assert tables.count() == 25
    ids = tables.read_partition("ep01").column(fs.ID).to_pylist()
    assert len(ids) == len(set(ids)) == 25


def test_layers_table_replaces_a_shot_in_one_commit_and_refuses_other_partitions(tmp_path):
    from anime_assets.storage.schema import frame_id
    from anime_assets.storage.tables import FramesTableError, layers_table

    table = layers_table(tmp_path / "db")

    def rows(shot, frames, blend="add"):
        return [{"id": frame_id("ep01", shot, f), "episode": "ep01", "shot": shot, "frame_index": f,
                 "effect_blend": blend, "instances": [{"id": 1, "x0": 0, "y0": 0, "x1": 4, "y1": 4, "area": 0.1}]}
                for f in frames]

    table.replace_partition("ep01", "s0000", rows("s0000", [1, 2, 3]))
    table.replace_partition("ep01", "s0001", rows("s0001", [10, 11]))
    table.replace_partition("ep01", "s0000", rows("s0000", [2, 3, 4], blend="screen"))  # re-run: replaced exactly
    got = table.read_partition("ep01", "s0000").to_pylist()
    assert [r["frame_index"] for r in got] == [2, 3, 4] and {r["effect_blend"] for r in got} == {"screen"}
    assert got[0]["instances"][0]["x1"] == 4 and got[0]["updated_at"] is not None
    assert table.count("ep01", "s0001") == 2
    with pytest.raises(FramesTableError):
        table.replace_partition("ep01", "s0000", rows("s0001", [12]))
    table.replace_partition("ep01", "s0001", [])  # a shot with no kept frames any more
    assert table.count("ep01") == 3


def test_vector_index_from_a_size_on(tmp_path):
    """Below the threshold nothing happens; above it an IVF_SQ cosine index is built once, and
    a filtered top-k search through it finds the exact nearest rows on clustered vectors."""
    from anime_assets.storage.tables import FrameTables

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(16, 32)).astype(np.float32)
    n = 4096
    vecs = centres[rng.integers(0, 16, n)] + 0.1 * rng.normal(size=(n, 32)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    tables = FrameTables(str(tmp_path / "db"))
    tables.open_frames("test-model", 32)
    for e in range(4):
        rows = [{fs.ID: fs.frame_id(f"ep{e}", "s0000", i), fs.EPISODE: f"ep{e}", fs.SHOT: "s0000",
                 fs.FRAME_INDEX: i, fs.VECTOR: vecs[e * 1024 + i].tolist(), fs.EMBEDDING_MODEL: "test-model"}
                for i in range(1024)]
        tables.replace_partition(f"ep{e}", "s0000", pa.Table.from_pylist(rows))
    assert tables.ensure_vector_index(min_rows=n + 1) is None
    assert tables.ensure_vector_index(min_rows=1000).startswith("IVF_SQ index, 64 partitions")
    assert tables.ensure_vector_index(min_rows=1000) is None  # already there
    q = vecs[5]
    hits = (tables.table.search(q, vector_column_name=fs.VECTOR).distance_type("cosine").nprobes(40)
            .refine_factor(5).where("episode = 'ep0'", prefilter=True).select([fs.ID, "_distance"]).limit(10)
            .to_arrow().to_pylist())
    exact = np.argsort(-(vecs[:1024] @ q))[:10]
    assert {h[fs.ID] for h in hits} == {fs.frame_id("ep0", "s0000", int(i)) for i in exact}
