"""Render the README's node reference from the nodes' own schemas (so it cannot drift).

    .venv/bin/python scripts/node_reference.py     # rewrite the block in README.md

The block sits between the two markers below; a server test regenerates it from the live
``/object_info`` and fails when README.md is out of date.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
START, END = "<!-- node-reference:start -->", "<!-- node-reference:end -->"


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _type_name(spec: list) -> str:
    kind = spec[0]
    return "choice" if isinstance(kind, list) else kind


def _default(spec: list) -> str:
    # Only declared defaults: a file list's first entry depends on what is installed.
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return f"`{options['default']!r}`" if "default" in options else ""


def render(object_info: dict, pack_module_suffix: str) -> str:
    ours = {k: v for k, v in object_info.items() if v.get("python_module", "").endswith(pack_module_suffix)}
    lines = []
    for node_id in sorted(ours, key=lambda k: (ours[k]["display_name"], k)):
        info = ours[node_id]
        lines += [f"### {info['display_name']} (`{node_id}`)", ""]
        if info.get("description"):
            lines += [info["description"], ""]
        lines += ["| input | type | default | what it does |", "|---|---|---|---|"]
        for section in ("required", "optional"):
            order = (info.get("input_order") or {}).get(section) or list(info["input"].get(section, {}))
            for name in order:
                spec = info["input"][section][name]
                options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
                label = name if section == "required" else f"{name} (optional)"
                lines.append(f"| {label} | {_type_name(spec)} | {_default(spec)} | {_cell(options.get('tooltip', ''))} |")
        outputs = ", ".join(f"`{n}` ({t})" for n, t in zip(info["output_name"], info["output"]))
        lines += ["", f"Outputs: {outputs or 'none (output node)'}", ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(readme_text: str, block: str) -> str:
    head, rest = readme_text.split(START, 1)
    _, tail = rest.split(END, 1)
    return f"{head}{START}\n{block}{END}{tail}"


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from scripts.comfy_server import PACK_NAME, ComfyServer

    with tempfile.TemporaryDirectory() as tmp, ComfyServer(Path(tmp)) as server:
        block = render(server.object_info(), PACK_NAME)
    README.write_text(replace_block(README.read_text(), block))
    print(f"updated the node reference in {README.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
