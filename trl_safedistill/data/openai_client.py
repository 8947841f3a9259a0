"""The teacher's connection: the ``openai`` SDK's client for any OpenAI-compatible server.

``teach`` needs three calls, ``GET /models``, ``POST /chat/completions`` and ``POST /completions``; the
SDK (``openai.OpenAI``) makes them, thread-safe (one client serves the whole thread pool), with its own
timeouts and retries: a request that times out, cannot connect, or answers 408, 409, 429 or 5xx is
retried up to ``retries`` times, after the server's ``Retry-After`` when it sends one (up to two
minutes), else after an exponential backoff with jitter (0.5 s doubling to 8 s). Other 4xx answers
fail at once (a wrong model name does not fix itself).

This module only adapts the SDK to what ``teach`` needs: the first choice's text, and every failure
as one :class:`RequestFailed` with a short reason (status code or connection error, never response
text). Requests to loopback hosts ignore any proxy configured in the environment.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlparse

import openai

LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
#: Statuses the SDK retries (besides timeouts and connection errors); any other status fails at once.
RETRIED_STATUS = frozenset({408, 409, 429})
#: At most this long to open a connection, whatever the (longer) request timeout.
CONNECT_TIMEOUT = 10.0
#: The SDK insists on a key; a local server without one gets this placeholder (vLLM's convention).
NO_KEY = "EMPTY"


class RequestFailed(RuntimeError):
    """A request that still failed after the SDK's retries, or failed with a status that is not retried.

    ``status`` is the HTTP status (None for timeouts, connection errors and malformed answers);
    ``unreachable`` is True when no connection could be made at all (refused, no route, name unknown).
    """

    def __init__(self, message: str, status: int | None = None, unreachable: bool = False):
        super().__init__(message)
        self.status, self.unreachable = status, unreachable


@dataclass
class ClientConfig:
    """Where and how to reach the teacher: ``retries`` after the first attempt, ``timeout`` seconds each."""

    base_url: str
    model: str | None = None
    api_key: str | None = None
    timeout: float = 120.0
    retries: int = 5


def normalize_base_url(url: str) -> str:
    """``http://host:port`` -> ``http://host:port/v1``; a URL with a path is kept (minus a trailing ``/``)."""
    url = url.rstrip("/")
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"teacher base URL must be http(s)://host[:port][/v1], got '{url}'")
    return url if parsed.path not in ("", "/") else url + "/v1"


class TeacherClient:
    """An ``openai.OpenAI`` client bound to one server and model; see the module docstring."""

    def __init__(self, config: ClientConfig):
        self.config = config
        self.base_url = normalize_base_url(config.base_url)
        loopback = (urlparse(self.base_url).hostname or "") in LOOPBACK_HOSTS
        self.sdk = openai.OpenAI(
            base_url=self.base_url,
            api_key=config.api_key or NO_KEY,
            timeout=openai.Timeout(config.timeout, connect=min(config.timeout, CONNECT_TIMEOUT)),
            max_retries=config.retries,
            http_client=openai.DefaultHttpxClient(trust_env=False) if loopback else None,
        )

    def list_models(self, *, retries: int | None = None) -> list[str]:
        """Model ids from ``GET /models`` (``retries`` overrides the configured count for this call)."""
        sdk = self.sdk if retries is None else self.sdk.with_options(max_retries=retries)
        page = self._call("models", lambda: sdk.models.list(), sdk.max_retries)
        return [str(model.id) for model in page.data]

    def check_reachable(self) -> None:
        """Raise :class:`RequestFailed` (``unreachable``) at once when nothing answers at the base URL.

        One ``GET /models`` without retries. Any HTTP answer, even an error status (a server without
        that route), or a slow one proves a server is there, so only a failed connection raises.
        """
        try:
            self.list_models(retries=0)
        except RequestFailed as error:
            if error.unreachable:
                raise

    def chat(self, messages: list[dict[str, str]], **params: Any) -> str:
        """The first choice's message content of a ``/chat/completions`` call."""
        body = self._call(
            "chat/completions",
            lambda: self.sdk.chat.completions.create(model=self.config.model, messages=messages, **params),
            self.sdk.max_retries,
        )
        try:
            content = body.choices[0].message.content
        except (AttributeError, IndexError, TypeError):
            raise RequestFailed(f"{self.base_url}/chat/completions: response has no choices[0].message.content") from None
        return content if isinstance(content, str) else ""

    def complete(self, prompt: str, **params: Any) -> str:
        """The first choice's text of a ``/completions`` call."""
        body = self._call(
            "completions", lambda: self.sdk.completions.create(model=self.config.model, prompt=prompt, **params), self.sdk.max_retries
        )
        try:
            text = body.choices[0].text
        except (AttributeError, IndexError, TypeError):
            raise RequestFailed(f"{self.base_url}/completions: response has no choices[0].text") from None
        return text if isinstance(text, str) else ""

    def close(self) -> None:
        """Close the connection pool."""
        self.sdk.close()

    def _call(self, path: str, send: Callable[[], Any], retries: int) -> Any:
        """``send()`` (which the SDK retries ``retries`` times), its exceptions turned into :class:`RequestFailed`
        naming the URL and the reason; a server's error message is added, never response text."""
        url = f"{self.base_url}/{path}"
        attempts = f"after {retries + 1} attempt{'s' if retries else ''}"
        try:
            return send()
        except openai.APITimeoutError:
            raise RequestFailed(f"{url}: timed out after {self.config.timeout:g}s {attempts}") from None
        except openai.APIConnectionError as error:
            cause = error.__cause__ or error
            raise RequestFailed(f"{url}: connection error: {type(cause).__name__}: {cause} {attempts}", unreachable=True) from None
        except openai.APIStatusError as error:
            status = error.status_code
            retried = status in RETRIED_STATUS or status >= 500
            message = error.body.get("message") if isinstance(error.body, dict) else None
            detail = f" ({message[:200]})" if isinstance(message, str) and message else ""
            raise RequestFailed(f"{url}: HTTP {status}{detail} {attempts if retried else '(not retried)'}", status) from None
        except openai.APIError as error:  # a 2xx answer the SDK cannot read (not JSON, wrong shape)
            raise RequestFailed(f"{url}: unreadable response ({type(error).__name__})") from None
