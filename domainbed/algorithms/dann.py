"""DANN (Ganin et al., arXiv 1505.07818) and CDANN (conditional DANN: Li et al., ECCV 2018,
"Deep Domain Generalization via Conditional Invariant Adversarial Networks").

A discriminator (an MLP) predicts each sample's training domain from its features; the
featurizer learns to classify while fooling it. Updates alternate, as in DomainBed: of
every ``d_steps_per_g_step + 1`` updates, ``d_steps_per_g_step`` train the discriminator
on ``L_d = CE(domain) + grad_penalty · ‖∇_input CE‖²`` and one trains featurizer and
classifier on ``CE(class) - lambda · L_d``. CDANN adds a learned class embedding to the
discriminator's input and weighs its loss so every class counts equally (weights
``1 / (n_y · num_classes)``; DomainBed divides by the largest label in the batch + 1 instead
of ``num_classes``, the same whenever the batch holds the last class).

One Adam optimizer holds both parameter groups (discriminator: ``lr_d``,
``weight_decay_d``; generator: ``lr_g``, ``weight_decay_g``; betas ``(beta1, 0.9)``). Adam's
state is per parameter and each step gives gradients only to its own group, so this is
the same as two optimizers, and ``optimizer.state_dict()`` saves both for a resume.
"""

from __future__ import annotations

from typing import Any, ClassVar, Mapping

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from domainbed.algorithms.base import Algorithm, Minibatches, _flag, cross_entropy
from domainbed.algorithms.counters import UpdateCounter
from domainbed.algorithms.optim import build_optimizer
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, PerFamily, choice, log_uniform, pow2_int


class MLP(nn.Module):
    """DomainBed's MLP: ``depth`` linear layers of ``width`` units, dropout and ReLU between."""

    def __init__(self, n_inputs: int, n_outputs: int, width: int, depth: int, dropout: float):
        super().__init__()
        if depth < 2:
            raise UserError(f"mlp_depth must be at least 2 (input and output layers); got {depth}")
        sizes = [n_inputs] + [width] * (depth - 1)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(width, n_outputs)

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.hidden:
            x = F.relu(self.dropout(layer(x)))
        return self.output(x)


def class_balanced_weights(y: Tensor, num_classes: int) -> Tensor:
    """``1 / (n_{y_i} · num_classes)`` per sample: every class present gets total weight
    ``1 / num_classes`` (CDANN's discriminator loss is the weighted sum)."""
    counts = torch.bincount(y, minlength=num_classes)
    return 1.0 / (counts[y] * num_classes).float()


def input_gradient_penalty(disc_out: Tensor, labels: Tensor, disc_input: Tensor) -> Tensor:
    """Mean over samples of ``‖∂ CE_sum / ∂ input_i‖²``, differentiable (``create_graph``).

    ``CE_sum`` is the summed cross-entropy of ``disc_out`` (computed from ``disc_input``)."""
    ce_sum = F.cross_entropy(disc_out.float(), labels, reduction="sum")
    grad = torch.autograd.grad(ce_sum, disc_input, create_graph=True)[0]
    return grad.float().pow(2).sum(1).mean()


def is_discriminator_step(update: int, d_steps_per_g_step: int) -> bool:
    """Whether update number ``update`` (1-based) trains the discriminator."""
    return update % (1 + d_steps_per_g_step) < d_steps_per_g_step


_LR = PerFamily(
    small=HParam(1e-3, log_uniform(-4.5, -2.5)),
    image=HParam(5e-5, log_uniform(-5, -3.5)),
)


