"""Results: the whole path from a sweep's ``results.jsonl`` files to a table or a figure.

- :mod:`.records`: every job's records as one pandas frame, counting what had to be skipped;
- :mod:`.selection`: the model-selection rules (which hparams seed and checkpoint stand for
  an algorithm), registered by name;
- :mod:`.standard_error`: the two standard errors (accuracies: DomainBed's population std;
  paired gains: the sample std);
- :mod:`.paired_gains`: the paired gain of one algorithm over another (the one function
  that computes it), with intervals and the trials a target SE needs;
- :mod:`.tables`: table cells, layouts and rendering (text, Markdown, LaTeX);
- :mod:`.layout`: a sweep's layout with the dataset registry's domain names;
- :mod:`.plotting`, :mod:`.plotting_gains`: notebook and report figures;
- :mod:`.query`, :mod:`.record_dicts`: DomainBed's list-of-dicts API (``Q``,
  ``load_records``, ``get_grouped_records``), re-exported under DomainBed's names by
  ``domainbed.lib.query`` and ``domainbed.lib.reporting``.

Used by the scripts (``collect_results``, ``list_top_hparams``, ``export_model``), the
notebooks, the evidence reports under ``docs/evidence/`` and the inference package (which
checkpoint a rule picks). Nothing here knows an algorithm: what the algorithms declared
(which report an averaged model, which pairs to compare) is passed in by the caller,
usually from :mod:`domainbed.model_selection`. Importing this package loads nothing
heavy; the figures load matplotlib when imported.
"""
