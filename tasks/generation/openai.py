"""A small client for OpenAI-compatible chat servers: many requests in flight, retried with backoff.

Talks to anything that serves `POST {base_url}/chat/completions`: `vllm serve`, OpenAI, gateways. The API
key is read from the environment variable named in the config, at request time, and is never logged or put
in an error message; when the variable is unset no Authorization header is sent (local servers need none,
and a server that does need one answers 401, which `check` turns into a message naming the variable).

Try it against a running server:
    python -m tasks.generation.openai --base-url http://127.0.0.1:8000/v1 --model NAME "What is 2 plus 3?"
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import time
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from dataclasses import dataclass, replace
from typing import Literal

import httpx

from tasks.generation import EngineError

log = logging.getLogger(__name__)

RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504}  # worth asking again: overload, restarts, flaky proxies
FATAL_STATUS = {401, 403, 404}  # wrong key, wrong model or wrong URL: every other request would fail too
PROBE = "7Q"  # a reply no unconstrained model gives by chance: seeing it proves the constraint was applied

StructuredMode = Literal["choice", "json_schema", "none"]


class EndpointError(EngineError):
    """The server cannot be used at all (unreachable, key missing or rejected, unknown model)."""


@dataclass(frozen=True)
class ChatReply:
    text: str | None  # the assistant message; None when the request failed
    status: Literal["ok", "error", "timeout"] = "ok"
    error: str = ""  # why it failed: the server's message, or the network error
    code: int | None = None  # HTTP status of the last attempt (400: this request itself was rejected)
    fell_back: bool = False  # asked again without the answer constraint the server rejected: free text


class ChatClient:
    """Chat completions against one model of an OpenAI-compatible server.

    Args:
        base_url: the server's API root, e.g. http://127.0.0.1:8000/v1.
        model: the model name the server expects.
        api_key_env: environment variable holding the key (unset: no Authorization header).
        timeout_s: per-request timeout.
        concurrency: requests in flight at once in `chat_many`.
        max_retries: attempts after the first on 429/5xx/timeouts/dropped connections.
        backoff_s: first retry delay; doubled each attempt (capped at 30 s; a Retry-After header wins).
    """

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key_env: str = "OPENAI_API_KEY",
        timeout_s: float = 60.0,
        concurrency: int = 8,
        max_retries: int = 4,
        backoff_s: float = 0.5,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key_env = api_key_env
        self.concurrency = concurrency
        self.max_retries = max_retries
        self.backoff_s = backoff_s
        self._http = httpx.Client(
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 10.0)),
            limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        )

    # --- requests -------------------------------------------------------------------------------------

    def chat(
        self,
        messages: list[dict],
        max_tokens: int,
        temperature: float = 0.0,
        extra: dict | None = None,
        retries: int | None = None,
    ) -> ChatReply:
        """One chat completion, retried on transient failures.

        Returns a failed ChatReply for a problem of this request (400, repeated 5xx, timeout); raises
        EndpointError when the server is unusable (unreachable after retries, 401/403, unknown model).
        """
        body = {
            "model": self.model,
            "messages": messages,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "seed": 0,
            **(extra or {}),
        }
        retries = self.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            delay = self.backoff_s * 2**attempt * random.uniform(0.75, 1.0)  # jitter: retries do not stampede
            try:
                resp = self._http.post(f"{self.base_url}/chat/completions", json=body, headers=self._headers())
            except httpx.TimeoutException as e:
                reply = ChatReply(None, "timeout", f"no answer within the timeout ({type(e).__name__})")
            except httpx.TransportError as e:  # refused, reset, DNS: the server, not this request
                if attempt == retries:
                    raise EndpointError(self._describe(f"cannot be reached: {e}")) from None
                time.sleep(min(delay, 30.0))
                continue
            else:
                if resp.status_code == 200:
                    return ChatReply(_content(resp), code=200)
                if resp.status_code in FATAL_STATUS:
                    raise EndpointError(self._describe(_fatal_hint(resp, self.api_key_env, self._key())))
                reply = ChatReply(None, "error", _server_message(resp), resp.status_code)
                if resp.status_code not in RETRY_STATUS:
                    return reply
                delay = _retry_after(resp) or delay
            if attempt < retries:
                time.sleep(min(delay, 30.0))
        return reply

    def chat_many(self, requests: list[dict]) -> list[ChatReply]:
        """`chat(**request)` for each request, `concurrency` at a time, replies in request order.

        An EndpointError from any request cancels the ones not yet started and is raised.
        """
        if not requests:
            return []
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=self.concurrency) as pool:
            futures = [pool.submit(self.chat, **r) for r in requests]
            done, _ = wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in done if f.exception() is not None), None)
            if failed is not None:
                pool.shutdown(cancel_futures=True)
                raise failed.exception()
        replies = [f.result() for f in futures]
        bad = sum(r.text is None for r in replies)
        log.info(
            "%d chat requests to %s in %.1f s (%d failed)", len(replies), self.base_url, time.perf_counter() - t0, bad
        )
        return replies

    def chat_constrained(
        self,
        prompts: list[str],
        mode: StructuredMode,
        choices: list[str],
        schema: dict,
        max_tokens: int,
        temperature: float = 0.0,
    ) -> list[ChatReply]:
        """One single-turn chat per prompt, the answer constrained as `mode` (from `structured_mode`) allows.

        Args:
            prompts: user messages.
            mode: "choice": the answer is one of `choices`; "json_schema": a JSON object matching `schema`;
                "none": free text.
        Returns:
            one reply per prompt. A request rejected (400) with its constraint is asked again without it,
            and a reply so obtained has fell_back=True: the caller parses free text and counts it.
        """
        extra = {
            "choice": {"structured_outputs": {"choice": choices}},
            "json_schema": json_schema_format("answer", schema),
            "none": {},
        }[mode]
        requests = [
            dict(messages=[{"role": "user", "content": p}], max_tokens=max_tokens, temperature=temperature, extra=extra)
            for p in prompts
        ]
        replies = self.chat_many(requests)
        redo = [k for k, r in enumerate(replies) if extra and r.code == 400]
        if redo:
            log.warning(
                "%s rejected %d constrained requests (%s): asking again without the constraint",
                self.base_url,
                len(redo),
                replies[redo[0]].error,
            )
            again = self.chat_many([{**requests[k], "extra": None} for k in redo])
            for k, r in zip(redo, again):
                replies[k] = replace(r, fell_back=r.text is not None)
        return replies

    # --- checks ---------------------------------------------------------------------------------------

    def check(self) -> None:
        """One cheap request (a 1-token answer) that raises EndpointError unless the server can be used.

        No retries on a refused connection: a wrong URL should fail in a second, not after a minute.
        """
        reply = self.chat([{"role": "user", "content": "Say OK."}], max_tokens=1, retries=0)
        if reply.text is None:
            raise EndpointError(self._describe(f"failed a 1-token test request: {reply.error}"))

    def structured_mode(self) -> StructuredMode:
        """How this server constrains answers: vLLM's `structured_outputs` choice, a `response_format` JSON
        schema (OpenAI and most others), or not at all.

        Each is tried once with a constraint whose only allowed answer is PROBE. A server that ignores an
        unknown field instead of answering 400 (vLLM itself ignores fields it does not know) is caught by the
        answer not being PROBE.
        """
        ask = [{"role": "user", "content": "Reply with anything."}]
        reply = self.chat(ask, max_tokens=8, extra={"structured_outputs": {"choice": [PROBE]}}, retries=1)
        if reply.text is not None and reply.text.strip() == PROBE:
            return "choice"
        schema = {
            "type": "object",
            "properties": {"answer": {"type": "string", "enum": [PROBE]}},
            "required": ["answer"],
            "additionalProperties": False,
        }
        reply = self.chat(ask, max_tokens=32, extra=json_schema_format("probe", schema), retries=1)
        try:
            if json.loads(reply.text or "") == {"answer": PROBE}:
                return "json_schema"
        except ValueError:
            pass
        log.warning(
            "%s honours neither structured_outputs nor a response_format JSON schema (%s): judge "
            "answers will be parsed from free text",
            self.base_url,
            reply.error or reply.text,
        )
        return "none"

    def close(self) -> None:
        self._http.close()

    # --- helpers --------------------------------------------------------------------------------------

    def _key(self) -> str:
        return os.environ.get(self.api_key_env, "")

    def _headers(self) -> dict[str, str]:
        key = self._key()
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _describe(self, problem: str) -> str:
        key_state = "set" if self._key() else "unset"
        return (
            f"the OpenAI-compatible server at {self.base_url} (model {self.model!r}) {problem} "
            f"[API key from ${self.api_key_env}: {key_state}]"
        )


def json_schema_format(name: str, schema: dict) -> dict:
    """Request fields asking for an answer matching `schema` (OpenAI's structured outputs, also vLLM's)."""
    return {"response_format": {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": True}}}


def _content(resp: httpx.Response) -> str:
    try:
        message = resp.json()["choices"][0]["message"]
    except (ValueError, KeyError, IndexError, TypeError):
        return ""  # a 200 without a message: counted as an unparseable answer, not a crash
    return message.get("content") or ""


def _server_message(resp: httpx.Response) -> str:
    try:
        err = resp.json().get("error", resp.text)
        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        msg = resp.text
    return f"HTTP {resp.status_code}: {msg[:500]}"


def _fatal_hint(resp: httpx.Response, env: str, key: str) -> str:
    msg = _server_message(resp)
    if resp.status_code in (401, 403):
        if not key:
            return f"demands an API key ({msg}): set the environment variable ${env}"
        return f"rejected the API key in ${env} ({msg})"
    return f"does not serve this model or path ({msg}): check the model name and base_url"


def _retry_after(resp: httpx.Response) -> float | None:
    try:
        return float(resp.headers.get("retry-after", ""))
    except ValueError:
        return None


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--base-url", required=True, help="API root, e.g. http://127.0.0.1:8000/v1.")
    parser.add_argument("--model", required=True, help="Model name the server expects.")
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY", help="Variable holding the API key.")
    parser.add_argument("--max-tokens", type=int, default=64, help="Longest answer, in tokens.")
    parser.add_argument("prompt", help="User message.")
    args = parser.parse_args()
    client = ChatClient(args.base_url, args.model, args.api_key_env)
    client.check()
    print(f"structured outputs: {client.structured_mode()}")
    print(client.chat([{"role": "user", "content": args.prompt}], max_tokens=args.max_tokens))
