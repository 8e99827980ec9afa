"""Schemathesis against the admin API's own OpenAPI document, on a served Stack: no input
the document allows (and none it forbids) gets a 5xx, every status answered is one the
document lists, and every answer has a documented content type.

Bounded: a few examples per operation (the whole run takes well under a minute). The
organization, user, workspace and tier path parameters are narrowed to names of the test
config plus one unknown name, so that the generated calls reach the handlers instead of
stopping at "unknown organization".
"""

from __future__ import annotations

import copy
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    status_code_conformance,
)
from tollway.proxy.admin.app import routes
from tollway.proxy.admin.openapi import document

from tests.e2e.test_admin import AUTH, ORGS, TOKEN

NAMES = {
    "org": ["acme", "other", "ghost"],
    "user": ["alice", "bob", "nobody"],
    "workspace": ["cc", "nowhere"],
    "tier": ["standard", "premium", "gold"],
}


def narrowed(doc: dict[str, Any]) -> dict[str, Any]:
    doc = copy.deepcopy(doc)
    for ops in doc["paths"].values():
        for op in ops.values():
            for p in op["parameters"]:
                if p["in"] == "path" and p["name"] in NAMES:
                    p["schema"] = {"enum": NAMES[p["name"]]}
    return doc


@pytest.fixture
def served(stack_factory, monkeypatch):
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", TOKEN)
    stack = stack_factory(ORGS)
    stack.key("acme", user="alice")
    return stack


# The document as served (the test below also checks the served one is the same), built
# at import so that pytest collects one test per operation.
DOC = document(routes(), "test")
schema = schemathesis.openapi.from_dict(narrowed(DOC))


def test_served_document_is_the_one_fuzzed(served):
    doc = requests.get(served.url + "/admin/openapi.json", headers=AUTH, timeout=10).json()
    assert doc["paths"] == DOC["paths"]


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case, served):
    case.call_and_validate(
        base_url=served.url,
        headers=AUTH,
        checks=[not_a_server_error, status_code_conformance, content_type_conformance],
    )
