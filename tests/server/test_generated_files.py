"""Files generated from the live node schemas must match what is committed."""

from __future__ import annotations

import json

import pytest

from scripts import node_reference, ui_workflow
from scripts.comfy_server import PACK_NAME, ROOT

pytestmark = pytest.mark.server


def test_readme_node_reference_is_current(comfy):
    readme = (ROOT / "README.md").read_text()
    expected = node_reference.replace_block(readme, node_reference.render(comfy.object_info(), PACK_NAME))
    assert readme == expected, "README's node reference is stale: run .venv/bin/python scripts/node_reference.py"


@pytest.mark.parametrize("api_file", sorted((ROOT / "workflows").glob("*_api.json")), ids=lambda p: p.name)
def test_ui_workflow_matches_its_api_source(comfy, api_file):
    ui_file = api_file.with_name(api_file.name.replace("_api.json", ".json"))
    assert ui_file.exists(), f"{ui_file.name} is missing: run .venv/bin/python scripts/ui_workflow.py"
    expected = ui_workflow.to_ui(json.loads(api_file.read_text()), comfy.object_info())
    assert json.loads(ui_file.read_text()) == expected, f"{ui_file.name} is stale: run scripts/ui_workflow.py"
