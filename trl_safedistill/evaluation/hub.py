"""Whether the Hugging Face hub can be reached: hub-only tasks (ARC, AGIEval, XSTest) are skipped when not."""

from __future__ import annotations

import os
import socket

HUB_ONLY_REASON = (
    "needs the Hugging Face hub (no package registry ships ARC, AGIEval or XSTest); skipped offline"
)


def hub_reachable(timeout: float = 3.0) -> bool:
    """False when ``HF_HUB_OFFLINE``/``HF_DATASETS_OFFLINE`` is set or huggingface.co:443 does not answer."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().lower() in {"1", "true", "yes", "on"}:
            return False
    try:
        with socket.create_connection(("huggingface.co", 443), timeout=timeout):
            return True
    except OSError:
        return False
