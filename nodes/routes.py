"""HTTP routes the pack adds to the ComfyUI server.

* ``GET /hunyuanvideo/version``: which pack answers.
* ``GET /hunyuanvideo/estimate?width=..&height=..&frames=..&double_blocks=..``: the memory
  planner's peak-VRAM estimate for the released 13B model (used by the web extension). Every
  parameter is validated; a bad one is answered with HTTP 400 and a message naming it.
"""

from __future__ import annotations

import logging

from ..hunyuan.memory import estimate_for_request

log = logging.getLogger(__name__)

VERSION = "0.1.0"
# Bounds that keep one request cheap; far beyond anything a GPU can sample.
LIMITS = {"width": 16384, "height": 16384, "frames": 4097, "batch": 64, "steps": 1000, "text_tokens": 4096}
_registered = False


def estimate(query: dict[str, str]) -> tuple[int, dict]:
    """(HTTP status, JSON body) for an estimate request; pure, so it is testable without a server."""
    try:
        for name, limit in LIMITS.items():
            if name in query and _number(query[name]) > limit:
                raise ValueError(f"{name}={query[name]} is larger than the {limit} this route accepts")
        return 200, estimate_for_request(dict(query))
    except ValueError as err:
        return 400, {"error": str(err)}


def _number(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        return 0.0  # not a number: estimate_for_request names it


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
        return web.json_response({"pack": "comfyui-hunyuanvideo", "version": VERSION})

    @routes.get("/hunyuanvideo/estimate")
    async def memory_estimate(request):
        status, body = estimate(dict(request.query))
        return web.json_response(body, status=status)

    _registered = True
