"""The optimizer and learning-rate-schedule hparams every algorithm has on every dataset.

Declared here, below both users: the datasets give these hparams to every algorithm
(``MultipleDomainDataset.HPARAMS``), and :mod:`domainbed.algorithms.optim` builds the
optimizer and the schedule from them. Datasets do not import algorithms, so the
declaration cannot live with the optimizers.
"""

from __future__ import annotations

from domainbed.lib.hparam import HParam

OPTIMIZERS = ("adam", "adamw", "sgd", "lars")
LR_SCHEDULES = ("constant", "cosine", "warmup_cosine")
DOMAINBED_LINEAR_STEPS = 500  # DomainBed HEAD's default (and only value in its random search)

# No random search: DomainBed draws lars and linear_steps as constants, and ours stay fixed
# so that adding them shifts no draw and changes no protocol.
OPTIM_HPARAMS: dict[str, HParam] = {
    "optimizer": HParam("adam", help="adam (DomainBed), adamw, sgd (momentum 0.9) or lars", choices=OPTIMIZERS),
    "lr_schedule": HParam("constant", help="constant (DomainBed), cosine, or warmup_cosine (linear warm-up over "
                                           "warmup_steps, then cosine)", choices=LR_SCHEDULES),
    "warmup_steps": HParam(500, help="linear warm-up steps of lr_schedule=warmup_cosine"),
    "lars": HParam(False, help="DomainBed HEAD's switch for the LARS optimizer: true is optimizer=lars",
                   choices=(False, True)),
    "linear_steps": HParam(DOMAINBED_LINEAR_STEPS, help="DomainBed HEAD: first steps train only the classifier, in "
                                                        "algorithms with that phase (ERMPlusPlus); others refuse "
                                                        "another value"),
}
