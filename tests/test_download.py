"""The download script, offline: every downloader fetches small archives built here from a
local HTTP server on 127.0.0.1 (``--mirror`` / $DOMAINBED_DOWNLOAD_MIRROR), unpacks and lays
them out, and the dataset's own loader then reads the result. A dry run touches nothing.
"""

from __future__ import annotations

import functools
import gzip
import http.server
import json
import os
import struct
import threading
from pathlib import Path

import numpy as np
import pytest

from domainbed.datasets import build_dataset
from domainbed.datasets.downloads import MIRROR_ENV, DownloadError, downloadable
from domainbed.datasets.downloads.base import extract
from domainbed.datasets.downloads.domainnet import remove_listed
from domainbed.datasets.mnist import load_mnist_raw
from domainbed.scripts import download

import fixtures_datasets as fx

SMALL = {"image_size": 16}


class _Handler(http.server.SimpleHTTPRequestHandler):
    html_names: set[str] = set()
    requests: list[str] = []

    def guess_type(self, path):  # pretend some files are web pages (a Google Drive quota page)
        if os.path.basename(path) in self.html_names:
            return "text/html"
        return super().guess_type(path)

    def do_GET(self):
        self.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """(folder served, base URL, handler class): files put in the folder are served."""
    served = tmp_path / "served"
    served.mkdir()
    handler = type("Handler", (_Handler,), {"html_names": set(), "requests": []})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, directory=str(served)))
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    yield served, f"http://127.0.0.1:{httpd.server_address[1]}/", handler
    httpd.shutdown()
    httpd.server_close()


def fetch(data_dir: Path, url: str, *datasets: str) -> None:
    download.main(["--data_dir", str(data_dir), "--mirror", url, "--dataset", *datasets])


def assert_clean(data_dir: Path, *folders: str) -> None:
    """Only the dataset folders remain: no staging folder, archive or partial file."""
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(folders)


# ----------------------------------------------------------------------------- single archives

PACS_DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]
SVIRO_CARS = ["aclass", "escape", "hilux", "i3", "lexus", "tesla", "tiguan", "tucson", "x5", "zoe"]


def test_pacs_zip_is_renamed_and_read_and_a_second_run_fetches_nothing(tmp_path, server, capsys):
    served, url, handler = server
    fx.make_zip(served / "PACS.zip", fx.image_folder_files(PACS_DOMAINS, ["dog", "horse"]), prefix="kfold/")
    data = tmp_path / "data"
    fetch(data, url, "PACS")
    assert handler.requests == ["/PACS.zip"]
    assert_clean(data, "PACS")
    ds = build_dataset("PACS", str(data), [0], SMALL)
    assert ds.environments == ["A", "C", "P", "S"] and ds.num_classes == 2 and len(ds[3]) == 2
    fetch(data, url, "PACS")
    assert handler.requests == ["/PACS.zip"] and "already exists" in capsys.readouterr().out


@pytest.mark.parametrize(
    "dataset,filename,pack,prefix,files,folder",
    [
        ("VLCS", "VLCS.tar.gz", fx.make_tar, "VLCS/",
         fx.image_folder_files(["Caltech101", "LabelMe", "SUN09", "VOC2007"], ["bird", "car"]), "VLCS"),
        ("OfficeHome", "office_home.zip", fx.make_zip, "OfficeHomeDataset_10072016/",
         {**fx.image_folder_files(["Art", "Clipart", "Product", "Real World"], ["Bike", "Pen"]), "ImageInfo.csv": b"x"},
         "office_home"),
        ("SVIRO", "sviro_grayscale_rectangle_classification.zip", fx.make_zip, "SVIRO_DOMAINBED/",
         fx.image_folder_files(SVIRO_CARS, ["empty", "person"]), "sviro"),
        ("SpawriousM2M_easy", "spawrious224.tar.gz", fx.make_tar, "spawrious224/", fx.spawrious_files(1), "spawrious224"),
    ],
)
def test_single_archive_datasets(tmp_path, server, dataset, filename, pack, prefix, files, folder):
    served, url, _ = server
    pack(served / filename, files, prefix=prefix)
    data = tmp_path / "data"
    fetch(data, url, dataset)
    assert_clean(data, folder)
    written = sorted(str(p.relative_to(data / folder)) for p in (data / folder).rglob("*") if p.is_file())
    assert written == sorted(files)
    ds = build_dataset(dataset, str(data), [0], SMALL)
    x, y = ds[1][0]
    assert x.shape == (3, 16, 16)


