"""The OpenAPI document of the worker's HTTP API, generated from the wire models.

Served at /openapi.json and checked in as docs/openapi.json; a test fails when they drift.
Regenerate with ``python -m workers.web.openapi --write``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from pydantic import BaseModel, TypeAdapter

from events import BehaviourTracked, OutcomeRecorded
from infra.calllist import CallListEntry

DOC_PATH = Path(__file__).resolve().parents[2] / "docs" / "openapi.json"
REF = "#/components/schemas/{model}"
_KEYS = (
    "a site's browser key (public, LEADCYCLE_HTTP_WRITE_KEYS) or server key (secret, "
    "LEADCYCLE_HTTP_SERVER_KEYS); see docs/http.md, Trust model"
)


def _hoist(schema: dict[str, Any], into: dict[str, Any]) -> dict[str, Any]:
    into.update(schema.pop("$defs", {}))
    return schema


def _optional(model: type[BaseModel], name: str, into: dict[str, Any], *fields: str) -> None:
    """``model``'s schema with ``fields`` optional: the server fills them in when absent."""
    schema = _hoist(model.model_json_schema(ref_template=REF), into)
    schema["required"] = [f for f in schema.get("required", []) if f not in fields]
    schema["title"] = name
    into[name] = schema


def _error(description: str, *, retry_after: str | None = None) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }
    if retry_after is not None:
        response["headers"] = {
            "Retry-After": {"description": retry_after, "schema": {"type": "integer"}}
        }
    return response


#: Every sales route: over LEADCYCLE_SALES_RATE_LIMIT, or locked after bad credentials.
SALES_429 = _error(
    "over LEADCYCLE_SALES_RATE_LIMIT for this client, or too many bad tokens or sign-ins "
    "from it (LEADCYCLE_SALES_AUTH_FAILURES)",
    retry_after="whole seconds until the client's next request is taken",
)


def _json(ref: str, description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}},
    }


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


def _track_fields(schema: dict[str, Any]) -> None:
    """A collector item: the event, without the collector's own stamp, with the request fields
    the collector reads and takes out (docs/http.md, "Trust model" and "Device clocks")."""
    props = schema["properties"]
    props.pop("collected", None)  # set by the collector; an item carrying it is rejected
    props["lead_id"]["description"] = (
        "server keys only: an item naming a lead with a browser key is rejected"
    )
    props["sent_at"] = {
        "type": "string",
        "format": "date-time",
        "description": "the device's clock when it sent the request; with it, occurred_at "
        "(the device's creation time) is corrected: received_at - (sent_at - occurred_at)",
    }
    props["email_signature"] = {
        "type": "string",
        "maxLength": 128,
        "description": "hex HMAC-SHA256 of the lower-cased email keyed with the site's server "
        "key: lets a browser identify link to a known lead and a browser unsubscribe apply",
    }


def _schemas() -> dict[str, Any]:
    schemas: dict[str, Any] = {}
    _optional(BehaviourTracked, "TrackEvent", schemas, "event_id", "occurred_at")
    _track_fields(schemas["TrackEvent"])
    schemas.pop("Collected", None)  # only the topic's messages carry it
    _optional(OutcomeRecorded, "OutcomeIn", schemas, "event_id", "occurred_at")
    entry = TypeAdapter(CallListEntry).json_schema(ref_template=REF, mode="serialization")
    schemas["CallListEntry"] = _hoist(entry, schemas)
    schemas["Error"] = {
        "type": "object",
        "properties": {"error": {"type": "string"}},
        "required": ["error"],
    }
    schemas["TrackBatch"] = {
        "type": "object",
        "properties": {
            "batch": {
                "type": "array",
                "minItems": 1,
                "items": {"$ref": REF.format(model="TrackEvent")},
            }
        },
        "required": ["batch"],
        "additionalProperties": False,
    }
    schemas["ItemResult"] = {
        "type": "object",
        "properties": {
            "index": {"type": "integer"},
            # bot: published and logged (disposition bot), never scored
            "status": {"enum": ["accepted", "bot", "rejected"]},
            "event_id": {"type": "string"},
            "reason": {"type": "string"},
            "field": {"type": ["string", "null"]},
            "error": {"type": "string"},
        },
        "required": ["index", "status"],
    }
    schemas["TrackResult"] = {
        "type": "object",
        "properties": {
            "accepted": {"type": "integer"},
            "bots": {"type": "integer"},
            "rejected": {"type": "integer"},
            "results": {"type": "array", "items": {"$ref": REF.format(model="ItemResult")}},
        },
        "required": ["accepted", "bots", "rejected", "results"],
    }
    return schemas


