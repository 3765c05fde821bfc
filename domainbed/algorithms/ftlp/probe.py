"""The prior probe: how much a frozen pre-trained prior knows about each domain, before training.

FT-LP (arXiv 2406.05628) and MIRO (arXiv 2203.10789) pull the fine-tuned features toward those
of the frozen pre-trained network. That can only help on an unseen domain if the prior's
features carry information about it. This module measures that, in seconds to minutes on a CPU:

* **Leave-one-domain-out linear probe.** For each domain held out in turn, a multinomial
  logistic regression (scikit-learn, features standardised on the training domains) is fitted
  on the prior's pooled features of the other domains and scored on the held-out one.
* **Liveness and scale of every layer FT-LP or MIRO would regularise** (the stem/stage outputs
  and the final pooled features): the fraction of *dead* channels (constant over the probe
  images, :func:`~domainbed.algorithms.ftlp.diagnostics.dead_channel_fraction`, the test FT-LP's
  start-up report uses), of *zero* channels (``|activation| <= tol`` at every position of every
  image), and the per-channel feature variance (mean, median and range over channels). MIRO's
  published variance starts at 0.1 whatever that scale is; FT-LP's calibrated σ²_Q follows it.

The prior is built exactly as training builds it: :func:`~domainbed.networks.build_featurizer`
from the hparams (backbone, pretrained weights, ``freeze_bn``), then
:func:`~domainbed.algorithms.ftlp.prior.frozen_prior`, its BatchNorm mode following the trained
network in training mode (:func:`~domainbed.algorithms.ftlp.prior.sync_batchnorm_mode`). With
frozen BatchNorm (running statistics) a feature does not depend on the batch. With batch
statistics, the batches mix the domains in a fixed random order, ``batch_size`` × (number of
training domains) images each, as in a training step, so that no domain is normalised on its own
(that would adapt to the held-out domain, which training never does).

The command line is ``python -m domainbed.scripts.probe_prior``; docs/ftlp.md, "Which layers
carry information", says when to run it.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from domainbed.algorithms.ftlp.diagnostics import MOSTLY_DEAD, dead_channel_fraction
from domainbed.algorithms.ftlp.prior import frozen_prior, sync_batchnorm_mode
from domainbed.lib.errors import UserError
from domainbed.networks import build_featurizer

# whose hparams (defaults, valid keys) the probe reads its overrides against by default:
# the prior and the layers it regularises are FT-LP's
DEFAULT_ALGORITHM = "ERM_FTLP"

# Readings of a held-out accuracy ``a`` with chance ``c = 1 / num_classes``, on the scale
# ``s = (a − c) / (1 − c)`` (0 at chance, 1 when every image is right).
LITTLE_INFORMATION = 0.1  # s below this: near chance (10 classes: a < 19 %)
MUCH_INFORMATION = 0.5  # s at or above this: most of the way to perfect (10 classes: a >= 55 %)
ZERO_TOL = 1e-6  # |activation| at or below this counts as zero


def chance_scale(acc: float, num_classes: int) -> float:
    """``(acc − c) / (1 − c)`` with ``c = 1 / num_classes``: 0 at chance, 1 at 100 %."""
    c = 1.0 / num_classes
    return (acc - c) / (1.0 - c)


def reading(domain: str, acc: float, num_classes: int) -> str:
    """One plain sentence on what a held-out probe accuracy says about the prior."""
    s = chance_scale(acc, num_classes)
    pct = f"{100 * acc:.1f} % (chance {100 / num_classes:.1f} %)"
    if s < LITTLE_INFORMATION:
        return (f"{domain}: {pct}: the prior carries little information about domain {domain} at this size; "
                "a prior term can only act as generic regularisation there")
    if s < MUCH_INFORMATION:
        return f"{domain}: {pct}: the prior carries some information about domain {domain}"
    return f"{domain}: {pct}: the prior carries much information about domain {domain}"


class ChannelStats:
    """Per-channel statistics of one layer, accumulated batch by batch (feature maps need not
    be kept: 4,000 images of a 128-px stem would take a gigabyte).

    ``update(f)`` takes ``(N, C)`` or ``(N, C, H, W)``. The variance is over every other
    dimension (images and positions) with ddof 0, as :func:`~domainbed.algorithms.ftlp.prior.
    channel_variance` measures it, merged across batches exactly (Chan et al.'s pairwise update,
    in float64). Per-image spatial means are kept, ``(N, C)``, for the dead-channel test.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.m2: torch.Tensor | None = None
        self.max_abs: torch.Tensor | None = None
        self._per_image: list[torch.Tensor] = []

    def update(self, f: torch.Tensor) -> None:
        if f.dim() < 2:
            raise ValueError("ChannelStats.update needs (N, C) or (N, C, H, W) features")
        f = f.detach().to("cpu", torch.float64)
        flat = f.transpose(0, 1).reshape(f.shape[1], -1)  # (C, N·H·W)
        n = flat.shape[1]
        mean = flat.mean(1)
        m2 = ((flat - mean[:, None]) ** 2).sum(1)
        max_abs = flat.abs().amax(1)
        if self.mean is None:
            self.mean, self.m2, self.max_abs = mean, m2, max_abs
        else:
            assert self.m2 is not None and self.max_abs is not None
            total = self.count + n
            delta = mean - self.mean
            self.mean = self.mean + delta * (n / total)
            self.m2 = self.m2 + m2 + delta**2 * (self.count * n / total)
            self.max_abs = torch.maximum(self.max_abs, max_abs)
        self.count += n
        self._per_image.append(f.flatten(2).mean(-1) if f.dim() > 2 else f)

    @property
    def channels(self) -> int:
        return 0 if self.mean is None else int(self.mean.numel())

    def variance(self) -> torch.Tensor:
        """Per-channel variance (ddof 0) over all images and positions seen."""
        if self.m2 is None:
            raise ValueError("no features seen yet")
        return (self.m2 / self.count).float()

    def dead_fraction(self) -> float:
        """Fraction of channels constant over the images (the project's definition of dead)."""
        return dead_channel_fraction(torch.cat(self._per_image))

    def zero_fraction(self, tol: float = ZERO_TOL) -> float:
        """Fraction of channels with ``|activation| <= tol`` everywhere on every image."""
        if self.max_abs is None:
            raise ValueError("no features seen yet")
        return float((self.max_abs <= tol).float().mean())

    def summary(self) -> dict[str, float | int]:
        v = self.variance()
        return {"channels": self.channels, "dead_fraction": self.dead_fraction(), "zero_fraction": self.zero_fraction(),
                "var_mean": float(v.mean()), "var_median": float(v.median()), "var_min": float(v.min()),
                "var_max": float(v.max())}


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                 seed: int = 0, max_iter: int = 1000, c: float = 1.0) -> dict[str, Any]:
    """Fit a multinomial logistic regression (L2, ``C = c``, L-BFGS) on standardised
    ``train_x`` and score it; returns test and train accuracy and whether L-BFGS converged."""
    try:
        from sklearn.exceptions import ConvergenceWarning
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
    except ImportError:
        raise UserError("the prior probe's classifier needs scikit-learn: pip install 'domainbed[assets]' "
                        "(or pip install scikit-learn)") from None

    if len(np.unique(train_y)) < 2:
        raise UserError("the probe's training domains hold a single class: a classifier needs at least two; "
                        "raise --max_per_domain or check the dataset's labels")
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        model.fit(train_x, train_y)
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught)
    return {"test_acc": float(model.score(test_x, test_y)), "train_acc": float(model.score(train_x, train_y)),
            "converged": converged}


