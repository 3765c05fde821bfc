"""Optimizers and learning-rate schedules from hparams: the one place both are built.

Defaults reproduce DomainBed's protocol exactly: Adam (L2 weight decay) at a constant
learning rate. The other choices:

* ``optimizer``: ``adam`` (default), ``adamw`` (decoupled weight decay, Loshchilov & Hutter,
  arXiv 1711.05101), ``sgd`` (heavy-ball momentum :data:`SGD_MOMENTUM` = 0.9, no Nesterov,
  L2 weight decay), ``lars`` (:class:`LARS`, You et al., arXiv 1708.03888).
* ``lars``: DomainBed HEAD's boolean for the same thing; ``true`` means ``optimizer=lars``
  (set one or the other). DomainBed applies it to ERMPlusPlus only; here every algorithm
  that builds its optimizer through :func:`build_optimizer` honours it.
* ``lr_schedule`` (:class:`LRSchedule`): ``constant`` (default), ``cosine``, or
  ``warmup_cosine`` (a linear warm-up over ``warmup_steps`` steps, then cosine).
* ``linear_steps``: DomainBed HEAD's linear-probing phase, the first ``linear_steps`` steps
  training only the classifier. Only algorithms that declare such a phase
  (``Algorithm.USES_LINEAR_STEPS``, DomainBed's ERMPlusPlus) read it; the others refuse a
  value other than DomainBed's default rather than ignore it silently.

The schedule is a pure function of the training step, so a resumed run sets exactly the
learning rates of an uninterrupted one; :meth:`LRSchedule.state_dict` goes in the checkpoint
to check that the resumed run uses the same schedule.

The hparams themselves are declared in :mod:`domainbed.lib.optim_hparams`, where the
datasets (which give every algorithm these hparams) can import them without importing this.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch

from domainbed.lib.errors import UserError
from domainbed.lib.optim_hparams import DOMAINBED_LINEAR_STEPS, LR_SCHEDULES, OPTIMIZERS

SGD_MOMENTUM = 0.9
LARS_MOMENTUM = 0.9  # DomainBed HEAD's LARS momentum
LARS_TRUST_COEFFICIENT = 0.001  # η of arXiv 1708.03888, DomainBed HEAD's value


def optimizer_name(hparams: Mapping[str, Any]) -> str:
    """The optimizer the hparams ask for, with DomainBed's ``lars`` switch folded in."""
    name = str(hparams.get("optimizer", "adam"))
    if name not in OPTIMIZERS:
        raise UserError(f"hparam optimizer must be one of {', '.join(OPTIMIZERS)}; got {name!r}")
    if bool(hparams.get("lars", False)):
        if name not in ("adam", "lars"):
            raise UserError(f"hparams lars=true and optimizer={name} contradict each other: lars=true (DomainBed's "
                            "spelling) means optimizer=lars; set only one of them")
        return "lars"
    return name


def build_optimizer(params: Iterable[Any], hparams: Mapping[str, Any], *, lr: float | None = None,
                    fused: bool = False, **extra: Any) -> torch.optim.Optimizer:
    """The optimizer of ``hparams`` over ``params`` (tensors or param groups).

    ``lr`` defaults to ``hparams["lr"]``, weight decay is ``hparams["weight_decay"]``;
    groups may override both. ``fused`` applies to Adam and AdamW; ``extra`` goes to the
    constructor (Adam's ``betas`` for DANN). With default hparams this is exactly
    ``torch.optim.Adam(params, lr=..., weight_decay=...)``.
    """
    name = optimizer_name(hparams)
    kwargs: dict[str, Any] = {"lr": float(hparams["lr"]) if lr is None else lr,
                              "weight_decay": hparams.get("weight_decay", 0.0), **extra}
    if name in ("adam", "adamw"):
        if fused:
            kwargs["fused"] = True
        return (torch.optim.Adam if name == "adam" else torch.optim.AdamW)(params, **kwargs)
    if "betas" in kwargs:
        raise UserError(f"optimizer {name} has no betas (an Adam setting); use optimizer adam or adamw here")
    if name == "sgd":
        return torch.optim.SGD(params, momentum=SGD_MOMENTUM, **kwargs)
    return LARS(params, **kwargs)


def check_supported(algorithm: str, hparams: Mapping[str, Any], optimizers: Sequence[str],
                    uses_linear_steps: bool) -> None:
    """Refuse, at start-up, an optimizer the algorithm cannot use, or a ``linear_steps`` it
    would ignore."""
    name = optimizer_name(hparams)
    if name not in optimizers:
        raise UserError(f"{algorithm} supports optimizer {', '.join(optimizers)}; got {name}. Remove the optimizer/lars "
                        "hparam or pick a supported one")
    steps = hparams.get("linear_steps", DOMAINBED_LINEAR_STEPS)
    if not uses_linear_steps and steps != DOMAINBED_LINEAR_STEPS:
        raise UserError(f"hparam linear_steps={steps} has no effect on {algorithm}: only algorithms with a "
                        "linear-probing phase (DomainBed's ERMPlusPlus) read it, as in DomainBed. Remove it, or "
                        f"leave it at DomainBed's default {DOMAINBED_LINEAR_STEPS}")


def in_linear_phase(step: int, hparams: Mapping[str, Any]) -> bool:
    """Whether training step ``step`` (from 0) is in DomainBed's linear-probing phase. DomainBed
    HEAD's ERMPlusPlus trains only the classifier while its update counter (0 at the first
    step, incremented after each) is at most ``linear_steps``: steps 0 .. linear_steps."""
    return step <= int(hparams.get("linear_steps", DOMAINBED_LINEAR_STEPS))


