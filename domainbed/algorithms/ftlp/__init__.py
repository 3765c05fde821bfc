"""FT-LP, Fine-Tuning with Large-scale pre-trained Priors (arXiv 2406.05628): the whole method.

FT-LP keeps the frozen pre-trained featurizer ``f_0`` as a prior for the whole fine-tune and
adds to the base algorithm's loss, at every step, a KL term between the fine-tuned model's
feature distribution and the prior's, per regularised layer ``l``::

    Q_l(z|x) = N(f_0,l(x), diag σ²_Q,l)      P_l(z|x) = N(f_θ,l(x), diag σ²_P,l)
    loss     = L_base + λ · Σ_l mean KL(P_l ‖ Q_l)

The derivation, the posteriors, the prior's BatchNorm mode, the defaults and how they were
chosen: docs/ftlp.md. What is here:

- ``mixin.py``: the :class:`FTLP` mixin, added in front of any base algorithm.
- ``variants.py``: the one rule that registers ``<Name>_FTLP`` for every base declaring
  ``EXPOSES_FEATURES``, and the shuffled-prior control arm ``ERM_FTLP_ShuffledPrior``.
- ``config.py``: the ``ftlp_`` hparams and the validated :class:`FTLPConfig`.
- ``prior.py``: the frozen prior, per-layer variances and the KL module, stage noise.
- ``gaussian.py``: the Gaussian KL and MIRO's ``−log Q`` as plain functions.
- ``diagnostics.py``: which prior channels are dead (the start-up report).
- ``miro.py``: MIRO (arXiv 2203.10789) as one configuration of the prior module.
- ``probe.py``: the prior probe, run before training by ``python -m domainbed.scripts.probe_prior``.

Who uses it: :mod:`domainbed.algorithms` imports this package (registering MIRO and the
control arm) and then runs :func:`register_ftlp_variants`; the ``probe_prior`` script calls
:func:`~domainbed.algorithms.ftlp.probe.probe_prior`.
"""

from domainbed.algorithms.ftlp.config import FTLP_HPARAMS, FTLPConfig
from domainbed.algorithms.ftlp.miro import MIRO
from domainbed.algorithms.ftlp.mixin import FTLP
from domainbed.algorithms.ftlp.prior import PriorKL, frozen_prior
from domainbed.algorithms.ftlp.variants import ERM_FTLP_ShuffledPrior, make_ftlp_variant, register_ftlp_variants

__all__ = ["ERM_FTLP_ShuffledPrior", "FTLP", "FTLPConfig", "FTLP_HPARAMS", "MIRO", "PriorKL", "frozen_prior",
           "make_ftlp_variant", "register_ftlp_variants"]
