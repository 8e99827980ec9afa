"""Value types of the config models: names, money, limits, secrets, and the error helper.

Shared by ``tollway.config.schema`` and ``tollway.config.pricing``; see the units in
``tollway.config.schema``'s docstring.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Annotated, Any, NoReturn, TypeVar
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    SecretStr,
    Strict,
    ValidationError,
    ValidationInfo,
    WithJsonSchema,
    WrapSerializer,
)
from pydantic_core import PydanticCustomError
from tollway.config.money import parse_usd

V = TypeVar("V")

# ---- value types -------------------------------------------------------------------------


def show(value: Any) -> str:
    """How a bad input value is quoted in an error message (never a whole mapping)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, int | Decimal | float):
        return str(value)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return type(value).__name__


def _name_check(noun: str, forbidden: str) -> Callable[[str], str]:
    """A validator refusing empty names and names with `forbidden` characters, whitespace
    or control characters."""
    listed = ", ".join(f"'{c}'" for c in forbidden)

    def check(value: str) -> str:
        # Names that look alike are one name: "café" typed with a combining accent or not.
        value = unicodedata.normalize("NFC", value)
        if not value:
            raise ValueError("name must not be empty")
        bad = (c in forbidden or c.isspace() or unicodedata.category(c)[0] == "C" for c in value)
        if any(bad):
            raise ValueError(
                f"invalid {noun} {value!r}: must not contain {listed}, whitespace or "
                "control characters"
            )
        return value

    return check


_check_name = _name_check("name", "{}:")


# Organization, workspace, user and tier names become parts of Redis keys.
Name = Annotated[
    str,
    Strict(),
    AfterValidator(_check_name),
    WithJsonSchema({"type": "string", "pattern": r"^[^{}:\s\x00-\x1f\x7f]+$"}),
]
FrozenMap = Annotated[
    Mapping[Name, V],
    AfterValidator(MappingProxyType),
    WrapSerializer(lambda value, handler: handler(dict(value))),
]


# Model names may contain ':' (fine-tuned "ft:gpt-4o-mini:org::id", Bedrock "...-v1:0"):
# they never sit inside a key's {org} hash tag, and report fields split on '|'.
check_model_name = _name_check("model name", "{}|")
ModelName = Annotated[
    str,
    Strict(),
    AfterValidator(check_model_name),
    WithJsonSchema({"type": "string", "pattern": r"^[^{}|\s\x00-\x1f\x7f]+$"}),
]
ModelMap = Annotated[
    Mapping[ModelName, V],
    AfterValidator(MappingProxyType),
    WrapSerializer(lambda value, handler: handler(dict(value))),
]


def empty_map() -> Mapping[str, Any]:
    return MappingProxyType({})


def integer(minimum: int, maximum: int | None = None) -> Any:
    def check(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer, got {show(value)}")
        if maximum is not None and not minimum <= value <= maximum:
            raise ValueError(f"must be between {minimum} and {maximum}")
        if value < minimum:
            raise ValueError("must not be negative" if minimum == 0 else f"must be >= {minimum}")
        return value

    return BeforeValidator(check)


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float):
        raise ValueError(f"expected a number, got {show(value)}")
    if not value > 0:
        raise ValueError("must be greater than 0")
    return float(value)


def _money(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"expected an amount in USD, got {show(value)}")
    return parse_usd(value)


def _cap(value: Any) -> int | None:
    if value is None or value == "unlimited":
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        raise ValueError(f"expected an amount in USD or 'unlimited', got {show(value)}")
    return parse_usd(value)


def _rate(value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        raise ValueError(f"expected a number, got {show(value)}")
    value = Decimal(value)
    if not value.is_finite() or value < 0:
        raise ValueError("must not be negative")
    if value.as_tuple().exponent < -3:  # type: ignore[operator]  # finite: int exponent
        raise ValueError("more than 3 decimal places")
    try:
        return value.quantize(Decimal("0.001"))
    except InvalidOperation:
        raise ValueError("too large") from None


_USD_SCHEMA: dict[str, Any] = {
    "anyOf": [
        {"type": "number", "minimum": 0},
        {"type": "string", "pattern": r"^[0-9][0-9_]*(\.[0-9]{1,6})?$"},
    ],
    "description": "USD, at most 6 decimals",
}
Count = Annotated[int, integer(0), Field(ge=0)]
PositiveInt = Annotated[int, integer(1), Field(gt=0)]
Seconds = Annotated[float, BeforeValidator(_positive_number), Field(gt=0)]
Money = Annotated[int, PlainValidator(_money), WithJsonSchema(_USD_SCHEMA)]
Cap = Annotated[
    int | None,
    PlainValidator(_cap),
    WithJsonSchema({"anyOf": [*_USD_SCHEMA["anyOf"], {"const": "unlimited"}, {"type": "null"}]}),
]
Rate = Annotated[Decimal, PlainValidator(_rate), WithJsonSchema({"type": "number", "minimum": 0})]
StrictBool = Annotated[bool, Strict()]
EnvName = Annotated[str, Strict(), Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]


def fail(title: str, *errors: tuple[tuple[str | int, ...], str, Any]) -> NoReturn:
    """Raise errors located *inside* the model being validated: each is (relative loc,
    message, input). pydantic prefixes the model's own location, so the loader can name
    the exact key and line."""
    raise ValidationError.from_exception_data(
        title,
        [
            {"type": PydanticCustomError("tollway", message), "loc": loc, "input": value}
            for loc, message, value in errors
        ],
    )


def environment(info: ValidationInfo) -> Mapping[str, str]:
    context = info.context or {}
    env: Mapping[str, str] | None = context.get("env")
    return os.environ if env is None else env


def resolve_secret(info: ValidationInfo, title: str, key: str, name: str) -> SecretStr:
    value = environment(info).get(name)
    if not value and (info.context or {}).get("secrets") is False:
        return SecretStr("")
    if value is None:
        fail(title, ((key,), f"environment variable {name} is not set", name))
    if not value:
        fail(title, ((key,), f"environment variable {name} is empty", name))
    return SecretStr(value)


def _http_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"expected an http:// or https:// URL, got {value!r}")
    if parts.query or parts.fragment:
        raise ValueError("must not have a query or fragment")
    return value.rstrip("/")


HttpUrl = Annotated[str, Strict(), AfterValidator(_http_url)]


class FrozenModel(BaseModel):
    """Forbids unknown keys; frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
