"""HTTP routes the pack adds to the ComfyUI server."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)
_registered = False


def register() -> None:
    """Attach the pack's routes to the running PromptServer (idempotent)."""
    global _registered
    if _registered:
        return
    from aiohttp import web
    from server import PromptServer

    routes = PromptServer.instance.routes

    @routes.get("/hunyuanvideo/version")
    async def version(request):
        from .. import __name__ as pack  # noqa: F401  (keeps the route tied to this package)

        return web.json_response({"pack": "comfyui-hunyuanvideo", "version": "0.1.0"})

    _registered = True
