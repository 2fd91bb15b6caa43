"""docs/openapi.json is the generated document, and it documents every route the server has."""

from __future__ import annotations

import json
from unittest.mock import MagicMock

from infra.settings import Settings
from workers.web.auth import SalesTokens, WriteKeys
from workers.web.context import WebContext
from workers.web.openapi import DOC_PATH, build_openapi, render
from workers.web.server import build_app


def test_checked_in_document_is_current() -> None:
    assert DOC_PATH.read_text() == render(), "run: python -m workers.web.openapi --write"


def test_every_route_is_documented() -> None:
    ctx = WebContext(
        settings=Settings(),
        producer=MagicMock(),
        write_keys=WriteKeys({}),
        sales=SalesTokens({}, None),
        timezone="UTC",
        pool=lambda: None,
    )
    routes = {
        (r.resource.canonical, r.method.lower())
        for r in build_app(ctx).router.routes()
        if r.resource is not None and r.method not in ("HEAD", "OPTIONS")
    }
    documented = {
        (path, method) for path, item in build_openapi()["paths"].items() for method in item
    }
    assert routes == documented
    assert json.loads(render())["openapi"].startswith("3.1")
