"""Configurable resources: where data lives, which models run. Set in the UI's launchpad or in code."""


import functools
from pathlib import Path

import dagster as dg

from anime_assets import settings
from anime_assets.storage.inbox import Inbox
from anime_assets.storage.media import MediaStore
from anime_assets.storage.tables import FrameTables


class StorageResource(dg.ConfigurableResource):
    """The data root: episodes inbox, media store and LanceDB tables under one folder."""

    data_root: str = ""  # empty: $ANIME_ASSETS_DATA or ./data
    image_format: str = "jpg"  # kept frames: jpg (fast, q=jpeg_quality) or png (lossless, ~10x slower)
    jpeg_quality: int = 95

    @property
    def root(self) -> Path:
        return settings.data_root(self.data_root or None)

    def media(self) -> MediaStore:
        return MediaStore(settings.media_dir(self.root))

    def tables(self) -> FrameTables:
        return FrameTables(settings.lancedb_uri(self.root))

    def frames_for_reading(self) -> FrameTables:
        """The existing `frames` table, opened with whatever embedding model it holds."""
        tables = self.tables()
        tables.open_frames()
        return tables

    def episodes_dir(self) -> Path:
        return settings.episodes_dir(self.root)

    def inbox(self) -> Inbox:
        return Inbox(self.episodes_dir())

    def episode_video(self, episode: str) -> Path:
        """The inbox file registered for this episode key (keys are sanitised, so no traversal)."""
        return self.inbox().video(episode)


class ShotDetectorResource(dg.ConfigurableResource):
    use_transnet: bool = True  # False: classical detector only (weaker on dissolves)

    def scorer(self):
        if not self.use_transnet:
            return None
        from anime_assets.models.transnet import get_transnet

        return get_transnet()


def _auto(stage: str, choice: str) -> tuple[str, str | None]:
    """(loader name, why it is not the best model or None). "auto" becomes the model the
    definitions' code versions name (resolved from local files, see models.selection); a name
    asked for explicitly is loaded as asked (downloaded when allowed and online)."""
    from anime_assets.models import selection

    if (choice or "auto").strip().lower() != "auto":
        return choice, None
    r = selection.resolve(stage, "auto")
    return selection.resource_choice(r), r.reason


class EmbedderResource(dg.ConfigurableResource):
    """CLIP through open_clip; the weight-free colour-layout embedder when CLIP is not here."""

    embedder: str = "auto"  # auto (CLIP when its weights are here) | clip | colour-layout
    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"  # a tag, 'hf-hub:org/repo', or a local checkpoint path
    device: str = "cpu"
    allow_offline_fallback: bool = True
    allow_download: bool = True  # an explicitly chosen CLIP may be fetched from the hub (never when HF_HUB_OFFLINE=1)
    batch_size: int = 32

    def load(self):
        """(embedder, warning or None); loaded once per process, so once per run."""
        choice, why = _auto("embedder", self.embedder)
        return _load_embedder(choice, why, self.model, self.pretrained, self.device, self.allow_offline_fallback,
                              self.allow_download, self.batch_size)


@functools.lru_cache(maxsize=4)
def _load_embedder(choice: str, why: str | None, model: str, pretrained: str, device: str, allow_fallback: bool,
                   allow_download: bool, batch_size: int):
    from anime_assets.vision.embed import COLOUR_LAYOUT_ID, ColourLayoutEmbedder, load_embedder

    if choice == "colour-layout":
        warning = None if why is None else (
            f"CLIP is NOT AVAILABLE ({why}). FALLING BACK to the weight-free {COLOUR_LAYOUT_ID} embedder: "
            "vectors describe colour layout and line art only, there is no text search, and they are stored "
            "apart from CLIP vectors. `anime-assets models pull` fetches CLIP where there is network.")
        return ColourLayoutEmbedder(), warning
    return load_embedder(model, pretrained, device=device, allow_fallback=allow_fallback,
                         allow_download=allow_download, batch_size=batch_size)


