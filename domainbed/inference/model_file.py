"""The exported model file and :func:`load_model`.

One ``torch.save`` dict of plain values and tensors (it loads with ``weights_only=True``):

``format`` / ``format_version``  ``"domainbed-model"``, 1
``domainbed_version``            the package version that wrote it
``kind``                         ``"predictor"`` (featurizer + classifier, every algorithm whose
                                 prediction is that) or ``"algorithm"`` (the whole algorithm,
                                 for those that predict with more, e.g. ARM's context network)
``algorithm`` ``hparams`` ``dataset`` ``args``   what the run was trained with
``input_shape`` ``num_classes`` ``num_domains`` ``class_names`` ``environments``
``normalisation``                ``{"mean", "std"}`` the images are normalised with before the
                                 model (None: pixel values in [0, 1])
``backbone_input``               the input scaling the backbone's pretrained weights expect
                                 (rebuilt without reading the weight file), or None
``selection``                    the rule, test env, trial and hparams seeds, step, scores,
                                 the run folder and weights file, and the selected record
``provenance``                   where the run's code came from (None when the run did not record it)
``state_dict``                   the weights

:func:`load_model` needs only this file: the network is rebuilt from ``hparams`` with
``pretrained`` off (the weights come from the file), so no pretrained-weights file, dataset
or run folder has to be present.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from torch import nn

from domainbed.lib.errors import UserError
from domainbed.training.integrity import DamagedFile, load_verified

FORMAT = "domainbed-model"
FORMAT_VERSION = 1
KINDS = ("predictor", "algorithm")


class ModelFileError(UserError):
    """The file is not an intact model written by ``export_model``; the message says why, in one line."""


class ExportedModel(nn.Module):
    """A trained network from an exported file: ``model(images) -> logits``.

    ``images`` are ``(N, C, H, W)`` float tensors at ``input_shape``, normalised with
    ``normalisation`` (what the training data delivered). The file's description is kept
    as attributes: ``class_names``, ``input_shape``, ``normalisation``, ``selection``, ``info``.
    """

    def __init__(self, network: nn.Module, info: Mapping[str, Any]):
        super().__init__()
        self.network = network
        self.info = {k: v for k, v in info.items() if k != "state_dict"}
        self.class_names: list[str] = list(info["class_names"])
        self.input_shape: tuple[int, ...] = tuple(int(v) for v in info["input_shape"])
        self.normalisation: dict[str, list[float]] | None = info.get("normalisation")
        self.selection: dict[str, Any] = dict(info.get("selection") or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.predict(x)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.network.predict(x)

    def describe(self) -> str:
        """One line: algorithm, dataset, selection rule and step."""
        sel = self.selection
        where = f"test env {sel.get('test_env')}, trial {sel.get('trial_seed')}, hparams seed {sel.get('hparams_seed')}"
        step = "averaged model" if sel.get("averaged") else f"step {sel.get('step')}"
        return (f"{self.info.get('algorithm')} on {self.info.get('dataset')} ({where}), {sel.get('rule', '?')} "
                f"selection, {step}")


def set_backbone_input(featurizer: nn.Module, backbone_input: Mapping[str, Any] | None) -> None:
    """Give a featurizer built without its weight file the input scaling those weights expect."""
    if backbone_input:
        from domainbed.networks.backbones import InputRescale

        featurizer.input_rescale = InputRescale(tuple(backbone_input["mean"]), tuple(backbone_input["std"]))


def backbone_input_of(featurizer: nn.Module) -> dict[str, list[float]] | None:
    """The input scaling a featurizer's pretrained weights expect (None: ImageNet's, no rescale)."""
    expected = getattr(getattr(featurizer, "trunk", None), "expected_input", None)
    if expected is None:
        return None
    mean, std = expected
    return {"mean": [float(v) for v in mean], "std": [float(v) for v in std]}


def build_network(info: Mapping[str, Any]) -> nn.Module:
    """The network described by ``info`` (``kind``, ``algorithm``, ``hparams``, shapes), with
    its weights loaded from ``info["state_dict"]``, in eval mode."""
    hparams = {**info["hparams"], "pretrained": False, "weights_path": ""}
    input_shape = tuple(int(v) for v in info["input_shape"])
    num_classes = int(info["num_classes"])
    if info["kind"] == "predictor":
        from domainbed.algorithms.base import Predictor
        from domainbed.networks import build_classifier, build_featurizer

        featurizer = build_featurizer(input_shape, hparams)
        classifier = build_classifier(featurizer.n_outputs, num_classes, bool(hparams.get("nonlinear_classifier", False)))
        network: nn.Module = Predictor({"featurizer": featurizer, "classifier": classifier})
    else:
        from domainbed.algorithms import get_algorithm_class

        network = get_algorithm_class(info["algorithm"])(input_shape, num_classes, int(info["num_domains"]), hparams)
        featurizer = network.featurizer
    set_backbone_input(featurizer, info.get("backbone_input"))
    network.load_state_dict(info["state_dict"])
    return network.eval()


def read_model_file(path: str | os.PathLike) -> dict[str, Any]:
    """The checked contents of an exported model file; :class:`ModelFileError` otherwise."""
    if not os.path.isfile(path):
        raise ModelFileError(f"model file {path} does not exist; write one with python -m domainbed.scripts.export_model")
    try:
        info = load_verified(path)
    except DamagedFile as err:
        raise ModelFileError(f"model file {path} is damaged ({err.reason}); export it again") from None
    except UserError as err:  # UnsafeFile: needs pickle
        raise ModelFileError(" ".join(str(err).split())) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        hint = " (a run's model.pt: export it with python -m domainbed.scripts.export_model)" if (
            isinstance(info, dict) and "model_dict" in info) else ""
        raise ModelFileError(f"{path} is not a model file written by domainbed.scripts.export_model{hint}")
    if int(info.get("format_version", 0)) > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {info.get('format_version')}, newer than this domainbed "
                             f"reads ({FORMAT_VERSION}); upgrade domainbed")
    missing = [k for k in ("kind", "algorithm", "hparams", "input_shape", "num_classes", "class_names", "state_dict")
               if k not in info]
    if missing or info["kind"] not in KINDS:
        raise ModelFileError(f"{path} is an incomplete model file (missing {', '.join(missing) or 'a known kind'}); export it again")
    return info


def load_model(path: str | os.PathLike, device: str | torch.device | None = None) -> ExportedModel:
    """The model in the exported file ``path`` as a module mapping normalised images to
    logits, in eval mode, on ``device`` (default: CPU). Needs nothing but the file.

    Raises :class:`ModelFileError` (a ``ValueError``) with a one-line message for a missing,
    damaged or foreign file.
    """
    info = read_model_file(path)
    try:
        network = build_network(info)
    except (RuntimeError, KeyError) as err:  # state dict does not fit the described network
        first = (str(err).splitlines() or [""])[0][:200]
        raise ModelFileError(f"{path}: its weights do not fit the network it describes ({first})") from None
    model = ExportedModel(network, info).eval()
    return model.to(device) if device is not None else model
