"""JSON Schema and the field tables of docs/contract.md, generated from the models."""

from __future__ import annotations

import json
from typing import Any

from pydantic import BaseModel

from events.topics import CONTRACT, DEFAULT_PREFIX

BEGIN = "<!-- generated: leadcycle schema --write (do not edit by hand) -->"
END = "<!-- end generated -->"


def json_schemas() -> dict[str, dict[str, Any]]:
    """File name -> JSON Schema for every topic of the contract (default prefix)."""
    out = {}
    for suffix, (model, direction, description) in CONTRACT.items():
        schema = model.model_json_schema()
        schema["$id"] = f"https://leadcycle.invalid/schemas/{DEFAULT_PREFIX}{suffix}.json"
        schema["description"] = f"{direction} topic {DEFAULT_PREFIX}{suffix}: {description}"
        out[f"{DEFAULT_PREFIX}{suffix}.json"] = schema
    return out


def render_schema(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def _type_of(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "$ref" in prop:
        return str(prop["$ref"]).rsplit("/", 1)[-1]
    if "anyOf" in prop:
        kinds = [_type_of(p, defs) for p in prop["anyOf"]]
        return " or ".join(k for k in kinds if k != "null") + (
            " or null" if "null" in kinds else ""
        )
    if "enum" in prop:
        return "one of " + ", ".join(f"`{v}`" for v in prop["enum"])
    if "const" in prop:
        return f"`{prop['const']}`"
    kind = str(prop.get("type", "any"))
    if prop.get("format"):
        kind += f" ({prop['format']})"
    if kind == "array" and "items" in prop:
        kind = f"array of {_type_of(prop['items'], defs)}"
    return kind


def _limits(prop: dict[str, Any]) -> str:
    for alt in prop.get("anyOf", [prop]):
        bits = []
        for key, label in (("maxLength", "≤ {} chars"), ("minimum", "≥ {}"), ("maximum", "≤ {}")):
            if key in alt:
                bits.append(label.format(alt[key]))
        if bits:
            return ", ".join(bits)
    return ""


def field_table(model: type[BaseModel]) -> str:
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    required = set(schema.get("required", []))
    lines = ["| field | type | required | limits | notes |", "|---|---|---|---|---|"]
    for name, prop in schema["properties"].items():
        lines.append(
            f"| `{name}` | {_type_of(prop, defs)} | {'yes' if name in required else 'no'} "
            f"| {_limits(prop)} | {prop.get('description', '')} |"
        )
    return "\n".join(lines)


def contract_tables() -> str:
    """The generated part of docs/contract.md: one field table per topic."""
    parts = [BEGIN]
    for suffix, (model, direction, description) in CONTRACT.items():
        doc = (model.__doc__ or "").strip().splitlines()[0]
        parts += [
            "",
            f"### `{DEFAULT_PREFIX}{suffix}` ({direction}): {description}",
            "",
            f"Model `{model.__name__}`: {doc}",
            "",
            field_table(model),
        ]
        for sub in _nested_models(model):
            sub_doc = (sub.__doc__ or "").strip().splitlines()[0]
            parts += ["", f"`{sub.__name__}`: {sub_doc}", "", field_table(sub)]
    parts += ["", END]
    return "\n".join(parts) + "\n"


def _nested_models(model: type[BaseModel]) -> list[type[BaseModel]]:
    found = []
    for info in model.model_fields.values():
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                found.append(arg)
    return found


def splice_contract(doc: str) -> str:
    """``doc`` with its generated section replaced by the current tables."""
    if BEGIN not in doc or END not in doc:
        raise ValueError("docs/contract.md lacks the generated-section markers")
    head, rest = doc.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    return head + contract_tables().rstrip("\n") + tail
