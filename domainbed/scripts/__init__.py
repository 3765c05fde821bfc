"""Command-line entry points, each with ``main(argv)``: train, sweep, collect_results,
list_top_hparams, download, demo, run_notebook, export_model, evaluate, predict, probe_prior
and feature_drift.

Who uses it: users, CI and the tests; nothing in the package imports a script but
DomainBed's ``lib.misc`` face (``print_row``)."""
