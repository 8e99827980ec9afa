"""Canonical identities: every spelling of one phone number, e-mail address or digest is
one identity, so re-spelling it never claims a free grant twice."""

from __future__ import annotations

import pytest
from tollway.limits.identity import canonical_identity, legacy_forms

# "+15550109999" typed in full-width characters (NFKC folds them).
FULL_WIDTH = "".join(chr(0xFF00 + ord(c) - 0x20) for c in "+15550109999")
SAME = [
    # phone numbers: E.164 digits, whatever the punctuation, the 00 prefix or full-width
    ["+1 (555) 010-9999", "+15550109999", "1-555-010-9999", "001 555 010 9999",
     "+1.555.010.9999", " +1 555 0109999 ", FULL_WIDTH],
    # e-mail: trimmed, case-folded
    ["Alice@Example.com", " alice@example.com ", "ALICE@EXAMPLE.COM"],
    # Gmail: dots and +tags are aliases; googlemail.com is gmail.com
    ["john.smith@gmail.com", "johnsmith@gmail.com", "J.O.H.N.Smith+promo@Gmail.com",
     "john.smith+a+b@googlemail.com"],
    # sub-addressing documented by Outlook, iCloud, Fastmail, Proton
    ["bob@outlook.com", "bob+free@outlook.com", "Bob+x@Outlook.com"],
    ["carol@proton.me", "carol+tollway@proton.me"],
    # hex digests are case-free
    ["9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08",
     "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
]  # fmt: skip

DIFFERENT = [
    ("john.smith@example.com", "johnsmith@example.com"),  # dots only fold where documented
    ("bob+x@example.com", "bob@example.com"),  # +tags too
    ("+15550109999", "+15550109998"),
    ("5550109999", "+15550109999"),  # no country code known: not guessed
    ("alice@gmail.com", "alice@gmail.co"),
]


@pytest.mark.parametrize("spellings", SAME, ids=lambda s: s[0])
def test_spellings_of_one_identity_are_one(spellings) -> None:
    assert len({canonical_identity(s) for s in spellings}) == 1


@pytest.mark.parametrize(("a", "b"), DIFFERENT)
def test_different_identities_stay_different(a, b) -> None:
    assert canonical_identity(a) != canonical_identity(b)


def test_canonical_forms() -> None:
    assert canonical_identity("+44 (0)20 7946 0958") == "+442079460958"
    assert canonical_identity("0044 20 7946 0958") == "+442079460958"
    assert canonical_identity("J.Smith+x@GoogleMail.com") == "jsmith@gmail.com"
    assert canonical_identity("  Straße  ") == "strasse"
    assert canonical_identity("+tag@gmail.com") == "+tag@gmail.com"  # no mailbox: as given
    with pytest.raises(ValueError):
        canonical_identity("   ")


def test_legacy_forms_are_the_old_spellings() -> None:
    assert legacy_forms(" +1 555 010 9999") == [" +1 555 010 9999", "+1 555 010 9999"]
    assert legacy_forms("alice@example.com") == []  # already canonical
