"""A local OpenAI-compatible teacher: ``transformers serve`` on 127.0.0.1, started and always stopped.

``transformers serve`` (``pip install "transformers[serving]"``) serves ``/v1/chat/completions`` and
``/v1/completions`` on the CPU too. :func:`local_teacher` picks a free loopback port, starts the server
in its own process group, waits for ``/health`` with a bounded deadline, yields the ``/v1`` base URL,
and terminates the whole group on exit (SIGTERM, then SIGKILL). Used by the integration tests and the
throughput benchmark; handy for a quick local teacher::

    with local_teacher(embedded_default_path(), extra_args=["--continuous-batching"]) as base_url:
        ...
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """Terminate the process group of ``process``; kill it if it lingers past ``grace`` seconds."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=grace)
    except ProcessLookupError:
        pass


@contextmanager
def local_teacher(
    model_path: str | Path,
    *,
    extra_args: Sequence[str] = (),
    startup_timeout: float = 180.0,
    log_path: str | Path | None = None,
    threads: int | None = None,
) -> Iterator[str]:
    """Serve ``model_path`` on a free loopback port; yields ``http://127.0.0.1:PORT/v1``.

    ``threads`` sets the server's ``OMP_NUM_THREADS`` (torch's CPU threads); default: inherited.
    """
    port = free_port()
    executable = Path(sys.executable).with_name("transformers")
    command = [str(executable), "serve", "--host", "127.0.0.1", "--port", str(port), "--device", "cpu", *extra_args, str(model_path)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    log = open(log_path, "w") if log_path else subprocess.DEVNULL  # noqa: SIM115 - closed below
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                tail = Path(log_path).read_text()[-2000:] if log_path else "(no log)"
                raise RuntimeError(f"transformers serve exited with code {process.returncode}: {tail}")
            try:
                with opener.open(f"http://127.0.0.1:{port}/health", timeout=2) as response:
                    if response.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"transformers serve was not healthy within {startup_timeout:.0f}s")
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        stop(process)
        if log is not subprocess.DEVNULL:
            log.close()
