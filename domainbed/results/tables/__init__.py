"""Result tables: aggregate selected runs into cells and render them (docs/design.md).

- :mod:`.stats`: means with standard errors (accuracy cells: population std / √n, as
  DomainBed) and paired gains (sample std / √n, :mod:`domainbed.results.paired_gains`);
- :mod:`.model`: :class:`SweepLayout`, :class:`Table` and :class:`Row`;
- :mod:`.build`: the tables of one selection rule, :mod:`.reference`: published rows;
- :mod:`.render`: plain text, Markdown or LaTeX;
- :mod:`.metric`: the number a cell reports (accuracy, or the test domain's NLL or ECE).

Nothing here knows a dataset or an algorithm by name: the caller passes the domain names,
the algorithms that report an averaged model and the pairs to compare in the layout.

Who uses it: collect_results and list_top_hparams, the figures in results/, the evidence reports and inference's evaluate report.
"""

from domainbed.results.tables.build import averages_table, dataset_tables, gain_tables, run_domains_table
from domainbed.results.tables.metric import ACC, TABLE_METRICS, TableMetric, get_table_metric, with_test_metric
from domainbed.results.tables.model import Row, SweepLayout, Table, env_names
from domainbed.results.tables.reference import REFERENCE_DATASETS, REFERENCE_RESULTS, reference_rows
from domainbed.results.tables.render import (
    FORMATS,
    format_grid,
    format_number,
    format_stat,
    latex_escape,
    render,
    table_cells,
)
from domainbed.results.tables.stats import (
    ARM_COLUMNS,
    Comparison,
    Stat,
    arm_accuracy,
    dataset_average_stats,
    paired_gain_stats,
    per_domain_stats,
    run_domains,
    run_domains_stats,
)

__all__ = [
    "ACC",
    "ARM_COLUMNS",
    "TABLE_METRICS",
    "TableMetric",
    "get_table_metric",
    "with_test_metric",
    "FORMATS",
    "REFERENCE_DATASETS",
    "REFERENCE_RESULTS",
    "Comparison",
    "Row",
    "Stat",
    "SweepLayout",
    "Table",
    "arm_accuracy",
    "averages_table",
    "dataset_average_stats",
    "dataset_tables",
    "env_names",
    "format_grid",
    "format_number",
    "format_stat",
    "gain_tables",
    "latex_escape",
    "paired_gain_stats",
    "per_domain_stats",
    "reference_rows",
    "render",
    "run_domains",
    "run_domains_stats",
    "run_domains_table",
    "table_cells",
]