@dataclass
class LRSchedule:
    """The learning-rate factor of each training step ``t`` (0-based) of a ``T``-step run.

    * ``constant``: 1.
    * ``cosine``: ``½ (1 + cos(π t / T))`` (Loshchilov & Hutter, SGDR, arXiv 1608.03983,
      one cycle without restart): 1 at the first step, near 0 at the last.
    * ``warmup_cosine`` with ``W`` warm-up steps: ``(t + 1) / W`` for ``t < W`` (linear, so
      that no step runs at lr 0; Goyal et al., arXiv 1706.02677), then
      ``½ (1 + cos(π (t − W) / (T − W)))``.

    Each param group's lr is its ``initial_lr`` (its lr when first scheduled, as torch's
    schedulers keep it) times the factor; ``constant`` never touches the groups.
    """

    kind: str = "constant"
    total_steps: int | None = None
    warmup_steps: int = 0
    step: int = -1  # the last step applied

    @classmethod
    def from_hparams(cls, hparams: Mapping[str, Any], total_steps: int | None) -> "LRSchedule":
        kind = str(hparams.get("lr_schedule", "constant"))
        if kind not in LR_SCHEDULES:
            raise UserError(f"hparam lr_schedule must be one of {', '.join(LR_SCHEDULES)}; got {kind!r}")
        warmup = int(hparams.get("warmup_steps", 0)) if kind == "warmup_cosine" else 0
        if kind == "warmup_cosine":
            if warmup < 1:
                raise UserError(f"lr_schedule warmup_cosine needs warmup_steps >= 1; got {warmup}")
            if total_steps is not None and warmup >= total_steps:
                raise UserError(f"warmup_steps ({warmup}) must be smaller than the run's steps ({total_steps}); "
                                "lower warmup_steps or raise --steps")
        return cls(kind, total_steps, warmup)

    def factor(self, step: int) -> float:
        """The lr multiplier of training step ``step``."""
        if self.kind == "constant":
            return 1.0
        if self.total_steps is None:
            raise UserError(f"lr_schedule {self.kind} needs the run's total steps: call "
                            "algorithm.configure_schedule(steps) before training (the train script does)")
        if self.kind == "warmup_cosine" and step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        w = self.warmup_steps
        progress = min(max(step - w, 0) / (self.total_steps - w), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    def current_factor(self) -> float:
        """The factor of the last step applied (of the first step before any)."""
        return 1.0 if self.kind == "constant" else self.factor(max(self.step, 0))

    def apply(self, optimizer: torch.optim.Optimizer, step: int | None = None) -> None:
        """Set every group's lr for ``step`` (default: the last step applied, e.g. after the
        optimizer was rebuilt)."""
        if step is not None:
            self.step = step
        if self.kind == "constant" or self.step < 0:
            return
        factor = self.factor(self.step)
        for group in optimizer.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * factor

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "total_steps": self.total_steps, "warmup_steps": self.warmup_steps,
                "step": self.step}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        mine = (self.kind, self.total_steps, self.warmup_steps)
        theirs = (state["kind"], state["total_steps"], state["warmup_steps"])
        if mine != theirs:
            raise UserError(f"the checkpoint was trained with lr schedule {theirs} (kind, total steps, warm-up), "
                            f"this run asks for {mine}; resume with the same hparams and --steps")
        self.step = int(state["step"])


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling, Algorithm 1 of You, Gitman & Ginsburg (arXiv 1708.03888).

    For each weight tensor ``w`` with two or more dimensions, with gradient ``g``, global rate
    ``γ`` (``lr``), weight decay ``β``, trust coefficient ``η`` and momentum ``m``:

        λ = η ‖w‖ / (‖g‖ + β ‖w‖)        (local learning rate; 1 when a norm is 0)
        v ← m v + γ λ (g + β w)
        w ← w − v

    Biases and normalisation scales (tensors of at most one dimension) take ``v ← m v + γ g``
    without scaling or decay, as DomainBed HEAD's LARS does. The paper's ``γ`` is an SGD-scale
    rate (0.1 to tens), far above Adam's defaults: with ``η`` = 0.001 each weight tensor moves
    by about ``γ η ‖w‖`` per step, so raise ``lr`` with ``optimizer=lars``.
    """

    def __init__(self, params: Iterable[Any], lr: float, weight_decay: float = 0.0, momentum: float = LARS_MOMENTUM,
                 trust_coefficient: float = LARS_TRUST_COEFFICIENT):
        if lr < 0 or weight_decay < 0 or not 0 <= momentum < 1 or trust_coefficient <= 0:
            raise UserError(f"LARS needs lr >= 0, weight_decay >= 0, 0 <= momentum < 1 and trust_coefficient > 0; got "
                            f"{lr}, {weight_decay}, {momentum}, {trust_coefficient}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay, "momentum": momentum,
                                  "trust_coefficient": trust_coefficient})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, beta, m, eta = group["lr"], group["weight_decay"], group["momentum"], group["trust_coefficient"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                if p.dim() > 1:
                    w_norm = torch.linalg.vector_norm(p)
                    denom = torch.linalg.vector_norm(g) + beta * w_norm
                    # On the device: no host sync per tensor.
                    local = torch.where((w_norm > 0) & (denom > 0), eta * w_norm / denom, torch.ones_like(w_norm))
                    d = g.add(p, alpha=beta).mul_(local * lr)
                else:
                    d = g.mul(lr)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                v = state["momentum_buffer"]
                v.mul_(m).add_(d)
                p.sub_(v)
        return loss
