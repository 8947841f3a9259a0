"""A small, dependency-free client for OpenAI-compatible ``/v1/chat/completions`` and ``/v1/completions``.

Standard library only (``urllib``), thread-safe (one connection per request), so a thread pool gives
bounded concurrency. Retries: a request that times out, cannot connect, or answers 429 or 5xx is
retried up to ``retries`` times with capped exponential backoff and jitter,
``delay_k = min(max_backoff, backoff * 2**k) * U(0.5, 1)``, or the server's ``Retry-After`` (capped) when
it sends one. Other 4xx answers are not retried (a wrong model name does not fix itself).

Requests to loopback hosts bypass any proxy configured in the environment.
"""

from __future__ import annotations

import http.client
import json
import random
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
RETRY_STATUS = frozenset({408, 409, 425, 429})


class RequestFailed(RuntimeError):
    """A request that still failed after all retries (or failed with a non-retryable status)."""

    def __init__(self, message: str, attempts: int, status: int | None = None):
        super().__init__(message)
        self.attempts, self.status = attempts, status


@dataclass
class ClientConfig:
    """Where and how to reach the teacher."""

    base_url: str
    model: str | None = None
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 5
    backoff: float = 1.0
    max_backoff: float = 30.0


def normalize_base_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept (minus a trailing ``/``)."""
    url = url.rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"teacher base URL must be http(s)://host[:port][/v1], got '{url}'")
    return url if parsed.path not in ("", "/") else url + "/v1"


class OpenAIClient:
    """POST JSON to an OpenAI-compatible server with retries; see the module docstring."""

    def __init__(self, config: ClientConfig, rng: random.Random | None = None):
        self.config = config
        self.base_url = normalize_base_url(config.base_url)
        host = urlparse(self.base_url).hostname or ""
        handlers = [urllib.request.ProxyHandler({})] if host in LOOPBACK_HOSTS else []
        self._opener = urllib.request.build_opener(*handlers)
        self._rng = rng or random.Random(0)

    def _headers(self) -> dict[str, str]:
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self.config.api_key:
            headers["Authorization"] = f"Bearer {self.config.api_key}"
        return headers

    def request(self, path: str, payload: dict[str, Any] | None = None) -> dict[str, Any]:
        """One call with retries; returns the decoded JSON body or raises :class:`RequestFailed`."""
        url = f"{self.base_url}/{path.lstrip('/')}"
        data = None if payload is None else json.dumps(payload).encode("utf-8")
        last_error, last_status = "no attempt", None
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            retry_after: float | None = None
            try:
                request = urllib.request.Request(url, data=data, headers=self._headers(), method="POST" if data else "GET")
                with self._opener.open(request, timeout=self.config.timeout) as response:
                    body = response.read()
                try:
                    return json.loads(body)
                except json.JSONDecodeError:
                    last_error, last_status = "response is not JSON", None
            except urllib.error.HTTPError as error:
                last_status = error.code
                last_error = f"HTTP {error.code}"
                retry_after = _retry_after(error.headers.get("Retry-After") if error.headers else None)
                error.close()
                if error.code not in RETRY_STATUS and error.code < 500:
                    raise RequestFailed(f"{url}: {last_error} (not retried)", attempt + 1, error.code) from None
            except TimeoutError:
                last_error, last_status = f"timed out after {self.config.timeout:g}s", None
            except (http.client.HTTPException, OSError) as error:
                reason = getattr(error, "reason", error)
                if isinstance(reason, TimeoutError):
                    last_error = f"timed out after {self.config.timeout:g}s"
                else:
                    last_error = f"connection error: {type(reason).__name__}: {reason}"
                last_status = None
            if attempt + 1 < attempts:
                time.sleep(self.delay(attempt, retry_after))
        raise RequestFailed(f"{url}: {last_error} after {attempts} attempts", attempts, last_status)

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry ``attempt + 1``."""
        if retry_after is not None:
            return min(retry_after, self.config.max_backoff)
        return min(self.config.max_backoff, self.config.backoff * 2**attempt) * self._rng.uniform(0.5, 1.0)

    def list_models(self) -> list[str]:
        """Model ids from ``GET /models``."""
        body = self.request("models")
        return [str(item.get("id")) for item in body.get("data", []) if isinstance(item, dict)]

    def chat(self, messages: list[dict[str, str]], **params: Any) -> str:
        """The first choice's message content of a ``/chat/completions`` call."""
        body = self.request("chat/completions", {"model": self.config.model, "messages": messages, **params})
        try:
            content = body["choices"][0]["message"]["content"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed("chat/completions: response has no choices[0].message.content", 1) from None
        return content if isinstance(content, str) else ""

    def complete(self, prompt: str, **params: Any) -> str:
        """The first choice's text of a ``/completions`` call."""
        body = self.request("completions", {"model": self.config.model, "prompt": prompt, **params})
        try:
            text = body["choices"][0]["text"]
        except (KeyError, IndexError, TypeError):
            raise RequestFailed("completions: response has no choices[0].text", 1) from None
        return text if isinstance(text, str) else ""


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None
