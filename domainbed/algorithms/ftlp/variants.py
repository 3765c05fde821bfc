"""The algorithms FT-LP (arXiv 2406.05628) adds to the registry: the one rule that makes
``<Name>_FTLP`` for every base that exposes its features, and the shuffled-prior control arm.

Each registration declares what the reports pair: a variant with its base
(``variant_of``), the control arm with ERM_FTLP (``control_of``). docs/ftlp.md, "FT-LP on
any base" and "The shuffled-prior control", says why.
"""

from __future__ import annotations

from domainbed.algorithms.erm import ERM
from domainbed.algorithms.ftlp.config import FTLPConfig
from domainbed.algorithms.ftlp.mixin import FTLP
from domainbed.algorithms.registry import algorithm_names, get_algorithm_class, register_algorithm


@register_algorithm(control_of="ERM_FTLP")
class ERM_FTLP_ShuffledPrior(FTLP, ERM):
    """Control arm of the evidence: ERM_FTLP whose KL sees the prior's features of a shuffled
    batch (hparam ``ftlp_control = shuffled`` fixed), so it reports under its own name."""

    HPARAMS_FIXED = ("ftlp_control",)

    def ftlp_config(self) -> FTLPConfig:
        return FTLPConfig.from_hparams({**self.hparams, "ftlp_control": "shuffled"})


def make_ftlp_variant(base: type) -> type:
    """``class <Base>_FTLP(FTLP, Base)``: the FT-LP prior added to ``base``."""
    name = f"{base.__name__}_FTLP"
    attrs = {"__doc__": f"{base.__name__} with the FT-LP prior.", "__module__": __name__, "__qualname__": name}
    return type(name, (FTLP, base), attrs)


def register_ftlp_variants() -> list[str]:
    """The one FT-LP rule: register ``<Name>_FTLP`` (declared ``variant_of=<Name>``) for every
    registered algorithm that declares ``EXPOSES_FEATURES`` and is not itself an FT-LP
    configuration (MIRO is one). Idempotent; returns the names it added. Each variant is also
    an attribute of this module, so it pickles by reference."""
    added = []
    for name in algorithm_names():
        base = get_algorithm_class(name)
        if issubclass(base, FTLP) or not getattr(base, "EXPOSES_FEATURES", False) or f"{name}_FTLP" in algorithm_names():
            continue
        variant = register_algorithm(make_ftlp_variant(base), variant_of=name)
        globals()[variant.__name__] = variant
        added.append(variant.__name__)
    return added
