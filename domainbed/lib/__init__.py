"""What two or more rooms of the package use, and DomainBed's import names.

Shared (none imports anything of ours outside lib/, so any room can use them):
    :mod:`.errors` (``UserError``, a message the user can act on: every room),
    :mod:`.registry` (names to classes, duplicates refused: algorithms, datasets, launchers,
    results' selection rules, sweep's commands), :mod:`.discovery` (import a package's modules
    so that they register: algorithms, datasets, launchers), :mod:`.hparam` (one hparam's
    default and search distribution: algorithms, datasets, ``hparams_registry``),
    :mod:`.optim_hparams` (the optimizer and schedule hparams: datasets declare them,
    algorithms build from them),
    :mod:`.seeding` (DomainBed's ``seed_hash``, per-sample seeds, RNG state: datasets,
    training, sweep, algorithms, ``hparams_registry``), :mod:`.environments` (test-env indices
    checked: datasets, training, sweep), :mod:`.resources` (sweep files and notebooks shipped
    with the package: sweep, scripts).
DomainBed's import names (faces for users' scripts; nothing of ours imports them):
    :mod:`.misc`, :mod:`.query`, :mod:`.reporting`.

Code that one room alone uses lives in that room (``training/``, ``results/``, a method's
folder under ``algorithms/``), not here.
"""
