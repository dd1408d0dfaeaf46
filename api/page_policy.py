"""A Content-Security-Policy for the pages a browser renders: nothing of theirs comes from the internet."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

# Scripts and styles already come from the package (fastapi-offline, the vendored dashboard); images are
# the one thing a page still asked a CDN for (ReDoc's footer logo at cdn.redoc.ly). The browser now
# refuses such a request instead of making it, so an offline machine shows the same complete page.
POLICY = b"img-src 'self' data: blob:"


class PagesLoadFromHere:
    """Adds the policy to the HTML pages (the dashboard, /docs, /redoc); API answers are left as they are."""

    def __init__(self, app: ASGIApp, *, paths: frozenset[str]) -> None:
        self.app = app
        self.paths = paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return

        async def send_with_policy(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"content-security-policy", POLICY)]
            await send(message)

        await self.app(scope, receive, send_with_policy)
