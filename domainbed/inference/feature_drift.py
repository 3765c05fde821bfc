"""Feature drift: how far a trained network's pooled features moved from the pre-trained prior's.

FT-LP (arXiv 2406.05628) and MIRO (arXiv 2203.10789) pull the fine-tuned features toward
those of the frozen pre-trained network. When such a method does not beat ERM, two readings
differ in what they imply: the prior did not hold the features, or it held them and that did
not help. This module tells them apart on the held-out domain, after a sweep:

* :func:`linear_cka`: linear centred kernel alignment (Kornblith et al., ICML 2019,
  "Similarity of Neural Network Representations Revisited"), 1 for representations equal up
  to a rotation and an isotropic scale, near 0 for unrelated ones; blind to the scale;
* :func:`mean_squared_distance`: the mean over images of the squared Euclidean distance
  between the two pooled feature vectors (summed over dimensions, not averaged over them);
  it sees the scale, and :attr:`JobDrift.prior_spread` is its yardstick;
* :func:`measure_job`: both, for one finished job folder, on all images of its test
  domain (or a fixed seeded subset of at most ``max_images``).

The command line is ``python -m domainbed.scripts.feature_drift``.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from domainbed.datasets import build_dataset
from domainbed.lib.errors import UserError
from domainbed.networks import build_featurizer
from domainbed.networks.backbones import resolve_backbone_name
from domainbed.training.atomic_files import read_jsonl
from domainbed.training.integrity import DamagedFile, load_verified

MAX_IMAGES = 2000  # default cap on the held-out images measured (a seeded subset above it)
RUNNING_BATCH = 64  # images per forward pass on running statistics (the features do not depend on it)
BN_MODES = ("as_trained", "running", "batch")
FINAL_MODEL = "model.pt"
_BN = nn.modules.batchnorm._BatchNorm


# ----------------------------------------------------------------------------- the two measures


def _as_matrix(name: str, t: Tensor) -> Tensor:
    if t.dim() != 2:
        raise ValueError(f"{name} must be (samples, features) pooled features, got shape {tuple(t.shape)}")
    return t.detach().to("cpu", torch.float64)


def linear_cka(x: Tensor, y: Tensor) -> float:
    """Linear CKA of two representations of the same ``n`` samples, ``x`` ``(n, p)`` and
    ``y`` ``(n, q)`` (Kornblith et al., ICML 2019, eq. for the linear kernel)::

        CKA = ‖Yᶜᵀ Xᶜ‖²_F / (‖Xᶜᵀ Xᶜ‖_F · ‖Yᶜᵀ Yᶜ‖_F)

    with ``Xᶜ``, ``Yᶜ`` the features centred over samples (the HSIC of the linear Gram
    matrices, normalised; the feature-space form is exact and costs ``n·p·q``). In [0, 1];
    invariant to orthogonal transforms and isotropic scaling of either side. Computed in
    float64. NaN when either side is constant over the samples (CKA is undefined there).
    """
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same samples: {x.shape[0]} rows against {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError("linear CKA needs at least 2 samples")
    x = x - x.mean(0, keepdim=True)
    y = y - y.mean(0, keepdim=True)
    cross = torch.linalg.matrix_norm(y.T @ x) ** 2
    norm = torch.linalg.matrix_norm(x.T @ x) * torch.linalg.matrix_norm(y.T @ y)
    if norm == 0:
        return float("nan")
    return float(cross / norm)


def mean_squared_distance(x: Tensor, y: Tensor) -> float:
    """``mean_i ‖x_i − y_i‖²``: the squared Euclidean distance between each sample's two
    feature vectors, summed over the feature dimensions (not averaged over them), averaged
    over the ``n`` samples. ``x`` and ``y`` are ``(n, d)``; computed in float64."""
    x, y = _as_matrix("x", x), _as_matrix("y", y)
    if x.shape != y.shape:
        raise ValueError(f"x and y must have the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.shape[0] == 0:
        raise ValueError("mean squared distance of zero samples")
    return float(((x - y) ** 2).sum(1).mean())


def total_variance(x: Tensor) -> float:
    """``mean_i ‖x_i − x̄‖²``, the spread of ``(n, d)`` features about their mean: the
    :func:`mean_squared_distance` of an uninformative copy that outputs the mean feature."""
    x = _as_matrix("x", x)
    return float(((x - x.mean(0, keepdim=True)) ** 2).sum(1).mean())


# ----------------------------------------------------------------------------- one finished job


class DriftError(UserError):
    """A job folder whose drift cannot be measured; the message says why and what to do."""


@dataclass(frozen=True)
class JobDrift:
    """The drift of one job's final features from the prior's on its held-out domain.

    ``cka`` and ``msd`` compare the two networks' pooled features image by image;
    ``prior_spread`` is the prior's :func:`total_variance` on the same images (an MSD of that
    size means the features moved as far as the prior's own spread). ``n`` images of ``n_domain``
    (``subset``: ``all`` or ``seeded <seed>``). ``bn``: ``running`` (BatchNorm on its running
    statistics, as a frozen-BatchNorm job trains), ``batch`` (both networks normalise each
    batch of held-out images with its own statistics, as a batch-statistics job trains; the
    batches hold the held-out domain only) or ``none`` (no BatchNorm). ``image_size``: the
    side of the images the dataset renders; ``step``: the last recorded step (``model.pt``'s).
    ``prior``: ``pretrained`` or ``random init`` (a job trained from scratch has no
    pre-trained prior; its stand-in is a fresh network seeded with ``seed``).
    """

    job: str
    dataset: str
    algorithm: str
    test_env: int
    trial_seed: int
    hparams_seed: int
    seed: int
    image_size: int
    backbone: str
    fixed_hparams: dict[str, Any]
    step: int | None
    cka: float
    msd: float
    prior_spread: float
    n: int
    n_domain: int
    subset: str
    bn: str
    prior: str
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def read_job(job: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(args, model)`` of a finished job folder: its ``args.json`` and its ``model.pt``
    (the last step's weights, loaded with ``weights_only``)."""
    model_path = job / FINAL_MODEL
    if not model_path.is_file():
        raise DriftError(f"{job.name}: no {FINAL_MODEL} (the job ran with --skip_model_save, or its weights were not "
                         "kept); rerun the job to measure its drift")
    try:
        model = load_verified(model_path)
    except DamagedFile as err:
        raise DriftError(f"{job.name}: {FINAL_MODEL} is damaged ({err.reason}); rerun the job") from None
    if not isinstance(model, dict) or "model_dict" not in model or "hparams" not in model:
        raise DriftError(f"{job.name}: {FINAL_MODEL} is not a training run's model file (no model_dict / hparams)")
    args_path = job / "args.json"
    args = json.loads(args_path.read_text(encoding="utf-8")) if args_path.is_file() else dict(model.get("args") or {})
    return args, model


def featurizer_state(model_dict: Mapping[str, Any], job: str) -> dict[str, Tensor]:
    """The ``featurizer.*`` entries of a saved state dict, without the prefix."""
    prefix = "featurizer."
    state = {k[len(prefix):]: v for k, v in model_dict.items() if k.startswith(prefix) and isinstance(v, Tensor)}
    if not state:
        raise DriftError(f"{job}: {FINAL_MODEL} holds no featurizer.* weights; its algorithm's features cannot be read")
    return state


def build_pair(input_shape: tuple[int, ...], hparams: Mapping[str, Any], trained_state: Mapping[str, Tensor],
               seed: int = 0) -> tuple[nn.Module, nn.Module, str]:
    """``(trained, prior, prior_kind)``: two featurizers built from the same ``hparams``
    (backbone, pretrained weights from the local file, ``freeze_bn``), in eval mode, the
    first holding ``trained_state``. Without pretrained weights the prior is a fresh network
    seeded with ``seed`` (the global random state is left as it was)."""
    pretrained = bool(hparams.get("pretrained", False))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        prior = build_featurizer(tuple(input_shape), hparams)
    trained = copy.deepcopy(prior)
    trained.load_state_dict(dict(trained_state))
    for net in (trained, prior):
        net.eval().requires_grad_(False)
    return trained, prior, "pretrained" if pretrained else "random init"


def resolve_bn(featurizer: nn.Module, bn: str) -> str:
    """The BatchNorm mode to measure in: ``as_trained`` is ``running`` when the job froze
    BatchNorm (``freeze_bn``) and ``batch`` otherwise; ``none`` without BatchNorm layers."""
    if bn not in BN_MODES:
        raise ValueError(f"bn must be one of {', '.join(BN_MODES)}, got {bn!r}")
    if not any(isinstance(m, _BN) for m in featurizer.modules()):
        return "none"
    if bn == "as_trained":
        return "running" if getattr(featurizer, "freeze_bn", True) else "batch"
    return bn


def use_batch_statistics(net: nn.Module) -> None:
    """Every BatchNorm of ``net`` normalises with the batch's statistics, its running
    statistics untouched (momentum 0); everything else (dropout) stays in eval mode."""
    for m in net.modules():
        if isinstance(m, _BN):
            m.train()
            m.momentum = 0.0


def image_indices(n_domain: int, max_images: int | None, seed: int) -> tuple[np.ndarray, str]:
    """All ``n_domain`` indices, or a sorted seeded subset of ``max_images`` of them."""
    if not max_images or n_domain <= max_images:
        return np.arange(n_domain), "all"
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_domain, size=max_images, replace=False)), f"seeded {seed}"


