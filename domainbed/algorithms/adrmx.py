"""ADRMX: Additive Disentanglement of Domain Features with Remix Loss (Demirel, Aptoula &
Ozkan, arXiv 2308.06624).

Two featurizers: ``f_label`` (the prediction path) and ``f_domain``. Their difference
``f_inv = f_label − f_domain`` is meant to be domain-invariant, so the label features are
the invariant part plus an additive domain part. An MLP discriminator predicts the training
domain from ``f_inv``. Updates alternate as in DANN: of every ``d_steps_per_g_step + 1``
updates, ``d_steps_per_g_step`` train the discriminator on ``CE(D(f_inv), domain)`` and one
trains both featurizers and three heads (MLPs) on::

    CE(c1(f_label), y) + CE(c2(f_inv), y)                       label heads
    + dclf_lambda · CE(c_dom(f_domain), domain)                 domain head
    + rmxd_lambda · remix                                       see below
    + cnt_lambda · (SupCon_λ(f_label) + SupCon_λ(f_inv))        :func:`supcon_lambda_loss`
    − disc_lambda · CE(D(f_inv), domain)                        fool the discriminator

Remix (the paper's latent augmentation): for each class with at least two samples in the
batch, two of its samples ``i, j`` are drawn and ``c1(f_inv[i] + f_domain[j])`` must
predict ``y_i``; the summed cross-entropy is divided by the number of classes.
Prediction is ``c1(f_label(x))``.

One Adam holds the discriminator's group and the rest (both at ``lr``, betas
``(beta1, 0.9)``, no weight decay, as in DomainBed, whose ADRMX ignores ``weight_decay``);
each step gives gradients to one group, so it equals DomainBed's two Adams and one
``optimizer.state_dict()`` saves both. The update count is a buffer (resumes alternate on).

Deliberate difference: DomainBed's code draws the remix pair as positions within the
class's index list but then indexes the whole batch with them, so its pair is usually not
of the class it loops over; we pair two samples of that class, as its comment and the paper
describe (their domains are not constrained, as in that code). No FT-LP variant: the
discriminator and generator steps use different losses.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from domainbed.algorithms.base import Algorithm, Minibatches, _flag
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.dann import MLP, is_discriminator_step
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, PerDataset, choice
from domainbed.networks import build_classifier, build_featurizer

SUPCON_TEMPERATURE = 0.07
SUPCON_LAMBDA = 0.5  # weight of same-domain pairs; other-domain pairs get 1 - lambda
_EPS = 1e-5


def supcon_lambda_loss(features: Tensor, labels: Tensor, domains: Tensor, lam: float = SUPCON_LAMBDA,
                       temperature: float = SUPCON_TEMPERATURE) -> Tensor:
    """Supervised contrastive loss (Khosla et al., arXiv 2004.11362) with pairs weighted by
    domain, as ADRMX uses it.

    With ``z`` the L2-normalised features and ``e_ij = w_ij exp(z_i·z_j / temperature)``,
    ``w_ij = lam`` for pairs of the same domain and ``1 - lam`` otherwise, anchor ``i``'s
    term is the mean over its positives ``j`` (same label, ``j ≠ i``) of
    ``log(e_ij / (Σ_{k≠i} e_ik + 1e-5) + 1e-5)``. The loss is minus the sum of these terms
    over anchors that have a positive, divided by (their number + 1). fp32.
    """
    if features.dim() != 2 or not (len(features) == len(labels) == len(domains)):
        raise ValueError(f"supcon_lambda_loss expects features (n, d) with n labels and domains; got "
                         f"{tuple(features.shape)}, {tuple(labels.shape)}, {tuple(domains.shape)}")
    with torch.autocast(features.device.type, enabled=False):
        z = F.normalize(features.float(), p=2, dim=1)
        n = len(z)
        others = ~torch.eye(n, dtype=torch.bool, device=z.device)
        same_domain = domains[:, None] == domains[None, :]
        weights = torch.full((n, n), 1.0 - lam, device=z.device)
        weights[same_domain] = lam
        e = weights * torch.exp(z @ z.T / temperature) * others
        denom = e.sum(1, keepdim=True) + _EPS
        positives = (labels[:, None] == labels[None, :]) & others
        log_frac = torch.log(e / denom + _EPS)
        n_pos = positives.sum(1)
        per_anchor = torch.where(positives, log_frac, torch.zeros_like(log_frac)).sum(1) / n_pos.clamp_min(1)
        valid = (n_pos > 0) & torch.isfinite(per_anchor)
        total = torch.where(valid, per_anchor, torch.zeros_like(per_anchor)).sum()
        return -total / (valid.sum() + 1)


def remix_pairs(labels: Tensor, num_classes: int) -> tuple[Tensor, Tensor]:
    """For each class with at least two samples, two distinct samples of it, drawn at random
    (global RNG): index tensors ``(i, j)`` on ``labels``' device, one entry per such class."""
    host = labels.detach().cpu()
    first: list[int] = []
    second: list[int] = []
    for c in range(num_classes):
        members = torch.nonzero(host == c).flatten()
        if len(members) < 2:
            continue
        pick = members[torch.randperm(len(members))[:2]]
        first.append(int(pick[0]))
        second.append(int(pick[1]))
    as_tensor = lambda v: torch.tensor(v, dtype=torch.long, device=labels.device)  # noqa: E731
    return as_tensor(first), as_tensor(second)


