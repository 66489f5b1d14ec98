"""Configurable resources: where data lives, which models run. Set in the UI's launchpad or in code."""


import functools
from pathlib import Path

import dagster as dg

from anime_assets import settings
from anime_assets.keys import episode_key_from_filename, validate_key
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

    def episode_video(self, episode: str) -> Path:
        """The inbox file whose name gives this episode key (keys are sanitised, so no traversal)."""
        validate_key(episode, "episode")
        folder = self.episodes_dir()
        matches = []
        if folder.is_dir():
            for p in sorted(folder.iterdir()):
                if p.is_file() and p.suffix.lower() in settings.VIDEO_EXTENSIONS:
                    try:
                        if episode_key_from_filename(p.name) == episode:
                            matches.append(p)
                    except ValueError:
                        continue
        if not matches:
            raise FileNotFoundError(f"episode {episode}: no video file for it in {folder}")
        if len(matches) > 1:
            raise ValueError(f"episode {episode}: several files map to this key: {', '.join(m.name for m in matches)}")
        return matches[0]


class ShotDetectorResource(dg.ConfigurableResource):
    use_transnet: bool = True  # False: classical detector only (weaker on dissolves)

    def scorer(self):
        if not self.use_transnet:
            return None
        from anime_assets.models.transnet import get_transnet

        return get_transnet()


class EmbedderResource(dg.ConfigurableResource):
    """CLIP through open_clip by default; offline colour-layout embedder when weights are missing."""

    model: str = "ViT-B-32"
    pretrained: str = "laion2b_s34b_b79k"  # a tag, 'hf-hub:org/repo', or a local checkpoint path
    device: str = "cpu"
    allow_offline_fallback: bool = True
    allow_download: bool = True  # fetch missing weights from the Hugging Face hub (never when HF_HUB_OFFLINE=1)
    batch_size: int = 32

    def load(self):
        """(embedder, warning or None); loaded once per process, so once per run."""
        return _load_embedder(self.model, self.pretrained, self.device, self.allow_offline_fallback,
                              self.allow_download, self.batch_size)


@functools.lru_cache(maxsize=4)
def _load_embedder(model: str, pretrained: str, device: str, allow_fallback: bool, allow_download: bool,
                   batch_size: int):
    from anime_assets.vision.embed import load_embedder

    return load_embedder(model, pretrained, device=device, allow_fallback=allow_fallback,
                         allow_download=allow_download, batch_size=batch_size)


class LayerModelsResource(dg.ConfigurableResource):
    """Models of the layer assets. "auto": the best one present (anime-seg ISNet, then the MediaPipe
    selfie prior shipped in a registry wheel; LaMa, then OpenCV Telea); "none": no segmentation
    prior (motion against the shot plate only)."""

    segmenter: str = "auto"  # auto | anime-seg | mediapipe-selfie | none
    segmenter_path: str = ""  # a local anime-seg .onnx instead of the hub file
    inpainter: str = "auto"  # auto | lama | telea
    allow_download: bool = True  # fetch missing weights from the Hugging Face hub (never when HF_HUB_OFFLINE=1)
    work_width: int = 640  # camera track, plate and coarse masks at most this wide

    def load(self):
        """(LayerModels, [warnings]); loaded once per process."""
        return _load_layer_models(self.segmenter, self.segmenter_path, self.inpainter, self.allow_download)


@functools.lru_cache(maxsize=4)
def _load_layer_models(segmenter: str, segmenter_path: str, inpainter: str, allow_download: bool):
    from anime_assets.models.clip import ModelUnavailable
    from anime_assets.models.inpaint import load_inpainter
    from anime_assets.models.segment import load_segmenter
    from anime_assets.stages.layers import LayerModels

    warnings = []
    seg = None
    if segmenter != "none":
        try:
            seg = load_segmenter(segmenter, allow_download=allow_download, path=segmenter_path or None)
        except ModelUnavailable as e:
            warnings.append(f"no character segmentation model ({e}); layers use motion against the shot "
                            f"plate only, so a character that never moves in a shot is not separated")
        if seg is not None and getattr(seg, "fallback_reason", None):
            warnings.append(f"segmentation: {seg.fallback_reason}; using {seg.model_id}")
    inp = load_inpainter(inpainter, allow_download=allow_download)
    if getattr(inp, "fallback_reason", None):
        warnings.append(f"inpainting: {inp.fallback_reason}; using {inp.model_id}")
    return LayerModels(seg, inp), warnings