def test_archive_without_the_expected_folders_is_an_error(tmp_path, server):
    served, url, _ = server
    fx.make_zip(served / "PACS.zip", fx.image_folder_files(["photo"], ["dog"]), prefix="kfold/")
    with pytest.raises(SystemExit, match="expected the folders art_painting, cartoon, sketch"):
        fetch(tmp_path / "data", url, "PACS")
    assert not (tmp_path / "data" / "PACS").exists()
    fx.make_zip(served / "PACS.zip", fx.image_folder_files(PACS_DOMAINS, ["dog"]), prefix="other/")
    with pytest.raises(SystemExit, match="no top folder kfold/"):
        fetch(tmp_path / "data2", url, "PACS")


# ----------------------------------------------------------------------------- DomainNet

DOMAINNET = ["clipart", "infograph", "painting", "quickdraw", "real", "sketch"]


def test_domainnet_six_zips_and_domainbed_duplicate_removal(tmp_path, server):
    served, url, handler = server
    for d in DOMAINNET:
        files = {f"{d}/{c}/{d}_{c}_{k}.jpg": fx.png_bytes() for c in ("apple", "zebra") for k in range(2)}
        fx.make_zip(served / f"{d}.zip", files)
    (served / "domain_net_duplicates.txt").write_text(
        "clipart/apple/clipart_apple_0.jpg\nreal/zebra/real_zebra_1.jpg\n\nsketch/apple/not_there.jpg\n"
    )
    data = tmp_path / "data"
    fetch(data, url, "DomainNet")
    assert sorted(handler.requests) == sorted([f"/{d}.zip" for d in DOMAINNET] + ["/domain_net_duplicates.txt"])
    assert_clean(data, "domain_net")
    root = data / "domain_net"
    assert not (root / "clipart/apple/clipart_apple_0.jpg").exists() and not (root / "real/zebra/real_zebra_1.jpg").exists()
    assert len(list(root.rglob("*.jpg"))) == 6 * 4 - 2
    ds = build_dataset("DomainNet", str(data), [0], SMALL)
    assert ds.environments == ["clip", "info", "paint", "quick", "real", "sketch"]
    assert [len(d) for d in ds.datasets] == [3, 4, 4, 4, 3, 4]


def test_duplicate_list_cannot_delete_outside_the_dataset(tmp_path):
    (tmp_path / "root" / "a").mkdir(parents=True)
    (tmp_path / "keep.txt").write_text("precious")
    listing = tmp_path / "list.txt"
    listing.write_text("a/missing.jpg\n../keep.txt\n")
    with pytest.raises(DownloadError, match="outside"):
        remove_listed(tmp_path / "root", listing)
    assert (tmp_path / "keep.txt").exists()


# ----------------------------------------------------------------------------- TerraIncognita

def test_terra_incognita_restructuring(tmp_path, server):
    served, url, _ = server
    names = ["a.jpg", "b.jpg", "c.jpg", "d.jpg", "e.jpg", "f.jpg", "g.jpg"]
    fx.make_tar(served / "eccv_18_all_images_sm.tar.gz", {n: fx.png_bytes(8, 30 * i) for i, n in enumerate(names)},
                prefix="eccv_18_all_images_sm/")
    annotations = {
        "categories": [{"id": 1, "name": "bobcat"}, {"id": 2, "name": "empty"}, {"id": 3, "name": "deer"},
                       {"id": 4, "name": "coyote"}],
        "images": [
            {"id": "i1", "file_name": "a.jpg", "location": 38},  # an int location, as in some releases
            {"id": "i2", "file_name": "b.jpg", "location": "46"},
            {"id": "i3", "file_name": "c.jpg", "location": "100"},
            {"id": "i4", "file_name": "d.jpg", "location": "43"},
            {"id": "i5", "file_name": "e.jpg", "location": "99"},  # not one of the four locations
            {"id": "i6", "file_name": "f.jpg", "location": "38"},  # only a category left out (deer)
            {"id": "i7", "file_name": "missing.jpg", "location": "38"},  # not in the image archive
            {"id": "i8", "file_name": "g.jpg", "location": "43"},
        ],
        "annotations": [
            {"image_id": "i1", "category_id": 1}, {"image_id": "i1", "category_id": 4},  # two categories: two copies
            {"image_id": "i1", "category_id": 1},  # a repeated box of the same category: still one copy
            {"image_id": "i2", "category_id": 2}, {"image_id": "i3", "category_id": 4}, {"image_id": "i4", "category_id": 1},
            {"image_id": "i5", "category_id": 1}, {"image_id": "i6", "category_id": 3}, {"image_id": "i7", "category_id": 2},
            {"image_id": "i8", "category_id": 2},
        ],
    }
    fx.make_zip(served / "caltech_camera_traps.json.zip", {"caltech_images_20210113.json": json.dumps(annotations).encode()})
    data = tmp_path / "data"
    fetch(data, url, "TerraIncognita")
    assert_clean(data, "terra_incognita")
    root = data / "terra_incognita"
    written = sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    assert written == [
        "location_100/coyote/c.jpg",
        "location_38/bobcat/a.jpg",
        "location_38/coyote/a.jpg",
        "location_43/bobcat/d.jpg",
        "location_43/empty/g.jpg",
        "location_46/empty/b.jpg",
    ]
    assert (root / "location_38/coyote/a.jpg").read_bytes() == fx.png_bytes(8, 0)
    ds = build_dataset("TerraIncognita", str(data), [0], SMALL)
    assert ds.environments == ["L100", "L38", "L43", "L46"] and ds.num_classes == 3  # bobcat, coyote, empty


