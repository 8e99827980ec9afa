"""Read a YAML config into a validated ``Config``, or fail with every error at once.

Errors::

    ConfigError            one or more problems; .errors is a list of
                           "FILE:LINE: key.path: message" strings, sorted by line

Nothing is partially applied: a file with any error produces no ``Config``.

How it works: PyYAML composes the document into nodes (which carry line marks); we build
plain dicts/lists from them ourselves, recording the line of every key and sequence item
under its key path, and catching duplicate keys on the way. Float scalars become
``decimal.Decimal`` (never ``float``) so money stays exact. The data is then validated by
the pydantic models in ``tollway.config.schema``, and each pydantic error's ``loc`` is mapped back
to a key path and a line.

Decisions: mapping keys are always strings (the key's text as written: a user named ``no``
or ``2024`` stays a string), in Unicode NFC (two keys of one mapping equal after
normalization are a duplicate-key error naming both spellings); merge keys (``<<``) and
anchors work; ``.inf``, ``.nan`` and base-60 numbers are refused. The root path is shown
as ``(root)``; YAML syntax errors use ``syntax error`` in place of a key path.
"""

from __future__ import annotations

import os
import unicodedata
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from pathlib import Path
from types import UnionType
from typing import Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ValidationError
from tollway.config.schema import Config
from tollway.config.values import show
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """An invalid config. ``errors``: "FILE:LINE: key.path: message" strings."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(self.errors))

    def __str__(self) -> str:
        return "\n".join(self.errors)


def load_config(
    path: str | Path, env: Mapping[str, str] | None = None, *, secrets: bool = True
) -> Config:
    """Load and validate the config file at ``path``; secrets are read from ``env``
    (default ``os.environ``). Raises ``ConfigError``. ``Config.source`` is ``str(path)``.

    ``secrets=False`` lets a missing secret variable pass (its value is then empty): for
    commands that only talk to the store and never to an upstream."""
    filename = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        reason = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        raise ConfigError([f"{filename}:1: (root): cannot read the file: {reason}"]) from None
    return parse_config_text(text, filename, env, secrets=secrets)


def parse_config_text(
    text: str,
    filename: str = "<string>",
    env: Mapping[str, str] | None = None,
    *,
    secrets: bool = True,
) -> Config:
    """Validate config text; ``filename`` is used in messages and becomes
    ``Config.source`` unless it is a pseudo-name like ``<string>``. Raises ``ConfigError``."""
    document = _Document(filename)
    data = document.read(text)
    errors = list(document.errors)
    source = None if filename.startswith("<") else filename
    context = {"env": os.environ if env is None else env, "source": source, "secrets": secrets}
    config = None
    if isinstance(data, dict):
        try:
            config = Config.model_validate(data, context=context)
        except ValidationError as e:
            # A field whose default is computed from another (Price.cache_read defaults
            # to input) reports nothing of its own when that other field is invalid.
            details = [err for err in e.errors() if err["type"] != "default_factory_not_called"]
            located = (document.located(err) for err in details)
            errors += [err for err in located if err is not None]
    if errors or config is None:
        unique = dict.fromkeys(errors)  # an aliased node may repeat an error
        raise ConfigError([message for _, message in sorted(unique, key=lambda err: err[0])])
    return config


def render_path(path: KeyPath) -> str:
    """("a", "b", 2, "c") -> "a.b[2].c"; () -> "(root)"."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out or "(root)"


def _construct_decimal(loader: yaml.SafeLoader, node: ScalarNode) -> Decimal:
    text = node.value.replace("_", "")
    try:
        if ":" in text:
            raise InvalidOperation  # YAML 1.1 base-60 float, e.g. 1:30.5
        value = Decimal(text)
        if not value.is_finite():
            raise InvalidOperation
    except InvalidOperation:
        raise yaml.constructor.ConstructorError(
            None, None, f"unsupported number {node.value!r}", node.start_mark
        ) from None
    return value


def _nfc(key: Any) -> Any:
    """Mapping keys in Unicode NFC: organization, workspace, user and tier names that look
    alike are one name (two such keys in one mapping are a duplicate-key error)."""
    return unicodedata.normalize("NFC", key) if isinstance(key, str) else key


class _Loader(yaml.SafeLoader):
    """SafeLoader whose floats are exact ``Decimal``s."""


_Loader.add_constructor("tag:yaml.org,2002:float", _construct_decimal)
_MERGE = "tag:yaml.org,2002:merge"