class _Items(Dataset):
    """``(image, label, domain, position)`` for a list of ``(domain, index)`` pairs."""

    def __init__(self, domains: Sequence[Dataset], items: Sequence[tuple[int, int]]):
        self.domains, self.items = domains, items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, k: int):
        d, i = self.items[k]
        x, y = self.domains[d][i]
        return x, int(y), d, k


def select_indices(sizes: Sequence[int], max_per_domain: int | None, seed: int) -> list[np.ndarray]:
    """A fixed random subset of at most ``max_per_domain`` images per domain (all if None or 0)."""
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        if not max_per_domain or n <= max_per_domain:
            out.append(np.arange(n))
        else:
            out.append(np.sort(rng.choice(n, size=max_per_domain, replace=False)))
    return out


def batchnorm_mode(prior: nn.Module) -> str:
    """``frozen`` (running statistics), ``batch`` (batch statistics) or ``none`` (no BatchNorm)."""
    bns = [m for m in prior.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return "none"
    return "batch" if any(m.training for m in bns) else "frozen"


def build_prior(input_shape: tuple[int, ...], hparams: Mapping[str, Any]) -> nn.Module:
    """The frozen prior as FT-LP and MIRO build it, its BatchNorm in the mode the trained
    network's takes in training (``freeze_bn``)."""
    featurizer = build_featurizer(input_shape, hparams)
    prior = frozen_prior(featurizer)
    sync_batchnorm_mode(featurizer.train(), prior)
    return prior


@dataclass
class ProbeResult:
    """Everything the probe measured; ``to_json()`` is what the command line writes."""

    num_classes: int
    bn_mode: str
    domains: list[dict[str, Any]] = field(default_factory=list)
    layers: list[dict[str, Any]] = field(default_factory=list)
    readings: list[str] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)
    n_per_domain: list[int] = field(default_factory=list)

    @property
    def chance(self) -> float:
        return 1.0 / self.num_classes

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["chance"] = self.chance
        out["thresholds"] = {
            "scale": "s = (accuracy - chance) / (1 - chance), chance = 1 / num_classes",
            "little_information_below": LITTLE_INFORMATION, "much_information_from": MUCH_INFORMATION,
            "dead": "channel constant over the probe images (std of per-image spatial mean < 1e-6)",
            "zero": f"|activation| <= {ZERO_TOL} at every position of every probe image",
            "mostly_dead_layer_above": MOSTLY_DEAD,
        }
        return out

    def table(self) -> str:
        """The per-domain and per-layer tables, then the readings, as plain text."""
        lines = [f"Held-out linear probe (chance {100 * self.chance:.1f} %, BatchNorm {self.bn_mode}):",
                 f"  {'domain':<14}{'train imgs':>11}{'test imgs':>10}{'held-out acc':>14}{'train acc':>11}"]
        for d in self.domains:
            lines.append(f"  {d['name']:<14}{d['n_train']:>11}{d['n_test']:>10}{100 * d['probe_acc']:>13.1f}%"
                         f"{100 * d['train_acc']:>10.1f}%" + ("" if d["converged"] else "  (L-BFGS not converged)"))
        lines += ["", "Regularisable layers of the prior (all probe images):",
                  f"  {'layer':<8}{'channels':>9}{'dead':>8}{'zero':>8}{'var mean':>11}{'var median':>12}"
                  f"{'var min':>11}{'var max':>11}"]
        for s in self.layers:
            lines.append(f"  {s['name']:<8}{s['channels']:>9}{100 * s['dead_fraction']:>7.1f}%"
                         f"{100 * s['zero_fraction']:>7.1f}%{s['var_mean']:>11.4g}{s['var_median']:>12.4g}"
                         f"{s['var_min']:>11.4g}{s['var_max']:>11.4g}")
        lines += ["", "Reading:"] + [f"  {r}" for r in self.readings]
        return "\n".join(lines)