# ----------------------------------------------------------------------------- WILDS

def test_wilds_archives_with_and_without_a_top_folder(tmp_path, server):
    served, url, _ = server
    # Camelyon as the package's archive holds it (files at the top, no release file here);
    # FMoW wrapped in its folder, as a hand-made copy might be.
    fx.make_tar(served / "camelyon17_v1.0.tar.gz", fx.camelyon_files(release_file=False))
    fx.make_tar(served / "fmow_v1.1.tar.gz", fx.fmow_files(), prefix="fmow_v1.1/")
    data = tmp_path / "data"
    fetch(data, url, "WILDSCamelyon", "WILDSFMoW")
    assert_clean(data, "camelyon17_v1.0", "fmow_v1.1")
    assert (data / "camelyon17_v1.0" / "RELEASE_v1.0.txt").exists()  # what the wilds package checks for
    assert (data / "fmow_v1.1" / "RELEASE_v1.1.txt").read_bytes() == b"v1.1"  # the archive's own, kept
    camelyon = build_dataset("WILDSCamelyon", str(data), [0], SMALL)
    assert [len(d) for d in camelyon.datasets] == [2, 1, 2, 1, 2]
    fmow = build_dataset("WILDSFMoW", str(data), [0], SMALL)
    assert sum(len(d) for d in fmow.datasets) == sum(1 for row in fx.FMOW_ROWS if row[0] != "seq")
    fx.make_tar(served / "camelyon17_v1.0.tar.gz", {"README": b"wrong"})
    with pytest.raises(SystemExit, match="lacks metadata.csv"):
        fetch(tmp_path / "other", url, "WILDSCamelyon")


# ----------------------------------------------------------------------------- MNIST