class _Document:
    """One YAML text turned into plain data, with the line of every key path."""

    def __init__(self, filename: str) -> None:
        self.filename = filename
        self.lines: dict[KeyPath, int] = {(): 1}
        self.errors: list[tuple[int, str]] = []
        self.broken: set[KeyPath] = set()  # values already reported by the YAML layer
        self.data: Any = None
        self._checked: set[int] = set()
        self._stack: set[int] = set()

    def error(self, line: int, path: KeyPath, message: str) -> None:
        self.errors.append((line, f"{self.filename}:{line}: {render_path(path)}: {message}"))

    def read(self, text: str) -> Any:
        loader = _Loader(text)
        try:
            root = loader.get_single_node()
        except yaml.MarkedYAMLError as e:
            mark = e.problem_mark or e.context_mark
            line = mark.line + 1 if mark else 1
            problem = e.problem or e.context or "invalid YAML"
            if e.context and problem.startswith("but "):  # "expected X, but found Y"
                problem = f"{e.context}, {problem}"
            message = f"{self.filename}:{line}: syntax error: {problem}"
            raise ConfigError([message]) from None
        except yaml.YAMLError as e:
            raise ConfigError([f"{self.filename}:1: syntax error: {e}"]) from None
        try:
            if root is None:
                self.error(1, (), "the config file is empty")
                return None
            if not isinstance(root, MappingNode):
                self.error(root.start_mark.line + 1, (), "expected a mapping at the top level")
                return None
            self.data = self._build(loader, root, ())
            return self.data
        finally:
            loader.dispose()

    def _build(self, loader: _Loader, node: Node, path: KeyPath) -> Any:
        if isinstance(node, ScalarNode):
            try:
                return loader.construct_object(node, deep=True)
            except yaml.constructor.ConstructorError as e:
                self.broken.add(path)
                self.error(node.start_mark.line + 1, path, e.problem or "invalid value")
                return None
        if id(node) in self._stack:
            self.broken.add(path)
            self.error(node.start_mark.line + 1, path, "recursive alias")
            return None
        self._stack.add(id(node))
        try:
            if isinstance(node, SequenceNode):
                return [self._item(loader, item, (*path, i)) for i, item in enumerate(node.value)]
            return self._mapping(loader, node, path)
        finally:
            self._stack.discard(id(node))

    def _item(self, loader: _Loader, node: Node, path: KeyPath) -> Any:
        self.lines.setdefault(path, node.start_mark.line + 1)
        return self._build(loader, node, path)

    def _mapping(self, loader: _Loader, node: MappingNode, path: KeyPath) -> dict[str, Any]:
        if id(node) not in self._checked:  # an aliased mapping is checked once
            self._checked.add(id(node))
            first: dict[str, tuple[int, str]] = {}
            for key, _ in node.value:
                if isinstance(key, ScalarNode) and key.tag != _MERGE:
                    line = key.start_mark.line + 1
                    norm = _nfc(key.value)
                    if norm in first:
                        at, spelled = first[norm]
                        message = f"duplicate key (first defined on line {at})"
                        if spelled != key.value:
                            message = (
                                f"duplicate key: {key.value!r} and {spelled!r} are the same "
                                f"name after Unicode normalization (NFC) (first defined on "
                                f"line {at})"
                            )
                        self.error(line, (*path, norm), message)
                    first.setdefault(norm, (line, key.value))
        try:
            loader.flatten_mapping(node)  # merge keys: merged entries first, own ones last
        except yaml.constructor.ConstructorError as e:
            self.error(node.start_mark.line + 1, path, e.problem or "invalid merge")
            return {}
        result: dict[str, Any] = {}
        for key, value in node.value:
            if not isinstance(key, ScalarNode):
                self.error(key.start_mark.line + 1, path, "mapping keys must be plain strings")
                continue
            name = _nfc(key.value)
            self.lines[(*path, name)] = key.start_mark.line + 1
            result[name] = self._build(loader, value, (*path, name))
        return result

    def located(self, err: Any) -> tuple[int, str] | None:
        """A pydantic error as (line, "FILE:LINE: key.path: message"); None when the
        YAML layer already reported that value."""
        path = self._data_path(err["loc"])
        if any(path[: len(b)] == b for b in self.broken):
            return None
        known = (path[:n] for n in range(len(path), -1, -1) if path[:n] in self.lines)
        line = self.lines[next(known)]  # a missing key is reported on its parent's line
        message = _message(err)
        return line, f"{self.filename}:{line}: {render_path(path)}: {message}"

    def _data_path(self, loc: tuple[Any, ...]) -> KeyPath:
        """Keep the parts of a pydantic ``loc`` that name keys or items of the data
        (validator and union tags are dropped); the last part may name a missing key."""
        node, path = self.data, list[str | int]()
        for i, part in enumerate(loc):
            if isinstance(node, dict) and isinstance(part, str) and part != "[key]":
                if part in node or i == len(loc) - 1:
                    path.append(part)
                    node = node.get(part)
            elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
                path.append(part)
                node = node[part]
        return tuple(path)


def _message(err: Any) -> str:
    kind, msg = err["type"], err["msg"]
    if kind == "extra_forbidden":
        model = _model_at(err["loc"][:-1])
        if model is None:
            return "unknown key"
        return f"unknown key (expected one of: {', '.join(sorted(model.model_fields))})"
    if kind == "missing":
        return "missing required key"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    if kind in ("model_type", "model_attributes_type", "dict_type", "mapping_type"):
        return f"expected a mapping, got {show(err['input'])}"
    if kind in ("tuple_type", "list_type"):
        return f"expected a list, got {show(err['input'])}"
    if kind == "bool_type":
        return f"expected true or false, got {show(err['input'])}"
    if msg.startswith("Input should be "):
        return f"expected {msg.removeprefix('Input should be ')}, got {show(err['input'])}"
    if msg.startswith("String should "):
        return f"must {msg.removeprefix('String should ')}"
    return msg


def _model_at(loc: tuple[Any, ...]) -> type[BaseModel] | None:
    """The model class validating the value at ``loc`` (used to list the expected keys)."""
    tp: Any = Config
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(part) if isinstance(part, str) else None
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is Mapping or get_origin(tp) is dict:
            tp = get_args(tp)[1]
        elif get_origin(tp) is tuple:
            tp = get_args(tp)[0]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _unwrap(tp: Any) -> Any:
    """Strip ``Annotated[...]`` and ``X | None`` down to X."""
    while True:
        args = [a for a in get_args(tp) if a is not type(None)]
        if hasattr(tp, "__metadata__"):
            tp = args[0]
        elif get_origin(tp) in (Union, UnionType):
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp
