"""Reporting above the library: tables' layouts and notebook figures that know the registries.

``domainbed.lib`` holds the generic pieces (records, selection, statistics, table rendering)
and names no dataset or algorithm. This package joins them with what the dataset and
algorithm registries declare: domain names, averaged-model algorithms, compared pairs.
"""