def idx_gz(path: Path, array: np.ndarray, magic: int) -> None:
    header = struct.pack(">i", magic) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def test_mnist_raw_files_for_rotated_and_colored_mnist(tmp_path, server, monkeypatch):
    served, url, handler = server
    rng = np.random.RandomState(0)
    train_x, test_x = rng.randint(0, 255, (6, 28, 28)), rng.randint(0, 255, (4, 28, 28))
    train_y, test_y = np.arange(6), np.array([9, 8, 7, 6])
    idx_gz(served / "train-images-idx3-ubyte.gz", train_x, 2051)
    idx_gz(served / "train-labels-idx1-ubyte.gz", train_y, 2049)
    idx_gz(served / "t10k-images-idx3-ubyte.gz", test_x, 2051)
    idx_gz(served / "t10k-labels-idx1-ubyte.gz", test_y, 2049)
    monkeypatch.setenv(MIRROR_ENV, url)  # the environment variable instead of --mirror
    data = tmp_path / "data"
    download.main(["--data_dir", str(data), "--dataset", "RotatedMNIST", "ColoredMNIST"])
    assert len(handler.requests) == 4  # MNIST once for both datasets
    assert sorted(p.name for p in (data / "MNIST" / "raw").iterdir()) == [
        "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte", "train-images-idx3-ubyte", "train-labels-idx1-ubyte"]
    images, labels = load_mnist_raw(str(data))
    assert images.tolist() == np.concatenate([train_x, test_x]).tolist()
    assert labels.tolist() == [0, 1, 2, 3, 4, 5, 9, 8, 7, 6]
    ds = build_dataset("ColoredMNIST", str(data), [0], {})
    assert ds.input_shape == (2, 28, 28) and sum(len(d) for d in ds.datasets) == 10
    (served / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03junk"))
    with pytest.raises(SystemExit, match="does not hold an MNIST IDX file"):
        download.main(["--data_dir", str(tmp_path / "other"), "--dataset", "RotatedMNIST"])


# ----------------------------------------------------------------------------- failures and local files

def test_failed_fetches_say_what_to_do_and_leave_no_partial_dataset(tmp_path, server):
    served, url, handler = server
    data = tmp_path / "data"
    with pytest.raises(SystemExit, match=r"could not fetch .*PACS.zip: HTTP Error 404.*--archive_dir"):
        fetch(data, url, "PACS")
    (served / "PACS.zip").write_text("<html>quota exceeded</html>")
    handler.html_names.add("PACS.zip")
    with pytest.raises(SystemExit, match="returned a web page instead of PACS.zip"):
        fetch(data, url, "PACS")
    handler.html_names.clear()
    with pytest.raises(SystemExit, match="neither a zip nor a tar"):
        fetch(data, url, "PACS")
    assert not (data / "PACS").exists()
    assert not list(data.rglob("*.part"))


def test_archive_dir_uses_files_fetched_by_hand(tmp_path):
    by_hand = tmp_path / "Downloads"
    fx.make_zip(by_hand / "PACS.zip", fx.image_folder_files(PACS_DOMAINS, ["dog"]), prefix="kfold/")
    data = tmp_path / "data"
    # No server and a mirror that does not exist: the local file must be used.
    download.main(["--data_dir", str(data), "--dataset", "PACS", "--archive_dir", str(by_hand),
                   "--mirror", "http://127.0.0.1:9/"])
    assert (data / "PACS" / "sketch" / "dog" / "sketch_dog.png").is_file()
    assert (by_hand / "PACS.zip").is_file()  # a file given by hand is never deleted


def test_unpacking_refuses_members_outside_the_target(tmp_path):
    fx.make_zip(tmp_path / "evil.zip", {"ok/a.txt": b"a", "../evil.txt": b"x"})
    fx.make_tar(tmp_path / "evil.tar.gz", {"ok/a.txt": b"a", "../evil.txt": b"x"})
    for name in ("evil.zip", "evil.tar.gz"):
        with pytest.raises(DownloadError, match="outside|unsafe"):
            extract(tmp_path / name, tmp_path / "out")
    assert not (tmp_path / "evil.txt").exists()


# ----------------------------------------------------------------------------- dry run

def test_dry_run_lists_steps_and_writes_nothing(tmp_path, capsys):
    download.main(["--data_dir", str(tmp_path), "--dataset", "DomainNet", "RotatedMNIST", "PACS", "--dry_run"])
    out = capsys.readouterr().out
    assert out.count("would fetch:") == 7 + 4 + 1  # six zips + the duplicate list, four MNIST files, one zip
    assert "groundtruth/clipart.zip (as clipart.zip)" in out and "domain_net_duplicates.txt" in out
    assert "(as PACS.zip) -> " + str(tmp_path / "PACS") in out
    assert str(tmp_path / "MNIST" / "raw") in out and "office" not in out
    assert list(tmp_path.iterdir()) == []


def test_dry_run_all_covers_every_downloadable_dataset(tmp_path, capsys):
    download.main(["--data_dir", str(tmp_path / "d"), "--dataset", "all", "RotatedMNISTSubset", "--dry_run",
                   "--mirror", "http://mirror.example/files"])
    out = capsys.readouterr().out
    assert set(downloadable()) == {
        "PACS", "VLCS", "OfficeHome", "TerraIncognita", "DomainNet", "SVIRO", "WILDSCamelyon", "WILDSFMoW",
        "RotatedMNIST", "ColoredMNIST", "SpawriousO2O_easy", "SpawriousO2O_medium", "SpawriousO2O_hard",
        "SpawriousM2M_easy", "SpawriousM2M_medium", "SpawriousM2M_hard"}
    # 1 each for PACS, VLCS, OfficeHome, SVIRO, Spawrious (shared), Camelyon, FMoW; 2 Terra; 7 DomainNet; 4 MNIST.
    assert out.count("would fetch: http://mirror.example/files/") == 7 + 2 + 7 + 4
    assert "nothing to fetch: RotatedMNISTSubset" in out
    assert not (tmp_path / "d").exists()


def test_unknown_dataset_is_an_error(tmp_path):
    with pytest.raises(SystemExit, match="unknown dataset 'PAC'.*downloadable: .*PACS"):
        download.main(["--data_dir", str(tmp_path), "--dataset", "PAC", "--dry_run"])
