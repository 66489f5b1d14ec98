"""Dataset exports for trainers (issue 5): the kohya-ss sd-scripts / musubi-tuner folder layout
(`export_kohya`) and a torch `Dataset` for custom trainers (`AnimeAssetsDataset`, imported lazily
so that the export does not import torch)."""

from anime_assets.export.kohya import (
    ExportError,
    ExportReport,
    MissingSourceError,
    balanced_repeats,
    build_caption,
    export_kohya,
    render_sample,
    safe_name,
)

__all__ = [
    "AnimeAssetsDataset",
    "ExportError",
    "ExportReport",
    "MissingSourceError",
    "balanced_repeats",
    "build_caption",
    "collate",
    "export_kohya",
    "render_sample",
    "safe_name",
]


def __getattr__(name: str):
    if name in ("AnimeAssetsDataset", "collate"):
        from anime_assets.export import torch_dataset

        return getattr(torch_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
