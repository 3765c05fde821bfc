"""Command-line entry points: train, sweep, collect_results, list_top_hparams, download."""
