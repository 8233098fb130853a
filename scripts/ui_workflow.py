"""Make UI-format workflows (what the ComfyUI page saves and loads) from API-format ones.

    .venv/bin/python scripts/ui_workflow.py            # rewrite workflows/*.json from *_api.json

The API files in ``workflows/`` are the source of truth; the UI files are generated from them with
the live server's ``/object_info`` so that widget order and socket types are exactly what the
frontend expects. A test regenerates them and fails when the committed copies drift.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "workflows"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODE_WIDTH, COLUMN_WIDTH, SLOT_HEIGHT, ROW_GAP = 340, 400, 26, 60


def _is_widget(spec: list) -> bool:
    kind = spec[0]
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)


def _ordered_inputs(info: dict) -> list[tuple[str, list]]:
    order = info.get("input_order") or {s: list(info["input"].get(s, {})) for s in ("required", "optional")}
    out = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            out.append((name, info["input"][section][name]))
    return out


def _depths(api: dict) -> dict[str, int]:
    depth: dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            parents = [v[0] for v in api[node_id]["inputs"].values() if _is_link(v)]
            depth[node_id] = 1 + max((visit(p) for p in parents), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def to_ui(api: dict, object_info: dict) -> dict:
    """Convert an API-format prompt into a UI-format workflow (schema 0.4)."""
    depth = _depths(api)
    rows: dict[int, int] = {}
    nodes, links = [], []
    outputs: dict[str, list[dict]] = {}
    for node_id in sorted(api, key=lambda n: (depth[n], int(n))):
        info = object_info[api[node_id]["class_type"]]
        outputs[node_id] = [{"name": name, "type": kind, "links": [], "slot_index": i}
                            for i, (name, kind) in enumerate(zip(info["output_name"], info["output"]))]
    for order, node_id in enumerate(sorted(api, key=lambda n: (depth[n], int(n)))):
        node = api[node_id]
        info = object_info[node["class_type"]]
        inputs, widgets = [], []
        for name, spec in _ordered_inputs(info):
            value = node["inputs"].get(name)
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
            if _is_widget(spec):
                widgets.append(options.get("default") if _is_link(value) or value is None else value)
                if options.get("control_after_generate"):
                    widgets.append("fixed")
                if not _is_link(value):
                    continue
            entry = {"name": name, "type": kind, "link": None}
            if _is_widget(spec):
                entry["widget"] = {"name": name}
            if _is_link(value):
                link_id = len(links) + 1
                src, slot = value
                links.append([link_id, int(src), slot, int(node_id), len(inputs), outputs[src][slot]["type"]])
                outputs[src][slot]["links"].append(link_id)
                entry["link"] = link_id
            inputs.append(entry)
        height = 60 + SLOT_HEIGHT * (len(inputs) + len(widgets) + len(outputs[node_id]))
        top = rows.get(depth[node_id], 40)
        rows[depth[node_id]] = top + height + ROW_GAP
        nodes.append({
            "id": int(node_id), "type": node["class_type"],
            "pos": [40 + depth[node_id] * COLUMN_WIDTH, top], "size": [NODE_WIDTH, height],
            "flags": {}, "order": order, "mode": 0, "inputs": inputs, "outputs": outputs[node_id],
            "properties": {"Node name for S&R": node["class_type"]}, "widgets_values": widgets,
            **({"title": node["_meta"]["title"]} if node.get("_meta", {}).get("title") else {}),
        })
    return {
        "last_node_id": max(int(n) for n in api), "last_link_id": len(links),
        "nodes": nodes, "links": links, "groups": [], "config": {},
        "extra": {"ds": {"scale": 0.8, "offset": [0, 0]}}, "version": 0.4,
    }


def regenerate(object_info: dict, directory: Path = WORKFLOWS) -> list[Path]:
    written = []
    for api_file in sorted(directory.glob("*_api.json")):
        ui_file = api_file.with_name(api_file.name.replace("_api.json", ".json"))
        ui = to_ui(json.loads(api_file.read_text()), object_info)
        ui_file.write_text(json.dumps(ui, indent=1) + "\n")
        written.append(ui_file)
    return written


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from scripts.comfy_server import ComfyServer

    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        for path in regenerate(server.object_info()):
            print(path.relative_to(ROOT))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
