"""The one schema of the LanceDB `frames` table, shared by every writer and reader.

One row per kept frame. Writers build rows with `frames_schema(dim)` (or `empty_frames`),
readers check a table with `check_frames_schema`; nobody spells a column name twice.

Rule: vectors of different embedding models never share a column. The schema metadata
records `embedding_model` and `dim`; a table built for one model is never written with
another model's vectors (see `tables.FrameTables.open_frames`).
"""

from __future__ import annotations

import re

import pyarrow as pa

from anime_assets.keys import validate_key

FRAMES_TABLE = "frames"

ID = "id"
EPISODE = "episode"
SHOT = "shot"
FRAME_INDEX = "frame_index"
PTS_SECONDS = "pts_seconds"
IMAGE_URI = "image_uri"
WIDTH = "width"
HEIGHT = "height"
QUALITY = "quality"
IS_KEYFRAME = "is_keyframe"
VECTOR = "vector"
EMBEDDING_MODEL = "embedding_model"
PIPELINE_VERSION = "pipeline_version"
CLUSTER_EPISODE = "cluster_episode"
CLUSTER_GLOBAL = "cluster_global"
CLUSTER_PROBABILITY = "cluster_probability"
UMAP_X = "umap_x"
UMAP_Y = "umap_y"
UPDATED_AT = "updated_at"

# Columns written by the clustering step; everything else is written by the embedding step.
CLUSTER_COLUMNS = (CLUSTER_EPISODE, CLUSTER_GLOBAL, CLUSTER_PROBABILITY, UMAP_X, UMAP_Y)
NOISE_LABEL = -1  # HDBSCAN noise; null cluster columns mean "not clustered yet"

META_EMBEDDING_MODEL = b"embedding_model"
META_DIM = b"dim"
META_SCHEMA_VERSION = b"frames_schema_version"
SCHEMA_VERSION = "1"


def frames_schema(dim: int, embedding_model: str | None = None) -> pa.Schema:
    """Arrow schema of `frames` for vectors of `dim` floats from `embedding_model`."""
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"dim must be a positive int, got {dim!r}")
    metadata = {META_DIM: str(dim).encode(), META_SCHEMA_VERSION: SCHEMA_VERSION.encode()}
    if embedding_model is not None:
        metadata[META_EMBEDDING_MODEL] = embedding_model.encode()
    return pa.schema(
        [
            pa.field(ID, pa.string(), nullable=False),
            pa.field(EPISODE, pa.string(), nullable=False),
            pa.field(SHOT, pa.string(), nullable=False),
            pa.field(FRAME_INDEX, pa.int32(), nullable=False),
            pa.field(PTS_SECONDS, pa.float64()),
            pa.field(IMAGE_URI, pa.string()),
            pa.field(WIDTH, pa.int32()),
            pa.field(HEIGHT, pa.int32()),
            pa.field(QUALITY, pa.float32()),
            pa.field(IS_KEYFRAME, pa.bool_()),
            pa.field(VECTOR, pa.list_(pa.float32(), dim)),
            pa.field(EMBEDDING_MODEL, pa.string()),
            pa.field(PIPELINE_VERSION, pa.string()),
            pa.field(CLUSTER_EPISODE, pa.int32()),
            pa.field(CLUSTER_GLOBAL, pa.int32()),
            pa.field(CLUSTER_PROBABILITY, pa.float32()),
            pa.field(UMAP_X, pa.float32()),
            pa.field(UMAP_Y, pa.float32()),
            pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
        ],
        metadata=metadata,
    )


def cluster_update_schema() -> pa.Schema:
    """Schema of the rows `FrameTables.update_clusters` takes: id + the cluster columns."""
    full = frames_schema(1)
    return pa.schema([full.field(ID)] + [full.field(c) for c in CLUSTER_COLUMNS])


def frame_id(episode: str, shot: str, frame_index: int) -> str:
    """Row id: `<episode>/<shot>/<frame_index:06d>`; stable across re-runs of a partition."""
    validate_key(episode, "episode")
    validate_key(shot, "shot")
    if not 0 <= int(frame_index) <= 999_999:
        raise ValueError(f"frame_index {frame_index} out of range 0-999999")
    return f"{episode}/{shot}/{int(frame_index):06d}"


def schema_dim(schema: pa.Schema) -> int:
    return schema.field(VECTOR).type.list_size


def schema_embedding_model(schema: pa.Schema) -> str | None:
    meta = schema.metadata or {}
    value = meta.get(META_EMBEDDING_MODEL)
    return value.decode() if value is not None else None


