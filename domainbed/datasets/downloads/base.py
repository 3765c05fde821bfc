"""Fetch archives over HTTP and unpack them: the machinery every downloader shares.

Only ``python -m domainbed.scripts.download`` runs this; training never downloads. A
:class:`Downloader` names its :class:`Source` files (published address + file name) and
builds the dataset folder from them in a staging folder, which is moved into place at the
end, so a dataset folder is either complete or absent. Two ways to avoid the published
addresses: a *mirror* (``--mirror URL`` or ``$DOMAINBED_DOWNLOAD_MIRROR``) serves every file
as ``URL/<file name>``; an *archive folder* (``--archive_dir``) holds files fetched by hand.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar, Sequence, TypeVar

from tqdm import tqdm

from domainbed.lib.registry import Registry

MIRROR_ENV = "DOMAINBED_DOWNLOAD_MIRROR"
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or its unpacking failed; the message says what to do."""


@dataclass(frozen=True)
class Source:
    """A published file: where it lives and the name it is saved (and mirrored) under."""

    url: str
    filename: str


def google_drive(file_id: str) -> str:
    """Direct-download address of a public Google Drive file (``confirm=t`` skips the
    "cannot scan for viruses" page that large files get)."""
    return f"https://drive.usercontent.google.com/download?id={file_id}&export=download&confirm=t"


@dataclass
class Fetcher:
    """Gets a :class:`Source` from the archive folder, the mirror, or its published address."""

    mirror: str | None = None
    archive_dir: Path | None = None
    log: Callable[[str], None] = field(default=print)

    def address(self, source: Source) -> str:
        return f"{self.mirror.rstrip('/')}/{source.filename}" if self.mirror else source.url

    def fetch(self, source: Source, workdir: Path) -> Path:
        if self.archive_dir is not None:
            local = Path(self.archive_dir) / source.filename
            if local.is_file():
                self.log(f"using {local}")
                return local
        dest = workdir / source.filename
        if dest.is_file():  # fetched by an earlier, interrupted run (partial files end in .part)
            self.log(f"reusing {dest}")
            return dest
        url = self.address(source)
        part = dest.with_name(dest.name + ".part")
        workdir.mkdir(parents=True, exist_ok=True)
        self.log(f"fetching {url}")
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "domainbed-download"})  # noqa: S310
            # http(s) addresses from the downloader registry or a user-given mirror (file:// mirrors are allowed on purpose).
            with urllib.request.urlopen(request, timeout=120) as response, open(part, "wb") as out:  # noqa: S310
                kind = response.headers.get("Content-Type", "")
                if kind.startswith("text/html") and not source.filename.endswith((".html", ".htm")):
                    raise DownloadError(
                        f"{url} returned a web page instead of {source.filename} (a quota, sign-in or moved-file "
                        f"page). {self.by_hand(source)}"
                    )
                size = int(response.headers.get("Content-Length") or 0) or None
                # A progress bar on a terminal only (disable=None): some of these files are tens of GB.
                with tqdm(total=size, unit="B", unit_scale=True, desc=source.filename, disable=None) as bar:
                    while chunk := response.read(CHUNK):
                        out.write(chunk)
                        bar.update(len(chunk))
        except (urllib.error.URLError, OSError) as error:
            part.unlink(missing_ok=True)
            raise DownloadError(f"could not fetch {url}: {error}. {self.by_hand(source)}") from None
        except DownloadError:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, dest)
        self.log(f"saved {dest} ({dest.stat().st_size:,} bytes)")
        return dest

    @staticmethod
    def by_hand(source: Source) -> str:
        return (
            f"Fetch {source.url} by hand, save it as {source.filename} in a folder, and rerun with "
            f"--archive_dir FOLDER (or serve such a folder and pass --mirror URL)."
        )


def extract(archive: Path, dest: Path) -> None:
    """Unpack a zip or tar (any compression) into ``dest``, refusing members that would land
    outside it. The format is read from the file, not its name (some addresses have none)."""
    dest.mkdir(parents=True, exist_ok=True)
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            root = dest.resolve()
            for name in zf.namelist():
                if not (dest / name).resolve().is_relative_to(root):
                    raise DownloadError(f"{archive} holds {name!r}, outside the folder it unpacks into; not unpacking it")
            zf.extractall(dest)  # noqa: S202 -- every member was checked to stay inside dest above
    elif tarfile.is_tarfile(archive):
        with tarfile.open(archive) as tf:
            try:
                tf.extractall(dest, filter="data")  # noqa: S202 -- the "data" filter refuses absolute paths, escapes and devices
            except tarfile.FilterError as error:
                raise DownloadError(f"{archive} holds an unsafe member ({error}); not unpacking it") from None
    else:
        raise DownloadError(
            f"{archive} is neither a zip nor a tar archive (an error page saved in its place?); delete it and retry"
        )


def only_child(folder: Path) -> Path | None:
    """The single sub-folder of ``folder`` when it holds nothing else (hidden entries aside)."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".") and p.name != "__MACOSX"]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else None


def require_folders(root: Path, names: Sequence[str], what: str) -> None:
    missing = [n for n in names if not (root / n).is_dir()]
    if missing:
        found = sorted(p.name for p in root.iterdir()) if root.is_dir() else []
        raise DownloadError(f"{what}: expected the folders {', '.join(missing)} in {root}; found {found}")


class Downloader:
    """Fetches ``sources()`` and builds ``<data_dir>/<FOLDER>`` from them in :meth:`layout`."""

    DATASETS: ClassVar[tuple[str, ...]]  # the dataset names this downloader serves
    FOLDER: ClassVar[str]  # the folder it creates under --data_dir

    def sources(self) -> list[Source]:
        raise NotImplementedError

    def layout(self, files: list[Path], staging: Path) -> Path:
        """Build the dataset folder inside ``staging`` from the fetched ``files``; return it."""
        raise NotImplementedError

    def target(self, data_dir: Path) -> Path:
        return Path(data_dir) / self.FOLDER

    def plan(self, data_dir: Path, fetcher: Fetcher) -> list[str]:
        # The file name is what --archive_dir and a mirror must hold.
        return [f"{fetcher.address(s)} (as {s.filename}) -> {self.target(data_dir)}" for s in self.sources()]

    def run(self, data_dir: Path, fetcher: Fetcher) -> Path:
        target = self.target(data_dir)
        if target.is_dir() and any(target.iterdir()):
            fetcher.log(f"{target} already exists; delete it to download it again")
            return target
        staging = Path(data_dir) / f".download_{type(self).__name__}"
        files = [fetcher.fetch(s, staging) for s in self.sources()]
        shutil.rmtree(staging / "build", ignore_errors=True)  # left by an interrupted run
        built = self.layout(files, staging / "build")
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.is_dir():
            target.rmdir()  # empty (checked above)
        os.replace(built, target)
        shutil.rmtree(staging)  # the archives too, as DomainBed's downloader does
        fetcher.log(f"{', '.join(self.DATASETS)}: ready in {target}")
        return target


D = TypeVar("D", bound=type)
DOWNLOADERS: Registry[type] = Registry("downloadable dataset")


def register_downloader(cls: D) -> D:
    """Class decorator: serve every name in ``cls.DATASETS``."""
    for name in cls.DATASETS:
        DOWNLOADERS.register(name)(cls)
    return cls
