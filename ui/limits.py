"""Request body size limit for the whole app (REST API and Gradio alike), as a plain ASGI middleware.

`install_limits(app, max_bytes)` wraps the app: a request whose Content-Length is over the limit is answered
413 before any of its body is read; a body without a length (chunked) is counted as the app reads it, and the
request is cut off with the same 413 as soon as it grows past the limit. The answer is the API's error shape:
{"error": "PayloadTooLarge", "detail": "... the limit is N MB (--max-upload-mb)"}. Gradio's own upload route
checks each file against `max_file_size` too (app.py passes the same limit). Pure Python: no torch here.
"""

from __future__ import annotations

import json
from typing import Any, Awaitable, Callable

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

MB = 2**20


class _TooLarge(Exception):
    """Raised into the app from `receive` once the body passes the limit; the middleware answers 413."""


class BodyLimit:
    """ASGI middleware refusing request bodies over `max_bytes` with 413 and a JSON reason."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app, self.max_bytes = app, int(max_bytes)

    def reason(self, size: str) -> str:
        limit = self.max_bytes / MB
        return (f"the request body is {size}; the limit is {limit:g} MB (--max-upload-mb). Send a smaller image "
                "or start the app with a larger --max-upload-mb.")

    async def refuse(self, send: Send, size: str) -> None:
        body = json.dumps({"error": "PayloadTooLarge", "detail": self.reason(size)}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self.refuse(send, f"{declared / MB:.1f} MB")
            return

        state = {"received": 0, "over": False, "started": False}

        async def counting_receive() -> Message:
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_bytes:
                    state["over"] = True
                    raise _TooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            if state["over"]:  # the app's own answer to the cut-off body (e.g. a 500) is dropped: ours goes out
                return
            if message["type"] == "http.response.start":
                state["started"] = True
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self.refuse(send, f"over {self.max_bytes / MB:g} MB (sent without a length, cut off)")


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers") or ():
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def install_limits(app: Any, max_bytes: int) -> Any:
    """Add the body limit to a Starlette/FastAPI app (before its first request); returns the app."""
    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    return app
