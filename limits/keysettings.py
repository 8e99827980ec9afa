"""A key's settings as operators write them, parsed once for every way of giving them:
`tollway keys create` and `keys set`, the admin API's ``POST /orgs/{org}/keys`` and
``PATCH /admin/keys/{id}``. Creating a key and editing it go through `record_fields`, so
they share the same bounds and the same errors.

A setting is named as in the admin API's JSON (``input_tpm``); the CLI option is the same
name with dashes (``--input-tpm``). `record_fields` turns the settings given into the key
record's hash fields (`tollway.limits.keyrecord`); a setting given as None is cleared (the
key then has none of it: no limit, no expiry, every model). On the command line a word
clears it (`CLEAR_WORDS`: ``--rpm none``, ``--expires-in never``, ``--models all``).

Bounds: per-minute limits as `keyrecord.parse_limit`; budgets are USD with at most 6
decimals and at most `MAX_AMOUNT` (1e9 USD), a session budget more than 0 (a key's budget
may be 0: the key is paused); ``max_in_flight`` a whole number >= 1; a name at most 200
characters; models and tags as `keyrecord.parse_list`, at least one model pattern.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal
from typing import Any

from tollway.limits.durations import parse_ms
from tollway.limits.keyrecord import LIMITS, KeySettings, parse_limit, parse_list
from tollway.limits.money import parse_usd
from tollway.limits.seats import MAX_AMOUNT
from tollway.limits.windows import PERIODS

SETTINGS = (
    "name",
    "expires_in",
    "models",
    "tags",
    *LIMITS,
    "budget",
    "budget_period",
    "session_budget",
    "max_in_flight",
)
# The word that clears a setting on the command line (the admin API takes null).
CLEAR_WORDS = {
    "expires_in": "never",
    "models": "all",
    **{n: "none" for n in (*LIMITS, "budget", "session_budget", "max_in_flight")},
}
NAME_MAX = 200


class SettingError(ValueError):
    """A setting that is not valid: `setting` names it, `problem` says why."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


def usd_amount(value: Any, *, positive: bool = False) -> int:
    """A budget in micro-USD: USD with at most 6 decimals (text or a number, parsed
    exactly), at most `MAX_AMOUNT`, and more than 0 when `positive`. ValueError saying
    why otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"expected an amount in USD, got {type(value).__name__}")
    micro = parse_usd(value.strip() if isinstance(value, str) else value)
    if micro > MAX_AMOUNT:
        raise ValueError(f"at most {MAX_AMOUNT // 1_000_000} USD")
    if positive and micro == 0:
        raise ValueError("must be more than 0 USD")
    return micro


def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {type(value).__name__}")
    return value


def _name(value: Any, now_ms: int) -> dict[str, str]:
    name = "" if value is None else _text(value)
    if len(name) > NAME_MAX:
        raise ValueError(f"at most {NAME_MAX} characters")
    return {"name": name}


def _expires(value: Any, now_ms: int) -> dict[str, str]:
    return {"expires": "" if value is None else str(now_ms + parse_ms(_text(value)))}


def _models(value: Any, now_ms: int) -> dict[str, str]:
    if value is None:
        return {"models": ""}
    models = parse_list(value, "models")
    if not models:
        raise ValueError("give at least one pattern (without a list, every model is allowed)")
    return {"models": ",".join(models)}


def _tags(value: Any, now_ms: int) -> dict[str, str]:
    tags = parse_list(value, "tags")
    if len(tags) > 50:
        raise ValueError("at most 50 tags")
    return {"tags": ",".join(tags)}


def _limit(name: str) -> Callable[[Any, int], dict[str, str]]:
    def parse(value: Any, now_ms: int) -> dict[str, str]:
        return {name: "" if value is None else str(parse_limit(name, value))}

    return parse


def _budget(value: Any, now_ms: int) -> dict[str, str]:
    return {"budget": "" if value is None else str(usd_amount(value))}


def _period(value: Any, now_ms: int) -> dict[str, str]:
    period = "month" if value is None else value
    if period not in PERIODS:
        raise ValueError(f"expected one of {', '.join(PERIODS)}, got {value!r}")
    return {"budget_period": period}


def _session_budget(value: Any, now_ms: int) -> dict[str, str]:
    return {"session_budget": "" if value is None else str(usd_amount(value, positive=True))}


def _max_in_flight(value: Any, now_ms: int) -> dict[str, str]:
    if value is None:
        return {"max_in_flight": ""}
    text = str(value).strip() if isinstance(value, str | int) else ""
    if isinstance(value, bool) or not text.isdigit() or int(text) < 1 or len(text) > 9:
        raise ValueError(f"expected a whole number >= 1, got {value!r}")
    return {"max_in_flight": str(int(text))}


_PARSERS: dict[str, Callable[[Any, int], dict[str, str]]] = {
    "name": _name,
    "expires_in": _expires,
    "models": _models,
    "tags": _tags,
    **{n: _limit(n) for n in LIMITS},
    "budget": _budget,
    "budget_period": _period,
    "session_budget": _session_budget,
    "max_in_flight": _max_in_flight,
}


def record_fields(given: Mapping[str, Any], now_ms: int) -> dict[str, str]:
    """The key record's hash fields for the settings in `given` (setting name -> value as
    written; None clears it). An expiry is `now_ms` plus the duration. `SettingError`
    names the first setting that is not valid."""
    out: dict[str, str] = {}
    for setting, value in given.items():
        parse = _PARSERS.get(setting)
        if parse is None:
            raise SettingError(setting, "not a setting of a key")
        try:
            out.update(parse(value, now_ms))
        except ValueError as e:
            raise SettingError(setting, str(e).removeprefix(f"{setting}: ")) from None
    return out


def settings(given: Mapping[str, Any], now_ms: int) -> KeySettings:
    """The settings of a new key from what was given (`record_fields`)."""
    return KeySettings.from_fields(record_fields(given, now_ms))