def check_frames_schema(schema: pa.Schema, dim: int | None = None) -> list[str]:
    """Differences between `schema` and what readers expect (empty list = compatible).

    Compares names, types and nullability, not field metadata (LanceDB adds its own, e.g.
    the primary-key marker) and not column order.
    """
    expected = frames_schema(dim if dim is not None else _dim_or_one(schema))
    problems = []
    for field in expected:
        if field.name not in schema.names:
            problems.append(f"missing column {field.name!r}")
            continue
        got = schema.field(field.name)
        if got.type != field.type:
            problems.append(f"column {field.name!r} has type {got.type}, expected {field.type}")
        if got.nullable != field.nullable:
            problems.append(f"column {field.name!r} nullable={got.nullable}, expected {field.nullable}")
    extra = sorted(set(schema.names) - set(expected.names))
    problems.extend(f"unexpected column {name!r}" for name in extra)
    return problems


def model_slug(embedding_model: str) -> str:
    """A table-name-safe form of a model id: `open_clip:ViT-B-32/laion2b` -> `open_clip_vit-b-32_laion2b`."""
    slug = re.sub(r"[^a-z0-9_-]+", "_", embedding_model.lower()).strip("_-")
    return slug[:96] or "unknown"


def _dim_or_one(schema: pa.Schema) -> int:
    try:
        return schema_dim(schema)
    except (KeyError, AttributeError):
        return 1


# --------------------------------------------------------------------------- layers
# One row per kept frame, keyed by the same `id` as `frames` (join on it). A table of its own
# because the layers and the embeddings are written by different assets at different times:
# replacing one shot's layers must never touch its vectors, and the other way round.
LAYERS_TABLE = "layers"

CHARACTER_URI = "character_uri"  # RGBA PNG, straight alpha
CHARACTER_COVERAGE = "character_coverage"  # share of the frame with alpha >= 0.5
INSTANCE_MASK_URI = "instance_mask_uri"  # uint8 PNG: instance id per pixel, 0 = none
INSTANCES = "instances"  # [{id, x0, y0, x1, y1, area}], ids stable through the shot
EFFECT_URI = "effect_uri"  # RGBA PNG, straight alpha; recompose with EFFECT_BLEND
EFFECT_BLEND = "effect_blend"  # normal | add | screen
EFFECT_COVERAGE = "effect_coverage"  # share of the frame with effect alpha > 1/255
BACKGROUND_URI = "background_uri"  # RGB: characters and effects removed, holes filled
BACKGROUND_INPAINTED = "background_inpainted"  # share of the background never visible in the shot
CAMERA_X = "camera_x"  # camera position in the shot plate (pixels)
CAMERA_Y = "camera_y"
SEGMENTATION_MODEL = "segmentation_model"  # the prior used, or "none (motion only)"
INPAINT_MODEL = "inpaint_model"

BLEND_MODES = ("normal", "add", "screen")

INSTANCE_TYPE = pa.struct([
    pa.field("id", pa.int32()), pa.field("x0", pa.int32()), pa.field("y0", pa.int32()),
    pa.field("x1", pa.int32()), pa.field("y1", pa.int32()), pa.field("area", pa.float32()),
])


def layers_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(ID, pa.string(), nullable=False),
            pa.field(EPISODE, pa.string(), nullable=False),
            pa.field(SHOT, pa.string(), nullable=False),
            pa.field(FRAME_INDEX, pa.int32(), nullable=False),
            pa.field(CHARACTER_URI, pa.string()),
            pa.field(CHARACTER_COVERAGE, pa.float32()),
            pa.field(INSTANCE_MASK_URI, pa.string()),
            pa.field(INSTANCES, pa.list_(INSTANCE_TYPE)),
            pa.field(EFFECT_URI, pa.string()),
            pa.field(EFFECT_BLEND, pa.string()),
            pa.field(EFFECT_COVERAGE, pa.float32()),
            pa.field(BACKGROUND_URI, pa.string()),
            pa.field(BACKGROUND_INPAINTED, pa.float32()),
            pa.field(CAMERA_X, pa.float32()),
            pa.field(CAMERA_Y, pa.float32()),
            pa.field(SEGMENTATION_MODEL, pa.string()),
            pa.field(INPAINT_MODEL, pa.string()),
            pa.field(PIPELINE_VERSION, pa.string()),
            pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
        ],
        metadata={b"layers_schema_version": b"1"},
    )


# ---------------------------------------------------------------------------- faces
# One row per kept frame (same `id` as `frames`): the anime faces found in it, each with its
# expression (a label of the fixed set, with scores) or null with the reason.
FACES_TABLE = "faces"
FACES = "faces"  # [FACE_TYPE] best first; colours "#rrggbb"
N_FACES = "n_faces"
EXPRESSION = "expression"  # the main (largest) face's expression, or null
EXPRESSION_REASON = "expression_reason"  # why expression is null
EXPRESSION_MODEL = "expression_model"  # "wd-vit-tagger-v3@<rev>", "zero-shot:<clip>" or "none"
FACE_MODEL = "face_model"

