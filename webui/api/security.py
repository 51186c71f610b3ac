"""HTTP Basic auth for the API, a request-size limit and a cross-site request guard for the UI, as plain ASGI
middleware (no globals)."""
from __future__ import annotations

import base64
import binascii
import json
import secrets
from collections.abc import Iterable


def _plain(send, status: int, message: str, headers: Iterable[tuple[bytes, bytes]] = ()):
    body = json.dumps({"detail": message}).encode()
    async def respond():
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"),
                                (b"content-length", str(len(body)).encode()), *headers]})
        await send({"type": "http.response.body", "body": body})
    return respond()


class BasicAuth:
    """Every request whose path starts with one of ``prefixes`` needs one of ``users`` (HTTP Basic)."""

    def __init__(self, app, users: list[tuple[str, str]], prefixes: tuple[str, ...]):
        self.app, self.users, self.prefixes = app, [(u.encode(), p.encode()) for u, p in users], prefixes

    def _allowed(self, header: bytes | None) -> bool:
        if not header or not header.lower().startswith(b"basic "):
            return False
        try:
            user, _, password = base64.b64decode(header[6:].strip(), validate=True).partition(b":")
        except (binascii.Error, ValueError):
            return False
        ok = False
        for u, p in self.users:   # compare with every entry: the time does not tell which user exists
            ok |= secrets.compare_digest(u, user) & secrets.compare_digest(p, password)
        return ok

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.users and scope["path"].startswith(self.prefixes):
            header = dict(scope["headers"]).get(b"authorization")
            if not self._allowed(header):
                await _plain(send, 401, "authentication required (HTTP Basic, --api-auth)",
                             [(b"www-authenticate", b'Basic realm="webui api"')])
                return
        await self.app(scope, receive, send)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` (413), by Content-Length and while reading."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            await _plain(send, 413, f"request body larger than {self.max_bytes // 2**20} MiB")
            return
        seen = 0
        started = False

        async def guarded_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return message

        async def tracking_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, guarded_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _plain(send, 413, f"request body larger than {self.max_bytes // 2**20} MiB")


class _TooLarge(Exception):
    pass


_SAFE_METHODS = (b"GET", b"HEAD", b"OPTIONS")


class SameOrigin:
    """The UI's CSRF guard: a state-changing request (not GET / HEAD / OPTIONS) to a path outside
    ``exempt`` (the API, which has its own CORS policy and Basic auth) must come from the page itself: a
    browser's ``Origin`` header naming another host, or ``Sec-Fetch-Site: cross-site``, gets a 403.

    Gradio's own guard (``strict_cors``) only protects a server on localhost, and is off when the app
    configures CORS itself (``--cors-allow-origins``); its login cookie is ``SameSite=None`` over HTTPS.
    This closes both for a UI served on the LAN with ``--gradio-auth``. Requests without those headers
    (scripts, curl) are not browsers' cross-site requests and pass.
    """

    def __init__(self, app, exempt: tuple[str, ...] = ()):
        self.app, self.exempt = app, exempt

    @staticmethod
    def cross_site(headers: dict[bytes, bytes]) -> bool:
        if headers.get(b"sec-fetch-site") == b"cross-site":
            return True
        origin = headers.get(b"origin")
        if origin is None:
            return False
        if origin == b"null":
            return True
        host = headers.get(b"x-forwarded-host") or headers.get(b"host") or b""
        return origin.split(b"://", 1)[-1].rstrip(b"/").lower() != host.split(b",")[0].strip().lower()

    async def __call__(self, scope, receive, send):
        if (scope["type"] == "http" and scope["method"].encode() not in _SAFE_METHODS
                and not scope["path"].startswith(self.exempt) and self.cross_site(dict(scope["headers"]))):
            await _plain(send, 403, "cross-site request refused (the UI only takes requests from its own page)")
            return
        await self.app(scope, receive, send)
