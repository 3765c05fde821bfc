"""The ``Algorithm`` base class (docs/design.md).

A new algorithm writes one method, :meth:`Algorithm.compute_loss`. The base class owns
the optimizer step: zero_grad, autocast (bf16 on CUDA by default), backward (with a grad
scaler for fp16), the step, and the hooks the training loop calls. Logged values stay on
the device as detached tensors; the training loop reads them only at checkpoints, so a
step never waits for the host.
"""

from __future__ import annotations

import contextlib
from typing import Any, ClassVar, Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from domainbed.algorithms.optim import LRSchedule, build_optimizer, check_supported
from domainbed.lib.errors import UserError
from domainbed.lib.hparam import HParam, PerDataset, PerFamily
from domainbed.lib.optim_hparams import OPTIMIZERS
from domainbed.networks import Features, build_classifier, build_featurizer

Minibatches = list[tuple[torch.Tensor, torch.Tensor]]
LossOutput = tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, Any]]


def _flag(value: Any, auto: bool) -> bool:
    if value == "auto":
        return auto
    if isinstance(value, str):
        return value.lower() in ("1", "true", "yes", "on")
    return bool(value)


class Algorithm(nn.Module):
    """Featurizer + classifier trained on a list of per-domain minibatches."""

    HPARAMS: ClassVar[dict[str, HParam | PerFamily | PerDataset]] = {}
    # Traits that other code reads instead of guessing from class names. What the reports
    # read (variants, control arms, averaged models) is declared at registration instead
    # (domainbed.algorithms.registry).
    # compute_loss returns extras["x"] and extras["features"]: FT-LP composes with it and
    # the package registers a <Name>_FTLP variant automatically.
    EXPOSES_FEATURES: ClassVar[bool] = False
    # Optimizers (hparam optimizer / lars) this algorithm can train with; others are refused at set-up.
    SUPPORTED_OPTIMIZERS: ClassVar[tuple[str, ...]] = OPTIMIZERS
    # True when the first linear_steps steps train only the classifier (DomainBed's ERMPlusPlus).
    USES_LINEAR_STEPS: ClassVar[bool] = False

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, num_domains: int, hparams: Mapping[str, Any]):
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.num_classes = num_classes
        self.num_domains = num_domains
        self.hparams = dict(hparams)
        self.featurizer = build_featurizer(self.input_shape, self.hparams)
        self.classifier = build_classifier(
            self.featurizer.n_outputs, num_classes, bool(self.hparams.get("nonlinear_classifier", False))
        )
        # Wrappers (FT-LP) set this when they need stem/stage features from the same pass.
        self.want_intermediates = False
        self.optimizer: torch.optim.Optimizer | None = None
        self.lr_schedule = LRSchedule()  # constant until setup() reads the hparams
        self._total_steps: int | None = None
        self.scaler: torch.amp.GradScaler | None = None
        self._amp_dtype: torch.dtype | None = None
        self._channels_last = False

    # ------------------------------------------------------------------ hparams
    @classmethod
    def hparam_specs(cls) -> dict[str, HParam | PerFamily | PerDataset]:
        """HPARAMS of this class and all its bases, the most derived winning."""
        specs: dict[str, HParam | PerFamily | PerDataset] = {}
        for klass in reversed(cls.__mro__):
            specs.update(vars(klass).get("HPARAMS", {}))
            # A configuration may hide hparams it fixes (MIRO fixes most ftlp_ ones).
            for name in vars(klass).get("HPARAMS_FIXED", ()):
                specs.pop(name, None)
        return specs

    # ------------------------------------------------------------------ set-up
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def setup(self, device: torch.device | str | None = None) -> "Algorithm":
        """Move to ``device``, pick precision and memory format, build the optimizer."""
        if device is not None:
            self.to(device)
        dev = self.device
        precision = str(self.hparams.get("precision", "auto"))
        if precision == "auto":
            precision = "bf16" if dev.type == "cuda" else "fp32"
        dtypes = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": None}
        if precision not in dtypes:
            raise UserError(f"hparam precision must be one of auto, bf16, fp16, fp32; got {precision!r}")
        self._amp_dtype = dtypes[precision]
        is_conv = self.hparams.get("backbone", "") != "mnist_cnn"
        # channels_last pays off for timm conv nets on CUDA and on CPU alike (oneDNN: about 3x
        # faster EfficientNet-Lite0 training steps on 2 cores); not for the small GroupNorm CNN.
        self._channels_last = _flag(self.hparams.get("channels_last", "auto"), is_conv)
        if self._channels_last:
            self.to(memory_format=torch.channels_last)
        if self.hparams.get("compile", False):
            # In place, so state_dict keys do not change. It compiles the trunk's forward (the
            # pooled-features path); timm's forward_intermediates path stays eager.
            self.featurizer.trunk.compile()
        check_supported(type(self).__name__, self.hparams, self.SUPPORTED_OPTIMIZERS, self.USES_LINEAR_STEPS)
        self.optimizer = self.configure_optimizer()
        self.lr_schedule = LRSchedule.from_hparams(self.hparams, self._total_steps)
        self.scaler = torch.amp.GradScaler(dev.type, enabled=self._amp_dtype == torch.float16)
        return self

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups; wrappers append theirs (e.g. FT-LP encoders at an lr multiple)."""
        return [{"params": [p for p in self.featurizer.parameters() if p.requires_grad] + list(self.classifier.parameters())}]

    def configure_optimizer(self) -> torch.optim.Optimizer:
        """The optimizer of hparams ``optimizer`` / ``lars`` over :meth:`param_groups`
        (:mod:`domainbed.algorithms.optim`; by default DomainBed's Adam)."""
        fused = _flag(self.hparams.get("fused_optimizer", "auto"), self.device.type == "cuda")
        return build_optimizer(self.param_groups(), self.hparams, lr=self.hparams["lr"], fused=fused)

    def configure_schedule(self, total_steps: int) -> None:
        """Set the run's length, which cosine schedules need (the training loop calls this)."""
        self._total_steps = int(total_steps)
        self.lr_schedule = LRSchedule.from_hparams(self.hparams, self._total_steps)

    def apply_lr_schedule(self, step: int) -> None:
        """Set the learning rates of training step ``step``; the training loop calls this
        before each :meth:`update`. A no-op under the default constant schedule."""
        if self.optimizer is None:
            self.setup()
        assert self.optimizer is not None
        self.lr_schedule.apply(self.optimizer, step)

    def autocast(self) -> contextlib.AbstractContextManager:
        if self._amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._amp_dtype)

    def prepare_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        if self._channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    # ------------------------------------------------------------------ model
    def featurize(self, x: torch.Tensor) -> Features:
        """Features of ``x`` (with stem/stage maps when a wrapper asked for them)."""
        return self.featurizer.forward_features(x, intermediates=self.want_intermediates)

    def compute_loss(self, minibatches: Minibatches) -> LossOutput:
        """Return ``(loss, logs, extras)``. ``logs`` holds detached tensors; ``extras``
        carries what a wrapper may reuse (``x``, ``y``, ``features``, ``logits``)."""
        raise NotImplementedError

    def begin_update(self, minibatches: Minibatches) -> Minibatches:
        """The start of every optimizer step: set up on first use, move the batches to the
        device (in the input layout :meth:`setup` chose) and switch to training mode."""
        if self.optimizer is None:
            self.setup()
        assert self.optimizer is not None and self.scaler is not None
        minibatches = [(self.prepare_input(x), y.to(self.device, non_blocking=True)) for x, y in minibatches]
        self.train()
        return minibatches

    def update(self, minibatches: Minibatches, unlabeled: list[torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """One optimizer step; returns detached 0-dim tensors (``loss`` and the loss terms)."""
        minibatches = self.begin_update(minibatches)
        assert self.optimizer is not None and self.scaler is not None
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            loss, logs, _ = self.compute_loss(minibatches)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        out = {"loss": loss.detach().float()}
        out.update({k: v.detach().float() if torch.is_tensor(v) else torch.tensor(float(v)) for k, v in logs.items()})
        return out

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.featurize(x).final)

    def predictive_state(self) -> dict[str, torch.Tensor]:
        """State of the stand-alone predictor (:meth:`build_predictor`): ``featurizer.*`` and
        ``classifier.*``. Wrappers that add a layer in the prediction path fold it in here,
        so that what SWAD averages and what is saved is a plain featurizer + classifier."""
        state = {f"featurizer.{k}": v for k, v in self.featurizer.state_dict().items()}
        state.update({f"classifier.{k}": v for k, v in self.classifier.state_dict().items()})
        return state

    def build_predictor(self) -> "Predictor":
        """A fresh featurizer + classifier holding :meth:`predictive_state`."""
        import copy

        predictor = Predictor({"featurizer": copy.deepcopy(self.featurizer), "classifier": copy.deepcopy(self.classifier)})
        predictor.load_state_dict(self.predictive_state())
        return predictor

    def eval_network(self) -> nn.Module:
        """The module evaluated and saved (SWAD returns its averaged model)."""
        return self

    # ------------------------------------------------------------------ hooks
    def on_step_end(self, step: int) -> None:
        """Called after every optimizer step."""

    def on_evaluation(self, step: int, results: Mapping[str, float]) -> None:
        """Called after each evaluation with the record (accuracies, ``val_loss``)."""

    @property
    def should_stop(self) -> bool:
        """True when the algorithm asks training to stop early (SWAD's valley ended)."""
        return False

    def on_train_end(self, batches: Iterator[torch.Tensor] | None = None) -> None:
        """Called once after the last step (SWAD finalises its average here)."""


class Predictor(nn.Module):
    """A stand-alone predictive network: modules applied in order, the first a featurizer."""

    def __init__(self, modules: Mapping[str, nn.Module]):
        super().__init__()
        for name, module in modules.items():
            self.add_module(name, module)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        for module in self.children():
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predict(x)


def cross_entropy(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    # fp32 loss even under autocast: the log-softmax of bf16 logits loses precision.
    return F.cross_entropy(logits.float(), y)
