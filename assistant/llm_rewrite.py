"""Optional rewrite of a retrieved answer by an OpenAI-compatible LLM (off by default).

Enabled only when FEDGUARD_LLM_BASE_URL is set (e.g. http://127.0.0.1:8000/v1 for a local
server). The model sees only the retrieved passage and must keep its numbered citation markers;
anything else (timeout, HTTP error, odd JSON, a reply without citation markers, "NO_ANSWER")
falls back to the plain retrieved answer, so an LLM can polish wording but never invent law.

Environment: FEDGUARD_LLM_BASE_URL, FEDGUARD_LLM_MODEL (default "default"),
FEDGUARD_LLM_API_KEY (optional), FEDGUARD_LLM_TIMEOUT (seconds, default 4).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlparse

from assistant.language import Lang

NO_ANSWER = "NO_ANSWER"
_MARKER = re.compile(r"\[(\d+)\]")


class LLMConfigError(ValueError):
    """An FEDGUARD_LLM_* variable has a bad value."""


_SYSTEM = (
    "You rewrite answers for a data-protection and IP compliance assistant. Use ONLY the facts "
    "in the passage given; add no facts, cases, numbers or articles of your own. Keep the "
    "citation markers such as [1] after the statements they support. Answer in {language}, "
    "concisely, for the user's question. If the passage does not answer the question, reply "
    f"exactly {NO_ANSWER}."
)


@dataclass
class LLMRewriter:
    """Client for one OpenAI-compatible chat-completions endpoint."""

    base_url: str
    model: str = "default"
    api_key: str | None = None
    timeout: float = 4.0
    last_error: str | None = None

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> LLMRewriter | None:
        """A rewriter configured from FEDGUARD_LLM_* variables, or None when not enabled."""
        env = os.environ if env is None else env
        base_url = env.get("FEDGUARD_LLM_BASE_URL", "").strip()
        if not base_url:
            return None
        if urlparse(base_url).scheme not in ("http", "https"):
            raise LLMConfigError(
                f"FEDGUARD_LLM_BASE_URL={base_url!r} is not an http(s) URL; "
                "use e.g. http://127.0.0.1:8000/v1"
            )
        raw_timeout = env.get("FEDGUARD_LLM_TIMEOUT", "4")
        try:
            timeout = float(raw_timeout)
            if timeout <= 0:
                raise ValueError
        except ValueError:
            raise LLMConfigError(
                f"FEDGUARD_LLM_TIMEOUT={raw_timeout!r} is not a positive number of seconds"
            ) from None
        return cls(
            base_url=base_url,
            model=env.get("FEDGUARD_LLM_MODEL", "default").strip() or "default",
            api_key=env.get("FEDGUARD_LLM_API_KEY") or None,
            timeout=timeout,
        )

    def rewrite(
        self, question: str, passage: str, citations: Sequence[str], lang: Lang
    ) -> str | None:
        """The rewritten answer, or None to keep the plain one (reason in `last_error`)."""
        numbered = "\n".join(f"[{i}] {c}" for i, c in enumerate(citations, 1))
        user = (
            f"Question: {question}\n\nPassage:\n{passage}\n\n"
            f"Citations (keep these markers):\n{numbered}"
        )
        language = "Simplified Chinese" if lang == "zh" else "English"
        payload = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": _SYSTEM.format(language=language)},
                {"role": "user", "content": user},
            ],
        }
        self.last_error = None
        try:
            text = self._post(payload)
        except Exception as exc:  # noqa: BLE001 - any failure means "use the plain answer"
            self.last_error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            return None
        return self._check(text, len(citations))

    def _post(self, payload: dict[str, object]) -> str:
        import httpx  # imported lazily: most runs never use an LLM

        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        host = urlparse(self.base_url).hostname or ""
        local = host in ("127.0.0.1", "localhost", "::1")
        with httpx.Client(timeout=self.timeout, trust_env=not local) as client:
            response = client.post(
                self.base_url.rstrip("/") + "/chat/completions", json=payload, headers=headers
            )
            response.raise_for_status()
            content = response.json()["choices"][0]["message"]["content"]
        if not isinstance(content, str):
            raise TypeError("message content is not text")
        return content.strip()

    def _check(self, text: str, n_citations: int) -> str | None:
        if not text or NO_ANSWER in text:
            self.last_error = "the model did not answer from the passage"
            return None
        markers = {int(m) for m in _MARKER.findall(text)}
        if n_citations and not markers & set(range(1, n_citations + 1)):
            self.last_error = "the rewrite dropped the citation markers"
            return None
        return text