SCORE_TYPE = pa.struct([pa.field("label", pa.string()), pa.field("score", pa.float32())])
FACE_TYPE = pa.struct([
    pa.field("x0", pa.int32()), pa.field("y0", pa.int32()), pa.field("x1", pa.int32()), pa.field("y1", pa.int32()),
    pa.field("likelihood", pa.float32()), pa.field("hair", pa.string()),
    pa.field("left_eye", pa.string()), pa.field("right_eye", pa.string()),
    pa.field("expression", pa.string()),  # null: see the row's expression_reason
    pa.field("expression_scores", pa.list_(SCORE_TYPE)),  # every label's score, best first
])


def faces_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(ID, pa.string(), nullable=False),
            pa.field(EPISODE, pa.string(), nullable=False),
            pa.field(SHOT, pa.string(), nullable=False),
            pa.field(FRAME_INDEX, pa.int32(), nullable=False),
            pa.field(FACES, pa.list_(FACE_TYPE)),
            pa.field(N_FACES, pa.int32()),
            pa.field(EXPRESSION, pa.string()),
            pa.field(EXPRESSION_REASON, pa.string()),
            pa.field(EXPRESSION_MODEL, pa.string()),
            pa.field(FACE_MODEL, pa.string()),
            pa.field(PIPELINE_VERSION, pa.string()),
            pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
        ],
        metadata={b"faces_schema_version": b"2"},
    )


# ----------------------------------------------------------------------------- pose
# One row per character instance of a kept frame (instance ids from the `layers` table), so a
# trainer can filter on one character's pose. A frame without characters has no pose rows.
POSE_TABLE = "pose"
FRAME_ID = "frame_id"  # the `id` of the frame in `frames` / `layers` (join on it)
INSTANCE_ID = "instance_id"  # the instance id of the layers' instance mask (stable through the shot)
BOX = "box"  # [x0, y0, x1, y1] of the instance, image pixels
KEYPOINTS = "keypoints"  # [{name, x, y, score}] in image pixels, the model's own skeleton
BODY17 = "body17"  # the 17 COCO body keypoints as [x, y, score] x 17 (from any skeleton), for filters
SKELETON = "skeleton"  # "coco-wholebody-133" | "blazepose-33"
POSE_TAGS = "pose_tags"  # framing and arm tags the keypoints support ("full body", "arms up")
INSIDE_MASK = "keypoints_inside_mask"  # share of confident keypoints on the instance's mask
POSE_MODEL = "pose_model"
POSE_REASON = "pose_reason"  # why keypoints are null

KEYPOINT_TYPE = pa.struct([pa.field("name", pa.string()), pa.field("x", pa.float32()),
                           pa.field("y", pa.float32()), pa.field("score", pa.float32())])


def pose_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(ID, pa.string(), nullable=False),  # "<frame id>/i<instance>"
            pa.field(EPISODE, pa.string(), nullable=False),
            pa.field(SHOT, pa.string(), nullable=False),
            pa.field(FRAME_INDEX, pa.int32(), nullable=False),
            pa.field(FRAME_ID, pa.string(), nullable=False),
            pa.field(INSTANCE_ID, pa.int32(), nullable=False),
            pa.field(BOX, pa.list_(pa.int32(), 4)),
            pa.field(KEYPOINTS, pa.list_(KEYPOINT_TYPE)),
            pa.field(BODY17, pa.list_(pa.list_(pa.float32(), 3), 17)),
            pa.field(SKELETON, pa.string()),
            pa.field(POSE_TAGS, pa.list_(pa.string())),
            pa.field(INSIDE_MASK, pa.float32()),
            pa.field(POSE_MODEL, pa.string()),
            pa.field(POSE_REASON, pa.string()),
            pa.field(PIPELINE_VERSION, pa.string()),
            pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
        ],
        metadata={b"pose_schema_version": b"1"},
    )


def pose_id(frame_id_: str, instance: int) -> str:
    return f"{frame_id_}/i{int(instance):02d}"


# -------------------------------------------------------------------------- captions
# One row per kept frame: tags with their source and score, and the caption assembled from them
# (kohya style: comma-separated, most important first). Says nothing it does not know.
CAPTIONS_TABLE = "captions"
TAGS = "tags"  # [{tag, score, source}] source: tagger | clip | pose | faces | layers | shot
CAPTION = "caption"
CHARACTERS = "characters"  # character names when the registry knows them (null until then)
CAPTION_SOURCES = "caption_sources"  # which facts went in, and what was missing and why
TAGGER_MODEL = "tagger_model"