@register_algorithm
class DANN(Algorithm):
    """Domain-adversarial training; see the module docstring."""

    CONDITIONAL: ClassVar[bool] = False
    CLASS_BALANCE: ClassVar[bool] = False
    # Both groups use Adam's betas (beta1, 0.9), part of the method: Adam or AdamW only.
    SUPPORTED_OPTIMIZERS: ClassVar[tuple[str, ...]] = ("adam", "adamw")
    HPARAMS = {
        "lambda": HParam(1.0, log_uniform(-2, 2), "weight of the adversarial term in the generator's loss"),
        "weight_decay_d": HParam(0.0, log_uniform(-6, -2), "discriminator weight decay"),
        "d_steps_per_g_step": HParam(1, pow2_int(0, 3), "discriminator updates per generator update"),
        "grad_penalty": HParam(0.0, log_uniform(-2, 1), "weight of the discriminator's input-gradient penalty"),
        "beta1": HParam(0.5, choice(0.0, 0.5), "Adam beta1 of both groups (beta2 is 0.9)"),
        "mlp_width": HParam(256, pow2_int(6, 10), "discriminator width"),
        "mlp_depth": HParam(3, choice(3, 4, 5), "discriminator depth (linear layers)"),
        "mlp_dropout": HParam(0.0, choice(0.0, 0.1, 0.5), "discriminator dropout"),
        "lr_g": _LR,
        "lr_d": _LR,
        "weight_decay_g": PerFamily(small=HParam(0.0), image=HParam(0.0, log_uniform(-6, -2))),
    }

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__(input_shape, num_classes, num_domains, hparams)
        h, d = self.hparams, self.featurizer.n_outputs
        self.discriminator = MLP(d, num_domains, int(h["mlp_width"]), int(h["mlp_depth"]), float(h["mlp_dropout"]))
        self.class_embeddings = nn.Embedding(num_classes, d) if self.CONDITIONAL else None
        self.update_count = UpdateCounter()

    def discriminator_params(self) -> list[nn.Parameter]:
        params = list(self.discriminator.parameters())
        return params + (list(self.class_embeddings.parameters()) if self.class_embeddings is not None else [])

    def generator_params(self) -> list[nn.Parameter]:
        return [p for p in self.featurizer.parameters() if p.requires_grad] + list(self.classifier.parameters())

    def configure_optimizer(self) -> torch.optim.Optimizer:
        h = self.hparams
        betas = (float(h["beta1"]), 0.9)
        groups = [
            {"params": self.discriminator_params(), "lr": h["lr_d"], "weight_decay": h["weight_decay_d"], "betas": betas},
            {"params": self.generator_params(), "lr": h["lr_g"], "weight_decay": h["weight_decay_g"], "betas": betas},
        ]
        fused = _flag(h.get("fused_optimizer", "auto"), self.device.type == "cuda")
        return build_optimizer(groups, h, fused=fused)

    def update(self, minibatches: Minibatches, unlabeled: list[Tensor] | None = None) -> dict[str, Tensor]:
        if self.optimizer is None:
            self.setup()
        assert self.optimizer is not None and self.scaler is not None
        count = self.update_count.increment()
        h = self.hparams
        x = torch.cat([self.prepare_input(xb) for xb, _ in minibatches])
        y = torch.cat([yb for _, yb in minibatches]).to(self.device, non_blocking=True)
        domains = torch.cat([torch.full((len(xb),), i, dtype=torch.long) for i, (xb, _) in enumerate(minibatches)])
        domains = domains.to(self.device, non_blocking=True)
        self.train()
        disc_step = is_discriminator_step(count, int(h["d_steps_per_g_step"]))
        with self.autocast():
            z = self.featurize(x).final
            disc_input = z + self.class_embeddings(y) if self.class_embeddings is not None else z
            disc_out = self.discriminator(disc_input)
            if self.CLASS_BALANCE:
                per_sample = F.cross_entropy(disc_out.float(), domains, reduction="none")
                disc_loss = (class_balanced_weights(y, self.num_classes) * per_sample).sum()
            else:
                disc_loss = F.cross_entropy(disc_out.float(), domains)
            penalty = disc_loss.new_zeros(())
            if float(h["grad_penalty"]) > 0:  # skip the double backward when its weight is 0
                penalty = input_gradient_penalty(disc_out, domains, disc_input)
                disc_loss = disc_loss + float(h["grad_penalty"]) * penalty
            if disc_step:
                objective = disc_loss
                with torch.no_grad():
                    ce = cross_entropy(self.classifier(z), y)
            else:
                ce = cross_entropy(self.classifier(z), y)
                objective = ce - float(h["lambda"]) * disc_loss
        self.optimizer.zero_grad(set_to_none=True)
        params = self.discriminator_params() if disc_step else self.generator_params()
        self.scaler.scale(objective).backward(inputs=params)  # the other group gets no gradient
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return {
            "loss": objective.detach().float(),
            "loss_ce": ce.detach().float(),
            "loss_disc": disc_loss.detach().float(),
            "penalty_grad": penalty.detach().float(),
            "disc_step": torch.tensor(float(disc_step)),
        }


@register_algorithm
class CDANN(DANN):
    """Conditional DANN: class embedding added to the discriminator input, class-balanced loss."""

    CONDITIONAL = True
    CLASS_BALANCE = True
