"""The free-credit claim against the real store: one grant per canonical identity, in any
spelling and any organization, and claims stored before canonical forms existed (the
SHA-256 of the text as given) still recognized."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import pytest
from tollway.config import parse_config_text
from tollway.limits.credits import Credits
from tollway.limits.errors import CreditError
from tollway.limits.money import parse_usd

ENV = {"OPENAI_API_KEY": "x"}
CONFIG = """
upstreams:
  openai: {base_url: "http://127.0.0.1:9", api_key_env: OPENAI_API_KEY}
prices:
  m: {input: 1, output: 1}
organizations:
""" + "".join(f"  org{i}: {{billing: {{mode: prepaid}}}}\n" for i in range(8))

SPELLINGS = {
    "phone": ["+1 (555) 010-9999", "15550109999", "001-555-010-9999", "+1.555.010.9999"],
    "email": ["Jane.Doe+free@Gmail.com", "janedoe@googlemail.com", " JANEDOE@gmail.com "],
    "digest": ["ABCDEF0123456789ABCDEF0123456789", "abcdef0123456789abcdef0123456789"],
}
DAY = timedelta(days=1)


@pytest.fixture
def credits(store, clock) -> Credits:
    cfg = parse_config_text(CONFIG, "test.yaml", ENV)
    return Credits(store, clock, lambda: cfg)


@pytest.mark.parametrize("kind", sorted(SPELLINGS))
async def test_respelling_an_identity_claims_nothing(credits, store, kind) -> None:
    first, *others = SPELLINGS[kind]
    await credits.grant("org0", parse_usd("5"), DAY, identity=first)
    for i, spelling in enumerate(others, start=1):
        with pytest.raises(CreditError, match="already received"):
            await credits.grant(f"org{i}", parse_usd("5"), DAY, identity=spelling)
        assert (await credits.balance(f"org{i}")).available == 0


async def test_a_claim_made_before_canonical_forms_is_still_recognized(credits, store) -> None:
    # What the old code stored: the SHA-256 of the identity exactly as given.
    old = " +1 555 010 9999"
    digest = hashlib.sha256(old.encode()).hexdigest()
    await store.client.set(store.keys.promo_identity(digest), "org0 lot_old")
    with pytest.raises(CreditError, match="already received"):
        await credits.grant("org1", parse_usd("5"), DAY, identity=old)
    # Found once, the old claim now sits under the canonical key: any spelling finds it.
    with pytest.raises(CreditError, match="already received"):
        await credits.grant("org2", parse_usd("5"), DAY, identity="+15550109999")
    assert (await credits.balance("org1")).available == 0
    assert (await credits.balance("org2")).available == 0


async def test_different_people_still_get_their_grant(credits) -> None:
    await credits.grant("org0", parse_usd("1"), DAY, identity="john.smith@example.com")
    await credits.grant("org1", parse_usd("1"), DAY, identity="johnsmith@example.com")
    assert (await credits.balance("org1")).available == parse_usd("1")
