"""BIG-bench 1.0.0 json tasks from the pinned ``bigbench`` sdist (see :mod:`.archives`), extracted on demand.

One pass over the sdist writes ``<cache>/sources/bigbench-1.0.0/index.json`` (every json task key, e.g.
``logical_deduction/three_objects``) and the ``task.json`` files of the requested tasks under ``tasks/``; a
task's ``.complete`` marker says its files are all there. Subtasks are flattened into their top-level task.
"""

from __future__ import annotations

import json
import shutil
import tarfile
from collections.abc import Iterable
from pathlib import Path

from .archives import OfflineDataError, fetch, sources_dir


def bigbench_dir(cache: Path | str | None = None) -> Path:
    """Where extracted BIG-bench task files live: ``<cache>/sources/bigbench-1.0.0``."""
    return sources_dir(cache) / "bigbench-1.0.0"


#: The part of a member path that starts the task folders, below the archive's one top folder: the sdist's
#: ``bigbench-1.0.0/`` or a checkout archive's (``BIG-bench-main/`` from a repository host).
TASKS_FOLDER = "bigbench/benchmark_tasks/"


def _task_key(member: str) -> str | None:
    """``<top>/bigbench/benchmark_tasks/logical_deduction/three_objects/task.json`` -> ``logical_deduction/three_objects``
    (``<top>`` is the archive's one top folder: ``bigbench-1.0.0`` in the sdist, any name in a checkout archive)."""
    top, _, rest = member.partition("/")
    if not top or not rest.startswith(TASKS_FOLDER) or not member.endswith("/task.json"):
        return None
    return rest[len(TASKS_FOLDER) : -len("/task.json")]


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
