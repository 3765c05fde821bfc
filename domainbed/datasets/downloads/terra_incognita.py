"""TerraIncognita (Beery et al., ECCV 2018): DomainBed's restructuring of the Caltech Camera
Traps images (https://lila.science/datasets/caltech-camera-traps) into
``location_<id>/<category>/<image>`` for camera locations 38, 43, 46 and 100 and ten
categories. An image annotated with several of the ten categories is copied into each.
"""

from __future__ import annotations

import json
import shutil
from collections import defaultdict
from pathlib import Path

from domainbed.datasets.downloads.base import (
    Downloader,
    DownloadError,
    Source,
    extract,
    only_child,
    register_downloader,
)

LILA = "https://lilablobssc.blob.core.windows.net/caltechcameratraps"
LOCATIONS = ("38", "46", "100", "43")
CATEGORIES = ("bird", "bobcat", "cat", "coyote", "dog", "empty", "opossum", "rabbit", "raccoon", "squirrel")
IMAGES_FOLDER = "eccv_18_all_images_sm"


def restructure(images: Path, annotations: dict, out: Path) -> tuple[int, int]:
    """Copy the images of :data:`LOCATIONS` and :data:`CATEGORIES` from ``images`` (named by
    each image's ``file_name``) into ``out/location_<id>/<category>/``.

    ``annotations`` is the COCO-style camera-traps file (``images`` with ``id``,
    ``file_name``, ``location``; ``annotations`` with ``image_id``, ``category_id``;
    ``categories`` with ``id``, ``name``). Returns ``(copied, missing)``: copies made, and
    annotated images absent from ``images``.
    """
    names = {c["id"]: c["name"] for c in annotations["categories"]}
    labels: dict = defaultdict(list)
    for a in annotations["annotations"]:
        name = names[a["category_id"]]
        if name in CATEGORIES and name not in labels[a["image_id"]]:
            labels[a["image_id"]].append(name)
    root = images.resolve()
    copied = missing = 0
    for image in annotations["images"]:
        location = str(image["location"])  # an int in some releases, a string in others
        if location not in LOCATIONS or not labels.get(image["id"]):
            continue
        src = (images / image["file_name"]).resolve()
        if not src.is_relative_to(root):
            raise DownloadError(f"annotation file_name {image['file_name']!r} points outside {images}")
        if not src.is_file():
            missing += 1
            continue
        for category in labels[image["id"]]:
            dest = out / f"location_{location}" / category / src.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest)
            copied += 1
    return copied, missing


@register_downloader
class TerraIncognitaDownload(Downloader):
    DATASETS = ("TerraIncognita",)
    FOLDER = "terra_incognita"

    def sources(self) -> list[Source]:
        return [
            Source(f"{LILA}/eccv_18_all_images_sm.tar.gz", "eccv_18_all_images_sm.tar.gz"),
            Source(f"{LILA}/labels/caltech_camera_traps.json.zip", "caltech_camera_traps.json.zip"),
        ]

    def layout(self, files: list[Path], staging: Path) -> Path:
        images_archive, labels_archive = files
        unpacked = staging / "unpacked"
        extract(images_archive, unpacked / "images")
        images = unpacked / "images" / IMAGES_FOLDER
        if not images.is_dir():
            images = only_child(unpacked / "images") or unpacked / "images"
        extract(labels_archive, unpacked / "labels")
        found = sorted((unpacked / "labels").rglob("*.json"))
        if len(found) != 1:
            raise DownloadError(f"{labels_archive.name} should hold one .json annotation file; found {[p.name for p in found]}")
        with open(found[0]) as f:
            annotations = json.load(f)
        out = staging / "terra_incognita"
        copied, missing = restructure(images, annotations, out)
        print(f"TerraIncognita: {copied} images laid out; {missing} annotated images were not in the archive")
        absent = [f"location_{loc}" for loc in LOCATIONS if not (out / f"location_{loc}").is_dir()]
        if absent:
            raise DownloadError(
                f"TerraIncognita: no images for {', '.join(absent)} ({missing} annotated images were missing from "
                f"{images_archive.name}); is it the right archive?"
            )
        return out