TAG_TYPE = pa.struct([pa.field("tag", pa.string()), pa.field("score", pa.float32()),
                      pa.field("source", pa.string())])


def captions_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(ID, pa.string(), nullable=False),
            pa.field(EPISODE, pa.string(), nullable=False),
            pa.field(SHOT, pa.string(), nullable=False),
            pa.field(FRAME_INDEX, pa.int32(), nullable=False),
            pa.field(TAGS, pa.list_(TAG_TYPE)),
            pa.field(CAPTION, pa.string()),
            pa.field(CHARACTERS, pa.list_(pa.string())),
            pa.field(CAPTION_SOURCES, pa.string()),
            pa.field(TAGGER_MODEL, pa.string()),
            pa.field(PIPELINE_VERSION, pa.string()),
            pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
        ],
        metadata={b"captions_schema_version": b"1"},
    )


# ------------------------------------------------------------------- character registry
# The registry is the trainer's vocabulary of characters, kept across episodes: `outfits` are
# appearance clusters (the unit the pipeline matches), `characters` group outfits (the unit a
# person names, merges and splits), `character_instances` says which outfit and character each
# character instance of each kept frame is. Names, merges and splits live only in `characters`
# and `outfits` rows, which re-clustering never rewrites, so they survive it.
CHARACTERS_TABLE = "characters"
OUTFITS_TABLE = "outfits"
CHARACTER_INSTANCES_TABLE = "character_instances"
CHARACTER_ID = "character_id"  # "c0001", stable for ever
OUTFIT_ID = "outfit_id"  # "o0001"
NAME = "name"  # given by a person; null until then
MERGED_INTO = "merged_into"  # a merged character points at the one it now is
IDENTITY = "identity"  # head colour descriptor (mean over the instances)
LOOK = "look"  # whole-instance colour descriptor (mean over the instances)
FACE_VECTOR = "face"  # this instance's head descriptor, or null without a face
N_INSTANCES = "n_instances"
EPISODES = "episodes"
SAMPLE_URI = "sample_uri"  # a crop of one of its instances, for people to recognise it
DESCRIPTOR = "descriptor"  # which descriptor the vectors are ("hsv-18x3x3-v1")


def _vec(dim: int) -> pa.DataType:
    return pa.list_(pa.float32(), dim)


# Head descriptors may be missing (no face seen): a variable list, because LanceDB refuses nulls
# in fixed-size vector columns.
_MAYBE_VEC = pa.list_(pa.float32())


def characters_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field(CHARACTER_ID, pa.string(), nullable=False),
        pa.field(NAME, pa.string()),
        pa.field(MERGED_INTO, pa.string()),
        pa.field(IDENTITY, _MAYBE_VEC),
        pa.field(N_INSTANCES, pa.int64()),
        pa.field(EPISODES, pa.list_(pa.string())),
        pa.field(SAMPLE_URI, pa.string()),
        pa.field(DESCRIPTOR, pa.string()),
        pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
    ], metadata={b"characters_schema_version": b"1"})


def outfits_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field(OUTFIT_ID, pa.string(), nullable=False),
        pa.field(CHARACTER_ID, pa.string(), nullable=False),
        pa.field(LOOK, _vec(dim)),
        pa.field(IDENTITY, _MAYBE_VEC),
        pa.field(N_INSTANCES, pa.int64()),
        pa.field(EPISODES, pa.list_(pa.string())),
        pa.field(SAMPLE_URI, pa.string()),
        pa.field(DESCRIPTOR, pa.string()),
        pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
    ], metadata={b"outfits_schema_version": b"1"})


def character_instances_schema(dim: int) -> pa.Schema:
    return pa.schema([
        pa.field(ID, pa.string(), nullable=False),  # "<frame id>/i<instance>", as in `pose`
        pa.field(EPISODE, pa.string(), nullable=False),
        pa.field(SHOT, pa.string(), nullable=False),
        pa.field(FRAME_INDEX, pa.int32(), nullable=False),
        pa.field(FRAME_ID, pa.string(), nullable=False),
        pa.field(INSTANCE_ID, pa.int32(), nullable=False),
        pa.field(BOX, pa.list_(pa.int32(), 4)),
        pa.field("area", pa.float32()),
        pa.field(CHARACTER_ID, pa.string(), nullable=False),
        pa.field(OUTFIT_ID, pa.string(), nullable=False),
        pa.field(LOOK, _vec(dim)),
        pa.field(FACE_VECTOR, _MAYBE_VEC),
        pa.field(DESCRIPTOR, pa.string()),
        pa.field(PIPELINE_VERSION, pa.string()),
        pa.field(UPDATED_AT, pa.timestamp("us", tz="UTC")),
    ], metadata={b"character_instances_schema_version": b"1"})
