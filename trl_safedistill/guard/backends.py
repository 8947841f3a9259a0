"""Text generators for augmentation: a local transformers model or an OpenAI-compatible endpoint.

Both take *rendered* prompts (chat template applied, assistant turn opened and pre-filled by the
caller) and return only the continuation, so the affirmative-prefix trick of HarmAug
(arXiv 2410.01524) works the same way on both: the request text ends with the prefix and the model
continues it. The endpoint is called through ``POST {base}/v1/completions`` (raw completions, not
chat, so that the pre-filled assistant turn is kept as is).
"""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol


class TextGenerator(Protocol):
    """Continues rendered prompts; ``seed`` makes a call reproducible where the backend allows it."""

    def complete(self, prompts: Sequence[str], seed: int) -> list[str]: ...


class LocalGenerator:
    """Sampling from a local causal LM (hub id, folder, or ``embedded-default``).

    Prompts are tokenized without special tokens (the chat template already wrote BOS where the model
    uses one) and left-padded; ``torch.manual_seed(seed)`` before ``generate`` makes a batch
    reproducible on the same machine.
    """

    def __init__(
        self, model: Any, tokenizer: Any, *, max_new_tokens: int = 64, temperature: float = 1.0, top_p: float = 0.95
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        if tokenizer.pad_token_id is None:
            tokenizer.pad_token = tokenizer.eos_token

    @classmethod
    def from_pretrained(cls, name_or_path: str, *, device: str | None = None, **kwargs: Any) -> LocalGenerator:
        import torch
        from transformers import AutoModelForCausalLM

        from trl_safedistill.models import load_tokenizer, resolve_model_path

        path = resolve_model_path(name_or_path)
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device)
        return cls(model, load_tokenizer(path), **kwargs)

    def complete(self, prompts: Sequence[str], seed: int) -> list[str]:
        import torch

        if not prompts:
            return []
        side = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"
        try:
            batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True, add_special_tokens=False)
        finally:
            self.tokenizer.padding_side = side
        device = next(self.model.parameters()).device
        batch = {k: v.to(device) for k, v in batch.items()}
        torch.manual_seed(seed)
        with torch.inference_mode():
            output = self.model.generate(
                **batch,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                pad_token_id=self.tokenizer.pad_token_id,
            )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        return self.tokenizer.batch_decode(new_tokens, skip_special_tokens=True)


class CompletionsEndpoint:
    """An OpenAI-compatible server's ``/v1/completions`` (vLLM, llama.cpp, TGI, ...).

    One request per prompt, ``concurrency`` in flight, retries with exponential backoff on timeouts,
    connection errors, 429 and 5xx. The API key comes from the argument or ``$OPENAI_API_KEY``.
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key: str | None = None,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 0.95,
        timeout: float = 120.0,
        retries: int = 4,
        concurrency: int = 8,
    ):
        base = base_url.rstrip("/")
        self.url = base + ("/completions" if base.endswith("/v1") else "/v1/completions")
        self.model = model
        self.api_key = api_key if api_key is not None else os.environ.get("OPENAI_API_KEY")
        self.max_new_tokens, self.temperature, self.top_p = max_new_tokens, temperature, top_p
        self.timeout, self.retries, self.concurrency = timeout, retries, max(1, concurrency)

    def _post(self, body: dict[str, Any]) -> dict[str, Any]:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        delay = 1.0
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    return json.loads(response.read())
            except urllib.error.HTTPError as error:
                if error.code != 429 and error.code < 500 or attempt == self.retries:
                    raise RuntimeError(f"{self.url}: HTTP {error.code}") from None
            except (urllib.error.URLError, TimeoutError, ConnectionError):
                if attempt == self.retries:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 30.0)
        raise AssertionError("unreachable")

    def complete(self, prompts: Sequence[str], seed: int) -> list[str]:
        def one(index: int) -> str:
            body = {
                "model": self.model,
                "prompt": prompts[index],
                "max_tokens": self.max_new_tokens,
                "temperature": self.temperature,
                "top_p": self.top_p,
                "seed": seed + index,
            }
            choices = self._post(body).get("choices") or [{}]
            return str(choices[0].get("text") or "")

        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            return list(pool.map(one, range(len(prompts))))
