"""The trainer-facing query API over the LanceDB tables (issue 5).

`open_dataset(root)` pins every table at its current version (or the versions given), so a
training run reads exactly the same rows however the pipeline moves on; `Dataset.query(...)`
filters by character, outfit, expression, pose, effects, quality, episode, shot and openings /
endings, searches by text through CLIP when the frames hold CLIP vectors, balances across
episodes or shots, and returns `Sample`s: paths of the kept frame and its layers, plus captions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Sample:
    """One training sample: a kept frame, or one character instance in it (`instance_id` set).
    Plain data (paths and strings), so it pickles into spawned DataLoader workers."""

    id: str  # the frame id, or "<frame id>/i<instance>" for a character instance
    episode: str
    shot: str
    frame_index: int
    image_path: Path  # the kept frame, RGB
    caption: str = ""
    tags: tuple[str, ...] = ()
    character_path: Path | None = None  # the character layer of the frame: RGBA, straight alpha
    instance_mask_path: Path | None = None  # uint8 PNG: instance id per pixel (0 = none)
    instance_id: int | None = None  # this sample's instance in the mask (None: the whole frame)
    box: tuple[int, int, int, int] | None = None  # the instance's box (x0, y0, x1, y1)
    character_id: str | None = None
    character_name: str | None = None
    outfit: str | None = None
    expression: str | None = None
    pose_tags: tuple[str, ...] = ()
    has_effects: bool = False
    quality: float | None = None
    repeat_kind: str | None = None  # "opening" | "ending" | "repeat" when the shot repeats across episodes
    extra: dict = field(default_factory=dict, compare=False, hash=False)


# --------------------------------------------------------------------------- the dataset
import random  # noqa: E402  (kept below the record so the dataclass reads first)
from collections import defaultdict  # noqa: E402
from datetime import timedelta  # noqa: E402

import lancedb  # noqa: E402

from anime_assets import settings  # noqa: E402
from anime_assets.storage import schema as fs  # noqa: E402
from anime_assets.storage.media import MediaStore  # noqa: E402
from anime_assets.storage.tables import partition_filter  # noqa: E402
from anime_assets.vision.identity import face_in_box  # noqa: E402

# Tables a dataset reads, pinned together. `shot_repeats` and the registry tables may not exist
# yet (a dataset without them simply knows no openings or characters).
TABLES = (fs.FRAMES_TABLE, fs.LAYERS_TABLE, fs.FACES_TABLE, fs.POSE_TABLE, fs.CAPTIONS_TABLE,
          fs.CHARACTER_INSTANCES_TABLE, fs.CHARACTERS_TABLE, "shot_repeats")
MIN_EFFECT_COVERAGE = 0.05  # as the captions: below this the effect layer is fringe


class QueryError(ValueError):
    """A query that cannot be answered here (unknown character, no CLIP vectors for text)."""


def open_dataset(root: str | Path | None = None, versions: dict[str, int] | None = None) -> "Dataset":
    """The dataset under a data root (default: $ANIME_ASSETS_DATA or ./data) or a LanceDB URI,
    every table pinned at `versions` (default: their current versions; read them back from
    `Dataset.versions` to reproduce a training run exactly)."""
    root_s = str(root) if root is not None else None
    if root_s and "://" in root_s and not root_s.startswith("file://"):
        db_uri = root_s
    else:
        base = Path(root_s[len("file://"):] if root_s and root_s.startswith("file://") else (root_s or ""))
        base = settings.data_root(base if root_s else None)
        db_uri = settings.lancedb_uri(base) if not (base / "frames.lance").exists() else str(base)
    return Dataset(db_uri, versions)


class Dataset:
    def __init__(self, db_uri: str, versions: dict[str, int] | None = None):
        self.db_uri = db_uri
        self.db = lancedb.connect(db_uri, read_consistency_interval=timedelta(0))
        names = set(_names(self.db))
        if fs.FRAMES_TABLE not in names:
            raise QueryError(f"no '{fs.FRAMES_TABLE}' table in {db_uri}: ingest an episode first")
        self._tables, self.versions = {}, {}
        for name in TABLES:
            if name not in names:
                continue
            table = self.db.open_table(name)
            want = (versions or {}).get(name)
            if want is not None:
                table.checkout(int(want))
            self._tables[name] = table
            self.versions[name] = table.version
        self._cache: dict[str, list[dict]] = {}

    # ------------------------------------------------------------------ raw rows
    def rows(self, name: str, columns: list[str] | None = None, episodes: set[str] | None = None) -> list[dict]:
        """A pinned table's rows (only `columns`; only `episodes`, filtered inside LanceDB)."""
        if name not in self._tables:
            return []
        scope = None
        if episodes and fs.EPISODE in self._tables[name].schema.names:
            scope = " OR ".join(partition_filter(e) for e in sorted(episodes))  # validated keys only
        key = f"{name}|{','.join(columns or [])}|{scope}"
        if key not in self._cache:
            q = self._tables[name].search().limit(None)
            if scope:
                q = q.where(scope)
            if columns:
                q = q.select(columns)
            self._cache[key] = q.to_arrow().to_pylist()
        return self._cache[key]

    def characters(self) -> list[dict]:
        """Registry characters (merged ones left out): id, name, instances, episodes."""
        return [{"id": c[fs.CHARACTER_ID], "name": c[fs.NAME], "instances": c[fs.N_INSTANCES],
                 "episodes": c[fs.EPISODES]} for c in self.rows(fs.CHARACTERS_TABLE) if not c[fs.MERGED_INTO]]

    def _character_ids(self, key: str) -> set[str]:
        chars = {c[fs.CHARACTER_ID]: c for c in self.rows(fs.CHARACTERS_TABLE)}

        def now(cid):
            seen = set()
            while chars.get(cid, {}).get(fs.MERGED_INTO) and cid not in seen:
                seen.add(cid)
                cid = chars[cid][fs.MERGED_INTO]
            return cid

        target = key if key in chars else next(
            (cid for cid, c in chars.items() if (c[fs.NAME] or "").lower() == key.strip().lower()), None)
        if target is None:
            raise QueryError(f"no character with id or name {key!r} (known: "
                             + ", ".join(f"{c['id']} {c['name'] or ''}".strip() for c in self.characters()) + ")")
        target = now(target)
        return {cid for cid in chars if now(cid) == target}

    # ------------------------------------------------------------------ query
    def query(self, *, character: str | None = None, outfit: str | None = None, expression: str | None = None,
              pose: str | list[str] | None = None, episode: str | list[str] | None = None,
              shot: str | list[str] | None = None, effects: bool | None = None, min_quality: float | None = None,
              exclude_repeats: bool | str = False, text: str | None = None, level: str = "instance",
              balance: str | None = None, limit: int | None = None, seed: int = 0) -> list[Sample]:
        """Samples matching every filter given.

        level "instance": one sample per character instance (crop and mask of that character);
        "frame": one per kept frame. `pose`: tags that must all be present ("full body",
        "arms up"). `effects`: True only frames with effects, False only frames without.
        `exclude_repeats`: True leaves out every shot repeated across episodes (openings,
        endings), or "opening" / "ending" only those. `text`: rank by CLIP similarity of the
        frame to the text (needs CLIP vectors in `frames`). `balance`: "episode" or "shot" -
        take samples round-robin across them, so `limit` does not fill up from one episode.
        """
        if level not in ("instance", "frame"):
            raise QueryError(f"level is 'instance' or 'frame', not {level!r}")
        episodes = {episode} if isinstance(episode, str) else set(episode or [])
        shots = {shot} if isinstance(shot, str) else set(shot or [])
        need_pose = [pose] if isinstance(pose, str) else list(pose or [])
        eps = episodes or None  # read only these episodes' rows when given
        frames = {r[fs.ID]: r for r in self.rows(fs.FRAMES_TABLE, [fs.ID, fs.EPISODE, fs.SHOT, fs.FRAME_INDEX,
                                                                   fs.IMAGE_URI, fs.QUALITY], eps)}
        layers = {r[fs.ID]: r for r in self.rows(fs.LAYERS_TABLE, None, eps)}
        faces = {r[fs.ID]: r for r in self.rows(fs.FACES_TABLE, None, eps)}
        captions = {r[fs.ID]: r for r in self.rows(fs.CAPTIONS_TABLE, None, eps)}
        poses = {r[fs.ID]: r for r in self.rows(fs.POSE_TABLE, None, eps)}
        frame_pose_tags = defaultdict(set)  # level "frame": the tags of any of its characters
        for p in poses.values():
            frame_pose_tags[p[fs.FRAME_ID]].update(p[fs.POSE_TAGS] or [])
        names = {c[fs.CHARACTER_ID]: c[fs.NAME] for c in self.rows(fs.CHARACTERS_TABLE)}
        insts = defaultdict(list)
        for r in self.rows(fs.CHARACTER_INSTANCES_TABLE, [fs.ID, fs.FRAME_ID, fs.INSTANCE_ID, fs.BOX,
                                                          fs.CHARACTER_ID, fs.OUTFIT_ID], eps):
            insts[r[fs.FRAME_ID]].append(r)
        repeats = {(r[fs.EPISODE], r[fs.SHOT]): r["kind"] for r in self.rows("shot_repeats", None, eps)}
        wanted = self._character_ids(character) if character else None
        ranked = self._text_rank(text, eps) if text else None

        out = []
        for fid, f in frames.items():
            if episodes and f[fs.EPISODE] not in episodes or shots and f[fs.SHOT] not in shots:
                continue
            if min_quality is not None and (f[fs.QUALITY] is None or f[fs.QUALITY] < min_quality):
                continue
            kind = repeats.get((f[fs.EPISODE], f[fs.SHOT]))
            if kind and (exclude_repeats is True or exclude_repeats == kind):
                continue
            if ranked is not None and fid not in ranked:
                continue
            lay, fac, cap = layers.get(fid), faces.get(fid), captions.get(fid)
            has_fx = bool(lay and (lay[fs.EFFECT_COVERAGE] or 0) >= MIN_EFFECT_COVERAGE)
            if effects is not None and has_fx != effects:
                continue
            face_boxes = [(x["x0"], x["y0"], x["x1"], x["y1"]) for x in (fac or {}).get(fs.FACES) or []]
            face_expr = {(x["x0"], x["y0"], x["x1"], x["y1"]): x["expression"] for x in (fac or {}).get(fs.FACES) or []}
            base = dict(episode=f[fs.EPISODE], shot=f[fs.SHOT], frame_index=f[fs.FRAME_INDEX],
                        image_path=MediaStore.path_from_uri(f[fs.IMAGE_URI]),
                        caption=(cap or {}).get(fs.CAPTION) or "",
                        tags=tuple(t["tag"] for t in (cap or {}).get(fs.TAGS) or []),
                        character_path=MediaStore.path_from_uri(lay[fs.CHARACTER_URI]) if lay else None,
                        instance_mask_path=MediaStore.path_from_uri(lay[fs.INSTANCE_MASK_URI]) if lay else None,
                        has_effects=has_fx, quality=f[fs.QUALITY], repeat_kind=kind)
            if level == "frame":
                chars_here = {r[fs.CHARACTER_ID] for r in insts.get(fid, [])}
                if wanted is not None and not chars_here & wanted:
                    continue
                if outfit and outfit not in {r[fs.OUTFIT_ID] for r in insts.get(fid, [])}:
                    continue
                expr = (fac or {}).get(fs.EXPRESSION)
                if expression and expr != expression:
                    continue
                tags_here = frame_pose_tags.get(fid, set())
                if need_pose and not set(need_pose) <= tags_here:
                    continue
                cids = sorted(chars_here)
                out.append(Sample(id=fid, expression=expr, character_id=cids[0] if len(cids) == 1 else None,
                                  character_name=names.get(cids[0]) if len(cids) == 1 else None, **base))
                continue
            for r in insts.get(fid, []):
                if wanted is not None and r[fs.CHARACTER_ID] not in wanted:
                    continue
                if outfit and r[fs.OUTFIT_ID] != outfit:
                    continue
                box = tuple(r[fs.BOX])
                face = face_in_box(face_boxes, box)
                expr = face_expr.get(face) if face else None
                if expression and expr != expression:
                    continue
                ptags = tuple((poses.get(r[fs.ID]) or {}).get(fs.POSE_TAGS) or ())
                if need_pose and not set(need_pose) <= set(ptags):
                    continue
                cid = r[fs.CHARACTER_ID]
                out.append(Sample(id=r[fs.ID], instance_id=r[fs.INSTANCE_ID], box=box, character_id=cid,
                                  character_name=names.get(cid), outfit=r[fs.OUTFIT_ID], expression=expr,
                                  pose_tags=ptags, **base))
        if ranked is not None:
            out.sort(key=lambda s: ranked[s.id.rsplit("/i", 1)[0] if s.instance_id is not None else s.id])
        else:
            out.sort(key=lambda s: s.id)
        if balance:
            out = _round_robin(out, balance, seed)
        return out[:limit] if limit is not None else out

    def _text_rank(self, text: str, episodes: set[str] | None = None) -> dict[str, int]:
        """frame id -> rank by CLIP similarity to `text`: a vector search on the pinned `frames`,
        prefiltered to `episodes`, through the IVF index when the table has one (nprobes 40,
        refine 5: recall@20 ~0.98 at 1M rows in bench/bench_query.py)."""
        model = fs.schema_embedding_model(self._tables[fs.FRAMES_TABLE].schema)
        if not model or not model.startswith("open_clip:"):
            raise QueryError(f"text search needs CLIP vectors; `frames` holds {model or 'no'} vectors "
                             "(`anime-assets models pull clip-vit-b-32-laion2b`, then re-run the embeddings)")
        from anime_assets.models.clip import load_clip

        source = model[len("open_clip:"):]
        name, _, pretrained = source.partition("/") if not source.startswith("hf-hub:") else (source, "", "")
        embedder = load_clip(name, pretrained or None)
        vector = embedder.embed_texts([text])[0]
        table = self._tables[fs.FRAMES_TABLE]
        q = (table.search(vector, vector_column_name=fs.VECTOR).distance_type("cosine").nprobes(40).refine_factor(5)
             .select([fs.ID, "_distance"]).limit(table.count_rows()))
        if episodes:
            q = q.where(" OR ".join(partition_filter(e) for e in sorted(episodes)), prefilter=True)
        hits = q.to_arrow().to_pylist()
        return {h[fs.ID]: i for i, h in enumerate(hits)}


def _round_robin(samples: list[Sample], by: str, seed: int) -> list[Sample]:
    """Interleave groups (episodes or shots), each shuffled with `seed`, so any prefix is balanced."""
    if by not in ("episode", "shot"):
        raise QueryError(f"balance is 'episode' or 'shot', not {by!r}")
    groups = defaultdict(list)
    for s in samples:
        groups[s.episode if by == "episode" else (s.episode, s.shot)].append(s)
    rng = random.Random(seed)
    queues = []
    for key in sorted(groups):
        items = list(groups[key])
        rng.shuffle(items)
        queues.append(items)
    out = []
    while any(queues):
        for q in queues:
            if q:
                out.append(q.pop(0))
    return out


def _names(db) -> list[str]:
    from anime_assets.storage.tables import _list_tables

    return _list_tables(db)
