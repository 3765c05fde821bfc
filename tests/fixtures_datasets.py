"""Tiny dataset trees in their real on-disk layouts, as ``{relative path: bytes}``.

The same trees are written to folders (loader tests) or packed into zip / tar archives
that a local HTTP server hands to the downloaders (download tests).
"""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import pandas as pd
from PIL import Image

Files = dict[str, bytes]


def png_bytes(size: int = 8, value: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (size, size), (value, value, value)).save(buf, format="PNG")
    return buf.getvalue()


def write_files(root: Path, files: Files) -> Path:
    for rel, data in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def make_zip(path: Path, files: Files, prefix: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(prefix + rel, data)
    return path


def make_tar(path: Path, files: Files, prefix: str = "", mode: str = "w:gz") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, mode) as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def image_folder_files(domains: list[str], classes: list[str]) -> Files:
    """``<domain>/<class>/<domain>_<class>.png`` for every pair."""
    data = png_bytes()
    return {f"{d}/{c}/{d}_{c}.png": data for d in domains for c in classes}


# ----------------------------------------------------------------------------- Spawrious

SPAWRIOUS_LOCATIONS = ["beach", "desert", "dirt", "jungle", "mountain", "snow"]
SPAWRIOUS_BREEDS = ["bulldog", "corgi", "dachshund", "labrador"]


def spawrious_files(per_folder: int) -> Files:
    """``{0,1}/<location>/<breed>/img00.png...`` (relative to ``spawrious224/``), plus a
    non-image file in every folder."""
    data = png_bytes()
    files: Files = {}
    for folder in ("0", "1"):
        for loc in SPAWRIOUS_LOCATIONS:
            for breed in SPAWRIOUS_BREEDS:
                for k in range(per_folder):
                    files[f"{folder}/{loc}/{breed}/img{k:02d}.png"] = data
                files[f"{folder}/{loc}/{breed}/notes.txt"] = b"not an image"
    return files


# ----------------------------------------------------------------------------- WILDS

CAMELYON_ROWS = [  # patient, node, x, y, tumor, center, slide, split
    ("004", 4, 3328, 21792, 1, 0, 0, 0),
    ("010", 4, 3200, 22560, 0, 0, 1, 0),
    ("021", 2, 1000, 2000, 1, 1, 10, 0),
    ("040", 1, 50, 60, 0, 2, 20, 0),
    ("041", 3, 70, 80, 1, 2, 21, 1),
    ("060", 0, 90, 100, 0, 3, 30, 0),
    ("080", 2, 110, 120, 1, 4, 40, 0),
    ("081", 2, 130, 140, 0, 4, 41, 0),
]


def camelyon_path(patient: str, node: int, x: int, y: int) -> str:
    return f"patches/patient_{patient}_node_{node}/patch_patient_{patient}_node_{node}_x_{x}_y_{y}.png"


def camelyon_files(release_file: bool = True) -> Files:
    """The contents of ``camelyon17_v1.0/``: metadata.csv (with its unnamed index column)
    and one 96 px patch per row."""
    df = pd.DataFrame(CAMELYON_ROWS, columns=["patient", "node", "x_coord", "y_coord", "tumor", "center", "slide", "split"])
    files: Files = {"metadata.csv": df.to_csv().encode()}
    if release_file:
        files["RELEASE_v1.0.txt"] = b"v1.0"
    for i, (p, n, x, y, *_rest) in enumerate(CAMELYON_ROWS):
        files[camelyon_path(p, n, x, y)] = png_bytes(96, 10 * i)
    return files


FMOW_COUNTRIES = [("FRA", "Europe"), ("USA", "Americas"), ("CHN", "Asia"), ("NGA", "Africa"), ("AUS", "Oceania")]
FMOW_ROWS = [  # split, category, country_code (ZZZ is unmapped: region Other)
    ("seq", "zoo", "NGA"),
    ("train", "airport", "USA"),
    ("val", "port", "FRA"),
    ("test", "zoo", "ZZZ"),
    ("train", "dam", "NGA"),
    ("seq", "barn", "USA"),
    ("train", "multi-unit_residential", "CHN"),
    ("test", "park", "AUS"),
    ("train", "tower", "USA"),
]
# Region numbers by first appearance over all rows (the sequestered first row included).
FMOW_REGION = {"NGA": 0, "USA": 1, "FRA": 2, "ZZZ": 3, "CHN": 4, "AUS": 5}


def fmow_files(release_file: bool = True) -> Files:
    """The contents of ``fmow_v1.1/``: rgb_metadata.csv, country_code_mapping.csv and
    ``images/rgb_img_<row>.png`` for every row not sequestered."""
    rows = [
        {"split": s, "img_filename": f"x{i}.jpg", "img_path": f"p/x{i}.jpg", "spatial_reference": "", "epsg": 4326,
         "category": c, "visible": True, "img_width": 8, "img_height": 8, "country_code": cc, "cloud_cover": 0,
         "timestamp": f"201{i % 8}-0{1 + i % 9}-01T10:00:00Z", "lat": 1.0, "lon": 2.0}
        for i, (s, c, cc) in enumerate(FMOW_ROWS)
    ]
    countries = [{"name": n, "alpha-2": n[:2], "alpha-3": n, "region": r} for n, r in FMOW_COUNTRIES]
    files: Files = {
        "rgb_metadata.csv": pd.DataFrame(rows).to_csv(index=False).encode(),
        "country_code_mapping.csv": pd.DataFrame(countries).to_csv(index=False).encode(),
    }
    if release_file:
        files["RELEASE_v1.1.txt"] = b"v1.1"
    for i, (split, *_rest) in enumerate(FMOW_ROWS):
        if split != "seq":
            files[f"images/rgb_img_{i}.png"] = png_bytes(24, 20 * i)
    return files
