"""WILDS Camelyon17 and FMoW (Koh et al., arXiv 2012.07421) as DomainBed uses them: one
environment per value of a metadata field (hospital, region), every split pooled.

The files are read in the `wilds` package's on-disk format directly, so the package is not
needed to train (``pip install 'domainbed[wilds]'`` installs it for its own tools):

* ``<data_dir>/camelyon17_v1.0/metadata.csv``: one row per patch (first column an index;
  ``patient``, ``node``, ``x_coord``, ``y_coord``, ``tumor``, ``center``...), images at
  ``patches/patient_<patient>_node_<node>/patch_patient_<patient>_node_<node>_x_<x>_y_<y>.png``.
  Label ``tumor``; environment ``center`` (hospital 0-4).
* ``<data_dir>/fmow_v1.1/rgb_metadata.csv`` (``split``, ``category``, ``country_code``...)
  and ``country_code_mapping.csv`` (``alpha-3``, ``region``); image of row ``i`` at
  ``images/rgb_img_<i>.png``. Rows of split ``seq`` (sequestered) are left out. Label: the
  index of ``category`` in the 62 sorted fMoW categories; environment: the region of the
  country (``Other`` when unmapped), numbered in order of first appearance in the table, as
  the `wilds` package numbers them.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar, Mapping, Sequence

import pandas as pd

from domainbed.datasets.base import DatasetError, MultipleDomainDataset, register_dataset
from domainbed.datasets.transforms import eval_transform, train_transform

FMOW_CATEGORIES = (
    "airport", "airport_hangar", "airport_terminal", "amusement_park", "aquaculture",
    "archaeological_site", "barn", "border_checkpoint", "burial_site", "car_dealership",
    "construction_site", "crop_field", "dam", "debris_or_rubble", "educational_institution",
    "electric_substation", "factory_or_powerplant", "fire_station", "flooded_road", "fountain",
    "gas_station", "golf_course", "ground_transportation_station", "helipad", "hospital",
    "impoverished_settlement", "interchange", "lake_or_pond", "lighthouse", "military_facility",
    "multi-unit_residential", "nuclear_powerplant", "office_building", "oil_or_gas_facility", "park",
    "parking_lot_or_garage", "place_of_worship", "police_station", "port", "prison",
    "race_track", "railway_bridge", "recreational_facility", "road_bridge", "runway",
    "shipyard", "shopping_mall", "single-unit_residential", "smokestack", "solar_farm",
    "space_facility", "stadium", "storage_tank", "surface_mine", "swimming_pool",
    "toll_booth", "tower", "tunnel_opening", "waste_disposal", "water_treatment_facility",
    "wind_farm", "zoo",
)


class _WILDSFormat(MultipleDomainDataset):
    """Images listed in a WILDS metadata table, one environment per value of a field."""

    CHECKPOINT_FREQ = 100  # DomainBed keeps the base class's values for WILDS
    N_STEPS = 5001
    N_WORKERS = 4
    HPARAM_FAMILY = "image"
    FOLDER: ClassVar[str]
    METADATA: ClassVar[str]
    CLASSES: ClassVar[Sequence[str]]

    def __init__(self, root: str | None, test_envs: Sequence[int], hparams: Mapping[str, Any]):
        data_dir = os.path.expanduser(os.fspath(root or "."))
        self.root = os.path.join(data_dir, self.FOLDER)
        table = os.path.join(self.root, self.METADATA)
        if not os.path.isfile(table):
            raise DatasetError(
                f"{type(self).__name__}: {table} not found (the WILDS layout is {self.FOLDER}/{self.METADATA} "
                f"plus the images). Download it with: python -m domainbed.scripts.download --data_dir {data_dir} "
                f"--dataset {type(self).__name__}"
            )
        paths, labels, domains = self.read(self.root)
        values = sorted(set(domains))
        if len(values) != len(self.ENVIRONMENTS):
            raise DatasetError(
                f"{type(self).__name__}: {table} has {len(values)} distinct environments {values}; "
                f"expected {len(self.ENVIRONMENTS)} ({', '.join(self.ENVIRONMENTS)})"
            )
        size = int(hparams.get("image_size", 224))
        self.input_shape = (3, size, size)
        self.num_classes = len(self.CLASSES)
        augmented = train_transform(size) if hparams.get("data_augmentation", True) else eval_transform(size)
        plain = eval_transform(size)
        from domainbed.datasets._folder_domain import FileListDomain  # torchvision: only when building

        self.datasets = []
        for i, value in enumerate(values):
            rows = [j for j, d in enumerate(domains) if d == value]
            self.datasets.append(
                FileListDomain(
                    os.path.join(self.root, self.ENVIRONMENTS[i]),
                    [(paths[j], labels[j]) for j in rows],
                    self.CLASSES,
                    transform=plain if i in test_envs else augmented,
                )
            )

    def read(self, folder: str) -> tuple[list[str], list[int], list[int]]:
        """Image paths, labels and environment values of every row kept."""
        raise NotImplementedError

    def _columns(self, df: pd.DataFrame, needed: Sequence[str], table: str) -> None:
        missing = [c for c in needed if c not in df.columns]
        if missing:
            raise DatasetError(f"{type(self).__name__}: {table} lacks the column(s) {', '.join(missing)}")


@register_dataset
class WILDSCamelyon(_WILDSFormat):
    """Camelyon17-WILDS: 96 px tissue patches, tumour or not, from five hospitals."""

    ENVIRONMENTS = ["hospital_0", "hospital_1", "hospital_2", "hospital_3", "hospital_4"]
    FOLDER = "camelyon17_v1.0"
    METADATA = "metadata.csv"
    CLASSES = ("normal", "tumor")

    def read(self, folder: str) -> tuple[list[str], list[int], list[int]]:
        # ``patient`` is a zero-padded string in the file names ("004"): keep it as text.
        df = pd.read_csv(os.path.join(folder, self.METADATA), index_col=0, dtype={"patient": str})
        self._columns(df, ["patient", "node", "x_coord", "y_coord", "tumor", "center"], self.METADATA)
        paths = [
            os.path.join(folder, "patches", f"patient_{p}_node_{n}", f"patch_patient_{p}_node_{n}_x_{x}_y_{y}.png")
            for p, n, x, y in zip(df["patient"], df["node"], df["x_coord"], df["y_coord"])
        ]
        return paths, df["tumor"].astype(int).tolist(), df["center"].astype(int).tolist()


@register_dataset
class WILDSFMoW(_WILDSFormat):
    """FMoW-WILDS: 224 px satellite images of 62 land-use categories from six regions."""

    ENVIRONMENTS = ["region_0", "region_1", "region_2", "region_3", "region_4", "region_5"]
    FOLDER = "fmow_v1.1"
    METADATA = "rgb_metadata.csv"
    COUNTRIES = "country_code_mapping.csv"
    CLASSES = FMOW_CATEGORIES

    def read(self, folder: str) -> tuple[list[str], list[int], list[int]]:
        df = pd.read_csv(os.path.join(folder, self.METADATA))
        self._columns(df, ["split", "category", "country_code"], self.METADATA)
        countries_file = os.path.join(folder, self.COUNTRIES)
        if not os.path.isfile(countries_file):
            raise DatasetError(f"{type(self).__name__}: {countries_file} not found; download the dataset again")
        countries = pd.read_csv(countries_file)
        self._columns(countries, ["alpha-3", "region"], self.COUNTRIES)
        to_region = dict(zip(countries["alpha-3"], countries["region"]))
        regions = [to_region.get(code, "Other") for code in df["country_code"]]
        # Region numbers follow the first appearance over every row, sequestered ones included.
        number = {name: i for i, name in enumerate(dict.fromkeys(regions))}
        index = {name: i for i, name in enumerate(FMOW_CATEGORIES)}
        unknown = sorted(set(df["category"]) - set(index))
        if unknown:
            raise DatasetError(f"{type(self).__name__}: unknown categories {unknown[:5]} in {self.METADATA}")
        categories = df["category"].tolist()
        kept = [i for i, split in enumerate(df["split"].tolist()) if split != "seq"]
        paths = [os.path.join(folder, "images", f"rgb_img_{i}.png") for i in kept]
        labels = [index[categories[i]] for i in kept]
        return paths, labels, [number[regions[i]] for i in kept]