def extract(prior: nn.Module, domains: Sequence[Dataset], indices: Sequence[np.ndarray], batch_size: int,
            device: torch.device, seed: int = 0, num_workers: int = 0,
            progress: Callable[[Iterable, int], Iterable] | None = None
            ) -> tuple[list[torch.Tensor], list[torch.Tensor], list[str], list[ChannelStats]]:
    """Pooled features and labels of the selected images of every domain, and the statistics
    of every regularisable layer (``stage0..`` then ``final``) over all of them."""
    items = [(d, int(i)) for d, idx in enumerate(indices) for i in idx]
    mode = batchnorm_mode(prior)
    if mode == "batch":  # mixed batches: no domain is normalised on its own
        order = np.random.default_rng(seed).permutation(len(items))
        items = [items[k] for k in order]
    loader = DataLoader(_Items(domains, items), batch_size=batch_size, shuffle=False, num_workers=num_workers)
    batches: Iterable = loader if progress is None else progress(loader, len(loader))
    feats: list[list[torch.Tensor]] = [[] for _ in domains]
    labels: list[list[torch.Tensor]] = [[] for _ in domains]
    positions: list[list[torch.Tensor]] = [[] for _ in domains]
    names: list[str] = []
    stats: list[ChannelStats] = []
    prior.to(device)
    with torch.inference_mode():
        for x, y, d, k in batches:
            if mode == "batch" and len(x) < 2:
                continue  # batch statistics of one image are undefined (BatchNorm refuses it)
            out = prior.forward_features(x.to(device), intermediates=True)
            layers = list(out.intermediates) + [out.final]
            if not stats:
                names = [f"stage{i}" for i in range(len(out.intermediates))] + ["final"]
                stats = [ChannelStats() for _ in layers]
            for s, f in zip(stats, layers):
                s.update(f)
            final = out.final.float().cpu()
            for j in range(len(domains)):
                mask = d == j
                if mask.any():
                    feats[j].append(final[mask])
                    labels[j].append(y[mask])
                    positions[j].append(k[mask])
    per_feat, per_label = [], []
    for j in range(len(domains)):
        if not feats[j]:
            raise UserError(f"domain {j} has no images to probe")
        pos = torch.cat(positions[j]).argsort()  # back to a deterministic order
        per_feat.append(torch.cat(feats[j])[pos])
        per_label.append(torch.cat(labels[j])[pos])
    return per_feat, per_label, names, stats