@register_algorithm
class ADRMX(Algorithm):
    """Additive disentanglement with a remix loss; see the module docstring."""

    EXPOSES_FEATURES = False
    SUPPORTED_OPTIMIZERS = ("adam",)
    HPARAMS = {
        "cnt_lambda": HParam(1.0, choice(1.0), "weight of the two contrastive losses"),
        "dclf_lambda": HParam(1.0, choice(1.0), "weight of the domain head's cross-entropy"),
        "disc_lambda": HParam(0.75, choice(0.75), "weight of the adversarial (discriminator-fooling) term"),
        "rmxd_lambda": HParam(1.0, choice(1.0), "weight of the remix loss"),
        "d_steps_per_g_step": HParam(2, choice(2), "discriminator updates per generator update"),
        "beta1": HParam(0.5, choice(0.5), "Adam beta1 (beta2 is 0.9)"),
        "mlp_width": HParam(256, choice(256), "discriminator width"),
        "mlp_depth": HParam(9, choice(8, 9, 10), "discriminator depth (linear layers)"),
        "mlp_dropout": HParam(0.0, choice(0), "discriminator dropout"),
        # DomainBed's ADRMX learning rates; the digit-subset family keeps its calibrated lr.
        "lr": PerDataset(
            HParam(3e-5, choice(2e-5, 3e-5, 4e-5, 5e-5), "Adam learning rate"),
            {"small": HParam(3e-3, choice(5e-4, 1e-3, 2e-3, 3e-3)), "mnist_subset": None},
        ),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        h, d = self.hparams, self.featurizer.n_outputs
        self.featurizer_domain = build_featurizer(self.input_shape, self.hparams)
        # The label heads and the domain head are MLPs whatever nonlinear_classifier says.
        self.classifier = build_classifier(d, num_classes, nonlinear=True)
        self.classifier_inv = build_classifier(d, num_classes, nonlinear=True)
        self.classifier_domain = build_classifier(d, num_domains, nonlinear=True)
        self.discriminator = MLP(d, num_domains, int(h["mlp_width"]), int(h["mlp_depth"]), float(h["mlp_dropout"]))
        self.update_count = UpdateCounter()

    def generator_params(self) -> list[torch.nn.Parameter]:
        modules = (self.featurizer, self.featurizer_domain, self.classifier, self.classifier_inv, self.classifier_domain)
        return [p for m in modules for p in m.parameters() if p.requires_grad]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        betas = (float(self.hparams["beta1"]), 0.9)
        groups = [{"params": list(self.discriminator.parameters())}, {"params": self.generator_params()}]
        fused = _flag(self.hparams.get("fused_optimizer", "auto"), self.device.type == "cuda")
        return torch.optim.Adam(groups, lr=float(self.hparams["lr"]), betas=betas, weight_decay=0.0,
                                **({"fused": True} if fused else {}))

    def _generator_terms(self, f_label: Tensor, f_domain: Tensor, f_inv: Tensor, y: Tensor,
                         domains: Tensor) -> dict[str, Tensor]:
        i, j = remix_pairs(y, self.num_classes)
        remixed = self.classifier(f_inv[i] + f_domain[j]).float()
        return {
            "loss_clf_label": F.cross_entropy(self.classifier(f_label).float(), y),
            "loss_clf_inv": F.cross_entropy(self.classifier_inv(f_inv).float(), y),
            "loss_domain": F.cross_entropy(self.classifier_domain(f_domain).float(), domains),
            "loss_remix": F.cross_entropy(remixed, y[i], reduction="sum") / self.num_classes,
            "loss_cnt_label": supcon_lambda_loss(f_label, y, domains),
            "loss_cnt_inv": supcon_lambda_loss(f_inv, y, domains),
        }

    def generator_loss(self, terms: Mapping[str, Tensor], disc_loss: Tensor) -> Tensor:
        h = self.hparams
        return (terms["loss_clf_label"] + terms["loss_clf_inv"]
                + float(h["dclf_lambda"]) * terms["loss_domain"]
                + float(h["rmxd_lambda"]) * terms["loss_remix"]
                + float(h["cnt_lambda"]) * (terms["loss_cnt_label"] + terms["loss_cnt_inv"])
                - float(h["disc_lambda"]) * disc_loss)

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None and self.scaler is not None
        count = self.update_count.increment()
        x = torch.cat([xb for xb, _ in minibatches])
        y = torch.cat([yb for _, yb in minibatches])
        domains = torch.cat([torch.full((len(xb),), i, dtype=torch.long) for i, (xb, _) in enumerate(minibatches)])
        domains = domains.to(self.device, non_blocking=True)
        disc_step = is_discriminator_step(count, int(self.hparams["d_steps_per_g_step"]))
        with self.autocast():
            # On a discriminator step the featurizers do not train: no graph through them.
            with torch.set_grad_enabled(not disc_step):
                f_label = self.featurize(x).final
                f_domain = self.featurizer_domain(x)
                f_inv = f_label - f_domain
            disc_loss = F.cross_entropy(self.discriminator(f_inv).float(), domains)
            with torch.set_grad_enabled(not disc_step):
                terms = self._generator_terms(f_label, f_domain, f_inv, y, domains)
                objective = disc_loss if disc_step else self.generator_loss(terms, disc_loss)
        params = list(self.discriminator.parameters()) if disc_step else self.generator_params()
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(objective).backward(inputs=params)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {"loss": objective.detach().float(), "loss_disc": disc_loss.detach().float(),
               "disc_step": torch.tensor(float(disc_step))}
        out.update({k: v.detach().float() for k, v in terms.items()})
        return out