class LayerModelsResource(dg.ConfigurableResource):
    """Models of the layer assets. "auto": the best one here (anime-seg ISNet, then the MediaPipe
    selfie prior shipped in a registry wheel; LaMa, then OpenCV Telea); "none": no segmentation
    prior (motion against the shot plate only)."""

    segmenter: str = "auto"  # auto | anime-seg | mediapipe-selfie | none
    segmenter_path: str = ""  # a local anime-seg .onnx instead of the hub file
    inpainter: str = "auto"  # auto | lama | telea
    allow_download: bool = True  # an explicitly chosen model may be fetched from the hub (never when HF_HUB_OFFLINE=1)
    work_width: int = 640  # camera track, plate and coarse masks at most this wide

    def load(self):
        """(LayerModels, [warnings]); loaded once per process."""
        seg, seg_why = (self.segmenter, None) if self.segmenter_path else _auto("segmenter", self.segmenter)
        inp, inp_why = _auto("inpainter", self.inpainter)
        return _load_layer_models(seg, seg_why, self.segmenter_path, inp, inp_why, self.allow_download)


@functools.lru_cache(maxsize=4)
def _load_layer_models(segmenter: str, seg_why: str | None, segmenter_path: str, inpainter: str,
                       inp_why: str | None, allow_download: bool):
    from anime_assets.models.clip import ModelUnavailable
    from anime_assets.models.inpaint import load_inpainter
    from anime_assets.models.segment import load_segmenter
    from anime_assets.stages.layers import LayerModels

    warnings = []
    seg = None
    if segmenter == "none" and seg_why:
        warnings.append(f"no character segmentation model ({seg_why}); layers use motion against the shot "
                        f"plate only, so a character that never moves in a shot is not separated")
    elif segmenter != "none":
        try:
            seg = load_segmenter(segmenter, allow_download=allow_download, path=segmenter_path or None)
        except ModelUnavailable as e:
            warnings.append(f"no character segmentation model ({e}); layers use motion against the shot "
                            f"plate only, so a character that never moves in a shot is not separated")
        if seg is not None and (seg_why or getattr(seg, "fallback_reason", None)):
            warnings.append(f"segmentation: {seg_why or seg.fallback_reason}; using {seg.model_id}")
    inp = load_inpainter(inpainter, allow_download=allow_download)
    if inp_why or getattr(inp, "fallback_reason", None):
        warnings.append(f"inpainting: {inp_why or inp.fallback_reason}; using {inp.model_id}")
    return LayerModels(seg, inp), warnings


class AnnotationModelsResource(dg.ConfigurableResource):
    """Models of the pose, expression and caption assets. "auto": the best one here."""

    faces: str = "auto"  # auto (the YOLO anime face detector when here, else animeface) | anime-face-yolo | animeface
    pose: str = "auto"  # auto (DWPose, then MediaPipe pose from the registry wheel) | dwpose | mediapipe | none
    tagger: str = "auto"  # auto (WD ViT tagger v3 when here) | wd-vit-tagger-v3 | none
    expression: str = "auto"  # auto (the tagger, else CLIP zero-shot on the face) | tagger | clip | none
    allow_download: bool = True  # an explicitly chosen model may be fetched from the hub (never when HF_HUB_OFFLINE=1)

    def load_faces(self):
        """(face detector, warning or None)."""
        return _load_annotation_model("faces", *_auto("faces", self.faces), self.allow_download)

    def load_pose(self):
        """(PoseEstimator or None, warning or None)."""
        return _load_annotation_model("pose", *_auto("pose", self.pose), self.allow_download)

    def load_tagger(self):
        """(Tagger or None, warning or None)."""
        return _load_annotation_model("tagger", *_auto("tagger", self.tagger), self.allow_download)


def _loaders():
    from anime_assets.models.face_detect import load_face_detector
    from anime_assets.models.pose import load_pose_estimator
    from anime_assets.models.tagger import load_tagger

    return {"faces": (load_face_detector, "face detector"), "pose": (load_pose_estimator, "pose model"),
            "tagger": (load_tagger, "anime tagger")}


@functools.lru_cache(maxsize=8)
def _load_annotation_model(stage: str, choice: str, why: str | None, allow_download: bool):
    """(model or None, warning or None): the model, or None with why (turned off / cannot load);
    a warning also names a fallback ("auto" resolved to a lesser model, or the loader fell back)."""
    from anime_assets.models.clip import ModelUnavailable

    load, what = _loaders()[stage]
    if choice == "none":
        return None, f"no {what} ({why or stage + ' turned off'})"
    try:
        model = load(choice, allow_download=allow_download)
    except ModelUnavailable as e:
        return None, f"no {what} ({e.reason})"
    reason = why or getattr(model, "fallback_reason", None)
    return model, (f"{stage}: {reason}; using {model.model_id}" if reason else None)
