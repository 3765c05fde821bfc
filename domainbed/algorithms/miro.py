"""MIRO (Cha et al., arXiv 2203.10789) as a configuration of the FT-LP prior module.

MIRO's regulariser, ``λ Σ_l mean[½((f_l − f_0,l)²/σ²_l + log σ²_l)]`` over the stem and
stage features with an identity mean encoder and a learned per-channel variance
(``softplus(b) + 1e-5``, initialised to 0.1, at 10× lr), is FT-LP's point-posterior
reduction ``−log Q(μ)`` with a learned prior variance. So MIRO is the published method
closest to FT-LP, and shares its code, including the rule that the prior normalises a batch
as the trained network does. Only λ is searched (its dataset defaults are MIRO's).
"""

from __future__ import annotations

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.ftlp import FTLP
from domainbed.algorithms.ftlp_config import FTLP_HPARAMS, FTLPConfig
from domainbed.algorithms.registry import register_algorithm
from domainbed.lib.hparam import HParam, log_uniform


@register_algorithm
class MIRO(FTLP, ERM):
    """Mutual-information regularisation with the oracle, via FT-LP's prior module."""

    HPARAMS = {"ftlp_lambda": HParam(0.1, log_uniform(-3, 0), "MIRO's λ (0.01 PACS/VLCS, 0.1 OfficeHome/TerraInc/DomainNet)")}

    HPARAMS_FIXED = tuple(name for name in FTLP_HPARAMS if name != "ftlp_lambda")
    # The reports pair ERM_FTLP's runs with MIRO's: the gain of FT-LP over the closest published method.
    BASELINE_OF = "ERM_FTLP"

    def ftlp_config(self) -> FTLPConfig:
        return FTLPConfig(lam=float(self.hparams["ftlp_lambda"]), posterior="point", layers="stages",
                          prior_var="learned", var_init=0.1, encoder_lr_mult=10.0)
