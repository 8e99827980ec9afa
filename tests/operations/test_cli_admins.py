"""`tollway admins create | list | revoke` against the store a running stack uses: the
credential is printed once, works on the admin API for its organization only, is listed
without its secret, and is refused from the request after its revocation."""

from __future__ import annotations

import json

import pytest
import requests
from tollway.proxy.cli.main import main

from tests.support.stack import ENV

ORGS = """
organizations:
  acme: {billing: {mode: prepaid}}
  beta: {}
"""


@pytest.fixture
def stack(stack_factory, monkeypatch):
    stack = stack_factory(ORGS)
    monkeypatch.setenv("REDIS_URL", stack.redis_url)
    monkeypatch.setenv("TOLLWAY_CONFIG", str(stack.config_path))
    monkeypatch.setenv("TOLLWAY_ADMIN_TOKEN", "operator-token-" + "x" * 30)
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    return stack


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def get(stack, path: str, secret: str) -> requests.Response:
    return requests.get(stack.url + path, headers={"authorization": f"Bearer {secret}"}, timeout=10)


def test_create_list_use_revoke(stack, capsys):
    code, out, err = run(capsys, "admins", "create", "--org", "acme", "--role", "billing",
                         "--name", "finance", "--format", "json")  # fmt: skip
    assert code == 0, err
    made = json.loads(out)
    secret = made["credential"]
    assert secret.startswith("twa-") and made["role"] == "billing" and made["org"] == "acme"
    assert get(stack, "/admin/orgs", secret).json()["orgs"][0]["org"] == "acme"
    assert [o["org"] for o in get(stack, "/admin/orgs", secret).json()["orgs"]] == ["acme"]
    assert get(stack, "/admin/orgs/beta/credits", secret).status_code == 403

    code, out, _ = run(capsys, "admins", "list", "--org", "acme")
    assert code == 0
    assert made["id"] in out and "billing" in out and "finance" in out
    assert secret not in out and secret[:8] in out  # the hint, never the secret
    code, out, _ = run(capsys, "admins", "list", "--org", "acme", "--format", "json")
    assert [c["id"] for c in json.loads(out)] == [made["id"]]
    assert "credential" not in json.loads(out)[0]

    code, out, _ = run(capsys, "admins", "revoke", made["id"])
    assert code == 0 and "revoked" in out
    assert get(stack, "/admin/orgs", secret).status_code == 401
    code, out, _ = run(capsys, "admins", "list", "--org", "acme", "--format", "json")
    assert json.loads(out)[0]["revoked"] is True


def test_table_output_and_refusals(stack, capsys):
    code, out, err = run(capsys, "admins", "create", "--org", "acme", "--role", "owner")
    assert code == 0
    assert "credential:  twa-" in out and "not shown again" in err
    code, _, err = run(capsys, "admins", "create", "--org", "nowhere", "--role", "owner")
    assert code == 2 and "unknown organization" in err
    with pytest.raises(SystemExit):
        run(capsys, "admins", "create", "--org", "acme", "--role", "operator")
    code, _, err = run(capsys, "admins", "revoke", "adm_nothing")
    assert code == 1 and "no credential" in err