def _paths() -> dict[str, Any]:
    sales: list[dict[str, list[str]]] = [{"salesToken": []}]
    return {
        "/v1/track": {
            "post": {
                "summary": "Collect tracker events (one, or a batch) for leadcycle.events",
                "security": [{"writeKeyHeader": []}, {"writeKeyQuery": []}],
                "requestBody": {
                    "required": True,
                    "content": {
                        media: {
                            "schema": {
                                "oneOf": [
                                    {"$ref": REF.format(model="TrackEvent")},
                                    {"$ref": REF.format(model="TrackBatch")},
                                ]
                            }
                        }
                        # text/plain: what navigator.sendBeacon sends without a CORS preflight
                        for media in ("application/json", "text/plain")
                    },
                },
                "responses": {
                    "202": _json(
                        "TrackResult", "handed to Kafka (scored or, as bots, logged); per item"
                    ),
                    "400": _error("malformed JSON or not an event / batch"),
                    "401": _error("missing or unknown write key (browser or server)"),
                    "403": _error("Origin not allowed"),
                    "413": _error("body or batch over the limit"),
                    "422": _json("TrackResult", "every item rejected (all dead-lettered)"),
                    "429": _error(
                        "over LEADCYCLE_HTTP_RATE_LIMIT for this site and client IP",
                        retry_after="whole seconds until the client's next request is taken",
                    ),
                    "503": _error(
                        "the broker did not acknowledge: nothing accepted, retry",
                        retry_after="seconds to wait before retrying (5)",
                    ),
                },
            }
        },
        "/v1/tracker.js": {
            "get": {
                "summary": "The JS tracker",
                "responses": {
                    "200": {"description": "JavaScript", "content": {"text/javascript": {}}}
                },
            }
        },
        "/v1/call-lists": {
            "get": {
                "summary": "Open follow-ups by due time then priority (as `leadcycle calllist`)",
                "security": sales,
                "parameters": [
                    _query("rep", "a rep id; default: the token's rep (admins: all reps)"),
                    _query("date", "due by the end of this day, overdue included", format="date"),
                    _query("limit", "at most this many rows (1-10000)", pattern="^[0-9]+$"),
                    _query(
                        "format",
                        "json (default) or csv; or send Accept: text/csv",
                        enum=["json", "csv"],
                    ),
                ],
                "responses": {
                    "200": {
                        "description": "the call list (CSV: a download, "
                        "Content-Disposition: attachment)",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "array",
                                    "items": {"$ref": REF.format(model="CallListEntry")},
                                }
                            },
                            "text/csv": {"schema": {"type": "string"}},
                        },
                    },
                    "400": _error("bad rep, date, limit or format, or a header that is not UTF-8"),
                    "401": _error("missing or unknown bearer token"),
                    "403": _error("a rep token asked for another rep"),
                    "429": SALES_429,
                    "503": _error("the database is not connected yet"),
                },
            }
        },
        "/v1/outcomes": {
            "post": {
                "summary": "Record a sales outcome (published to leadcycle.outcomes)",
                "security": sales,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": {"$ref": REF.format(model="OutcomeIn")}}
                    },
                },
                "responses": {
                    "202": {"description": "handed to Kafka", "content": {"application/json": {}}},
                    "400": _error("malformed JSON"),
                    "401": _error("missing or unknown bearer token"),
                    "403": _error("a rep token: another rep, or a lead not on the rep's list"),
                    "413": _error("body over LEADCYCLE_MAX_MESSAGE_BYTES"),
                    "422": _error("not a valid outcome (the error names the field)"),
                    "429": SALES_429,
                    "503": _error("the broker did not acknowledge: retry"),
                },
            }
        },
        "/call-list": {
            "get": {
                "summary": "The call-list page for a rep (HTML; bearer or sign-in cookie)",
                "parameters": [_query("rep", "a rep id")],
                "responses": {
                    "200": {"description": "the page", "content": {"text/html": {}}},
                    "400": _error("rep is not a rep id"),
                    "401": {"description": "sign-in form", "content": {"text/html": {}}},
                    "403": _error("a rep token asked for another rep"),
                    "429": SALES_429,
                },
            }
        },
        "/call-list/login": {
            "post": {
                "summary": "Sign in to the page: sets a signed session cookie (not the token)",
                "responses": {
                    "303": {"description": "to the page"},
                    "400": _error("not a readable form"),
                    "401": {"description": "unknown token"},
                    "403": _error("Origin is not this server's (or LEADCYCLE_SALES_ORIGINS)"),
                    "429": SALES_429,
                },
            }
        },
        "/call-list/outcome": {
            "post": {
                "summary": "An outcome button on the page (form post, then back to the page)",
                "responses": {
                    "303": {"description": "recorded; back to the page"},
                    "400": _error("not a readable form"),
                    "401": _error("no or no valid session"),
                    "403": _error("Origin is not this server's, or not this rep's lead"),
                    "429": SALES_429,
                },
            }
        },
        "/call-list/logout": {
            "post": {
                "summary": "Sign out of the page: the session cookie is cleared",
                "responses": {
                    "303": {"description": "back to the sign-in form"},
                    "403": _error("Origin is not this server's (or LEADCYCLE_SALES_ORIGINS)"),
                },
            }
        },
        "/healthz": {
            "get": {"summary": "The process is up", "responses": {"200": {"description": "up"}}}
        },
        "/readyz": {
            "get": {
                "summary": "Broker and database reachable",
                "responses": {"200": {"description": "ready"}, "503": {"description": "not ready"}},
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1"}},
            }
        },
    }


def build_openapi() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "leadcycle worker HTTP API",
            "version": "1",
            "description": "Collector, tracker, call lists and outcomes. See docs/http.md.",
        },
        "paths": _paths(),
        "components": {
            "schemas": _schemas(),
            "securitySchemes": {
                "writeKeyHeader": {
                    "type": "apiKey",
                    "in": "header",
                    "name": "X-Leadcycle-Key",
                    "description": _KEYS,
                },
                "writeKeyQuery": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "key",
                    "description": _KEYS,
                },
                "salesToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def render() -> str:
    return json.dumps(build_openapi(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


if __name__ == "__main__":
    if sys.argv[1:] == ["--write"]:
        DOC_PATH.write_text(render())
        print(f"wrote {DOC_PATH}")
    else:
        sys.stdout.write(render())