def probe_prior(domains: Sequence[Dataset], domain_names: Sequence[str], num_classes: int,
                input_shape: tuple[int, ...], hparams: Mapping[str, Any], held_out: Sequence[int] | None = None,
                max_per_domain: int | None = 1000, batch_size: int | None = None, seed: int = 0,
                device: str | torch.device = "cpu", num_workers: int = 0, c: float = 1.0,
                progress: Callable[[Iterable, int], Iterable] | None = None) -> ProbeResult:
    """Probe the frozen prior that ``hparams`` describe on ``domains`` (see the module doc).

    ``held_out``: the domains to hold out in turn (default: every one); each is scored by a
    classifier trained on all the other domains. ``batch_size``: images per forward pass
    (default: with batch statistics, ``hparams["batch_size"]`` × the number of training
    domains, as in a training step; otherwise ``hparams["eval_batch_size"]``). ``c``: the
    classifier's inverse L2 strength (scikit-learn's ``C``)."""
    if len(domains) < 2:
        raise UserError("the probe needs at least two domains: one to hold out and one to train on")
    held = list(range(len(domains))) if held_out is None else list(held_out)
    bad = [i for i in held if not 0 <= i < len(domains)]
    if bad:
        raise UserError(f"--test_envs {bad} out of range: this dataset has domains 0..{len(domains) - 1} "
                        f"({', '.join(domain_names)})")
    device = torch.device(device)
    start = time.perf_counter()
    prior = build_prior(input_shape, hparams)
    mode = batchnorm_mode(prior)
    if batch_size is None:
        if mode == "batch":
            batch_size = int(hparams.get("batch_size", 32)) * (len(domains) - 1)
        else:
            batch_size = int(hparams.get("eval_batch_size", 256))
    indices = select_indices([len(d) for d in domains], max_per_domain, seed)
    built = time.perf_counter()
    feats, labels, names, stats = extract(prior, domains, indices, batch_size, device, seed, num_workers, progress)
    extracted = time.perf_counter()
    result = ProbeResult(num_classes=num_classes, bn_mode=mode, n_per_domain=[len(f) for f in feats])
    for i in held:
        others = [j for j in range(len(domains)) if j != i]
        tx = torch.cat([feats[j] for j in others]).numpy()
        ty = torch.cat([labels[j] for j in others]).numpy()
        scores = linear_probe(tx, ty, feats[i].numpy(), labels[i].numpy(), seed=seed, c=c)
        result.domains.append({"index": i, "name": domain_names[i], "n_train": len(ty), "n_test": len(labels[i]),
                               "probe_acc": scores["test_acc"], "train_acc": scores["train_acc"],
                               "converged": scores["converged"],
                               "chance_scaled": chance_scale(scores["test_acc"], num_classes),
                               "reading": reading(domain_names[i], scores["test_acc"], num_classes)})
        result.readings.append(result.domains[-1]["reading"])
    for name, s in zip(names, stats):
        result.layers.append({"name": name, **s.summary()})
        if s.dead_fraction() > MOSTLY_DEAD:
            result.readings.append(
                f"layer {name}: {100 * s.dead_fraction():.1f} % of its channels are dead on these images; a prior "
                "term there pulls toward constants (try a larger image_size, freeze_bn false, or other ftlp_layers)")
    result.seconds = {"build": built - start, "extract": extracted - built, "probe": time.perf_counter() - extracted}
    return result