def batches(indices: np.ndarray, batch_size: int, seed: int) -> list[np.ndarray]:
    """``indices`` in a seeded random order (batches mix the classes), cut into nearly equal
    batches of at most ``batch_size`` (no batch of one, which batch statistics cannot normalise)."""
    order = np.random.default_rng(seed).permutation(indices)
    n_batches = max(1, -(-len(order) // batch_size))
    return [b for b in np.array_split(order, n_batches) if len(b)]


@torch.no_grad()
def pooled_pair(trained: nn.Module, prior: nn.Module, domain: Any, groups: list[np.ndarray],
                device: torch.device, progress: Callable[[Iterable, int], Iterable] | None = None
                ) -> tuple[Tensor, Tensor]:
    """Both networks' pooled features of the images of ``domain`` (a dataset of
    ``(image, label)``), batch by batch, on the same batches; rows in the order of ``groups``."""
    out_t, out_p = [], []
    it: Iterable = groups if progress is None else progress(groups, len(groups))
    for group in it:
        x = torch.stack([domain[int(i)][0] for i in group]).to(device)
        out_t.append(trained(x).float().cpu())
        out_p.append(prior(x).float().cpu())
    return torch.cat(out_t), torch.cat(out_p)


def measure_job(job: str | Path, data_dir: str | None = None, max_images: int | None = MAX_IMAGES, seed: int = 0,
                bn: str = "as_trained", batch_size: int | None = None, device: str = "cpu",
                progress: Callable[[Iterable, int], Iterable] | None = None) -> JobDrift:
    """Linear CKA and mean squared distance between a finished job's final pooled features
    (``model.pt``) and the prior's, on the job's held-out test domain at its image size.

    The prior is the featurizer the job's hparams build before training (same backbone and
    pretrained weights, eval mode); the dataset is built with the job's hparams and no
    augmentation. ``data_dir``: where the dataset is (default: the job's ``--data_dir``).
    ``max_images``: all of the domain's images up to it, else a sorted subset drawn with
    ``seed`` (0 or None: all). ``bn``: :func:`resolve_bn`. ``batch_size``: images per forward
    pass (default: a training step's, ``batch_size`` × training domains, with batch statistics;
    64 otherwise, where it does not change the features and keeps 128-px activations small).
    Raises :class:`DriftError` for a job that cannot be measured.
    """
    start = time.perf_counter()
    job = Path(job)
    args, model = read_job(job)
    hparams = dict(model["hparams"])
    test_envs = [int(e) for e in args.get("test_envs") or []]
    if len(test_envs) != 1:
        raise DriftError(f"{job.name}: drift is measured on one held-out domain; the job has test envs {test_envs}")
    test_env = test_envs[0]
    dataset_name = str(args.get("dataset") or model.get("dataset"))
    try:
        data = build_dataset(dataset_name, data_dir or args.get("data_dir"), test_envs,
                             {**hparams, "data_augmentation": False})
    except (UserError, OSError) as err:
        raise DriftError(f"{job.name}: cannot read dataset {dataset_name} ({' '.join(str(err).split())}); "
                         "pass --data_dir") from None
    input_shape = tuple(int(v) for v in model.get("input_shape") or data.input_shape)
    if tuple(data.input_shape) != input_shape:
        raise DriftError(f"{job.name}: the dataset renders {tuple(data.input_shape)} images but the job trained on "
                         f"{input_shape}")
    try:
        trained, prior, prior_kind = build_pair(input_shape, hparams, featurizer_state(model["model_dict"], job.name),
                                                seed)
    except RuntimeError as err:  # the saved weights do not fit the network the hparams describe
        first = (str(err).splitlines() or [""])[0][:200]
        raise DriftError(f"{job.name}: its {FINAL_MODEL} does not fit the featurizer its hparams build ({first})") from None
    mode = resolve_bn(trained, bn)
    if mode == "batch":
        use_batch_statistics(trained)
        use_batch_statistics(prior)
    dev = torch.device(device)
    trained.to(dev)
    prior.to(dev)
    domain = data.datasets[test_env]
    indices, subset = image_indices(len(domain), max_images, seed)
    if batch_size is None:
        n_train = max(1, len(data.datasets) - 1)
        batch_size = int(hparams.get("batch_size", 32)) * n_train if mode == "batch" else RUNNING_BATCH
    feats_t, feats_p = pooled_pair(trained, prior, domain, batches(indices, batch_size, seed), dev, progress)
    fixed = args.get("hparams") or "{}"
    return JobDrift(
        job=job.name, dataset=dataset_name, algorithm=str(args.get("algorithm") or model.get("algorithm")),
        test_env=test_env, trial_seed=int(args.get("trial_seed", 0)), hparams_seed=int(args.get("hparams_seed", 0)),
        seed=seed, image_size=int(input_shape[-1]), backbone=resolve_backbone_name(hparams),
        fixed_hparams=json.loads(fixed) if isinstance(fixed, str) else dict(fixed), step=_last_step(job),
        cka=linear_cka(feats_t, feats_p), msd=mean_squared_distance(feats_t, feats_p),
        prior_spread=total_variance(feats_p), n=len(indices), n_domain=len(domain), subset=subset, bn=mode,
        prior=prior_kind, seconds=round(time.perf_counter() - start, 2),
    )


def _last_step(job: Path) -> int | None:
    """The last step recorded in ``results.jsonl`` (that of ``model.pt``), None without records."""
    steps = [int(r["step"]) for r in read_jsonl(job / "results.jsonl") if "step" in r and not r.get("averaged")]
    return max(steps) if steps else None


__all__ = ["BN_MODES", "DriftError", "JobDrift", "MAX_IMAGES", "build_pair", "linear_cka", "mean_squared_distance",
           "measure_job", "read_job", "resolve_bn", "total_variance"]
