"""SVIRO (Dias Da Cruz et al., WACV 2020): synthetic rear-seat occupancy images, one domain
per car model, as DomainBed uses it (grayscale rectangular classification release).

Layout: ``<data_dir>/sviro/<car>/<class>/<image>``; ``python -m domainbed.scripts.download
--dataset SVIRO`` fetches and lays it out.
"""

from __future__ import annotations

from domainbed.datasets.base import register_dataset
from domainbed.datasets.images import _NamedImageDataset


@register_dataset
class SVIRO(_NamedImageDataset):
    """Ten car interiors (DomainBed's environments, in its order)."""

    SUBFOLDER = "sviro"
    ENVIRONMENTS = ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"]
    CHECKPOINT_FREQ = 300
