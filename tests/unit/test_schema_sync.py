"""schemas/*.json and docs/contract.md match the models (regenerate: leadcycle schema --write)."""

from __future__ import annotations

import json
from pathlib import Path

from events.schema import contract_tables, json_schemas, render_schema, splice_contract
from events.topics import CONTRACT, DEFAULT_PREFIX

ROOT = Path(__file__).resolve().parents[2]


def test_every_topic_has_a_committed_schema_equal_to_the_model() -> None:
    generated = json_schemas()
    assert sorted(generated) == sorted(f"{DEFAULT_PREFIX}{s}.json" for s in CONTRACT)
    on_disk = {p.name for p in (ROOT / "schemas").glob("*.json")}
    assert on_disk == set(generated), "stale or missing files in schemas/"
    for name, schema in generated.items():
        committed = (ROOT / "schemas" / name).read_text()
        assert committed == render_schema(schema), f"schemas/{name} is out of date"
        assert (
            json.loads(committed)["title"]
            == CONTRACT[name.removeprefix(DEFAULT_PREFIX).removesuffix(".json")][0].__name__
        )


def test_contract_doc_tables_match_the_models() -> None:
    doc = (ROOT / "docs" / "contract.md").read_text()
    assert splice_contract(doc) == doc, "docs/contract.md is out of date"
    for suffix, (model, _, _) in CONTRACT.items():
        assert f"`{DEFAULT_PREFIX}{suffix}`" in contract_tables()
        for field in model.model_fields:
            assert f"| `{field}` |" in doc, f"{model.__name__}.{field} missing from the doc"
