"""ComfyUI entry point of the HunyuanVideo node pack (V3 extension API)."""

from __future__ import annotations

WEB_DIRECTORY = "./web"

try:
    from comfy_api.latest import ComfyExtension
except ImportError:  # imported outside ComfyUI (e.g. by pytest collecting the repo root)
    ComfyExtension = None

if ComfyExtension is not None:

    class HunyuanVideoExtension(ComfyExtension):
        async def get_node_list(self):
            from .nodes import all_nodes

            return all_nodes()

    async def comfy_entrypoint() -> HunyuanVideoExtension:
        from .nodes import routes

        routes.register()
        return HunyuanVideoExtension()
