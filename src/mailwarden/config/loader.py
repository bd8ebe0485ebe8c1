"""Reading the TOML file and turning every validation failure into a located message."""

from __future__ import annotations

import enum
import os
import re
import tomllib
import types
import typing
from pathlib import Path
from typing import Any

import annotated_types
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo

from mailwarden.config.errors import ConfigError, format_problem
from mailwarden.config.locations import KeyPath, key_lines, line_of
from mailwarden.config.models import PROBLEM_TYPE, PROBLEMS_TYPE, Config

_TOML_POSITION = re.compile(r"^(?P<message>.*?)\s*\(at line (?P<line>\d+), column (?P<col>\d+)\)$")
_TOML_AT_END = re.compile(r"^(?P<message>.*?)\s*\(at end of document\)$")
_NOT_TOML_KEYS = frozenset({"source"})  # Config fields that are not read from the file


def default_config() -> Config:
    """The embedded configuration: one listener on 127.0.0.1:2525, data under the working
    directory (or ``$MAILWARDEN_DATA_DIR``). Needs no file and cannot fail."""
    return Config()


def load_config(path: str | os.PathLike[str] | None) -> Config:
    """Read and validate the TOML configuration at ``path``; ``None`` gives :func:`default_config`.

    Relative paths in the file are resolved against the file's directory. Files the settings
    name (scripts, certificates) are not opened here: call ``Config.check_files()``.

    Raises :class:`ConfigError` when the file cannot be read, is not valid TOML, or does not
    match the schema; its ``problems`` name the file, the line, the dotted key and what was
    expected, one per problem found.
    """
    if path is None:
        return default_config()
    name = os.fspath(path)
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        reason = err.strerror or str(err)
        raise ConfigError([f"{name}: cannot read the configuration file: {reason}"]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw[: err.start].count(b"\n") + 1
        raise ConfigError([f"{name}:{line}: the file is not valid UTF-8"]) from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise ConfigError([_syntax_problem(name, text, err)]) from None

    lines = key_lines(text)
    problems = [
        (lines.get((key,)), format_problem(name, lines.get((key,)), (key,), _unknown_key(Config)))
        for key in data
        if key in _NOT_TOML_KEYS
    ]
    data = {key: value for key, value in data.items() if key not in _NOT_TOML_KEYS}
    source = Path(path).absolute()
    try:
        config = Config.model_validate(
            {**data, "source": source}, context={"base_dir": source.parent}
        )
    except ValidationError as err:
        problems += _translate(name, lines, err)
    if problems:
        problems.sort(key=lambda item: item[0] or 0)
        raise ConfigError([text for _, text in problems])
    config._file_name = name
    config._key_lines = lines
    return config


def _syntax_problem(name: str, text: str, err: tomllib.TOMLDecodeError) -> str:
    message = str(err)
    match = _TOML_POSITION.match(message)
    if match:
        return f"{name}:{match['line']}:{match['col']}: invalid TOML: {match['message']}"
    match = _TOML_AT_END.match(message)
    if match:
        # tomllib gives no position when the file ends inside a construct (an unclosed array
        # or string, a key without its value): point at the last line that holds something.
        line = _last_line(text)
        return f"{name}:{line}: invalid TOML: {match['message']} at the end of the file"
    return f"{name}: invalid TOML: {message}"


def _last_line(text: str) -> int:
    """The number of the last line with anything but white space on it (1 if none)."""
    lines = text.splitlines()
    for number in range(len(lines), 0, -1):
        if lines[number - 1].strip():
            return number
    return 1


def _translate(
    name: str, lines: dict[KeyPath, int], err: ValidationError
) -> list[tuple[int | None, str]]:
    """One ``(line, message)`` per problem in ``err``."""
    out = []
    for error in err.errors(include_url=False):
        loc: KeyPath = tuple(error["loc"])
        found: list[tuple[KeyPath, str]]
        if error["type"] == PROBLEMS_TYPE:
            found = [((*loc, *sub), text) for sub, text in error["ctx"]["problems"]]
        else:
            found = [(loc, _describe(error, loc))]
        for path, text in found:
            line = line_of(lines, path)
            out.append((line, format_problem(name, line, path, text)))
    return out


def _describe(error: Any, loc: KeyPath) -> str:
    """What was expected and what was found, in the file's terms."""
    kind = error["type"]
    if kind == PROBLEM_TYPE:
        return error["ctx"]["message"]
    if kind == "extra_forbidden":
        model = _model_at(loc[:-1])
        return _unknown_key(model) if model else "unknown key"
    expected = _expected_at(loc)
    if kind == "missing":
        return f"required key is missing; expected {expected}"
    if kind in ("too_short", "too_long"):
        return f"expected {expected} with {_length_rule(error)}, got {_show(error['input'])}"
    if kind == "finite_number":
        return f"expected a finite number, got {_show(error['input'])}"
    return f"expected {expected}, got {_show(error['input'])}"


def _unknown_key(model: type[BaseModel]) -> str:
    keys = [key for key in model.model_fields if not (model is Config and key in _NOT_TOML_KEYS)]
    return "unknown key; expected one of: " + ", ".join(keys)


def _length_rule(error: Any) -> str:
    ctx = error.get("ctx", {})
    if "min_length" in ctx:
        return f"at least {ctx['min_length']} item(s)"
    return f"at most {ctx.get('max_length')} item(s)"


def _show(value: object) -> str:
    """A value as the reader wrote it (TOML spelling for booleans), cut short if long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# -- walking the schema along an error location ---------------------------------------------


def _model_at(loc: KeyPath) -> type[BaseModel] | None:
    """The model class that validates the table at ``loc``, if ``loc`` names a table."""
    annotation: Any = Config
    for part in loc:
        annotation = _step(annotation, part)
        if annotation is None:
            return None
    annotation = _strip(annotation)
    return (
        annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None
    )


def _expected_at(loc: KeyPath) -> str:
    """A phrase for the value expected at ``loc``: 'an integer >= 512', 'a string', ..."""
    annotation: Any = Config
    field: FieldInfo | None = None
    for part in loc:
        if isinstance(part, str):
            model = _strip(annotation)
            if not (isinstance(model, type) and issubclass(model, BaseModel)):
                return "a valid value"
            field = model.model_fields.get(part)
            if field is None:
                return "a valid value"
            annotation = field.annotation
        else:
            annotation = _step(annotation, part)
            field = None  # constraints on the list itself do not apply to its items
            if annotation is None:
                return "a valid value"
    phrase = _phrase(annotation, field.metadata if field else [])
    if field is not None and field.examples:
        phrase += f" such as {field.examples[0]!r}"
    return phrase


def _step(annotation: Any, part: str | int) -> Any:
    annotation = _strip(annotation)
    if isinstance(part, int):
        if typing.get_origin(annotation) is list:
            return typing.get_args(annotation)[0]
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        field = annotation.model_fields.get(part)
        return field.annotation if field else None
    return None


def _strip(annotation: Any) -> Any:
    """Drop ``Annotated`` and ``| None`` wrappers."""
    while True:
        origin = typing.get_origin(annotation)
        if origin is typing.Annotated:
            annotation = typing.get_args(annotation)[0]
        elif origin in (typing.Union, types.UnionType):
            rest = [arg for arg in typing.get_args(annotation) if arg is not type(None)]
            if len(rest) != 1:
                return annotation
            annotation = rest[0]
        else:
            return annotation


def _phrase(annotation: Any, metadata: list[Any]) -> str:
    base = _strip(annotation)
    origin = typing.get_origin(base)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(v) for v in typing.get_args(base))
    if origin is list:
        item = _phrase(typing.get_args(base)[0], [])
        return f"an array of {_plural(item)}"
    if isinstance(base, type) and issubclass(base, enum.Enum):
        return "one of " + ", ".join(repr(member.value) for member in base)
    if isinstance(base, type) and issubclass(base, BaseModel):
        return "a table"
    if base is bool:
        return "true or false"
    if base is int:
        return "an integer" + _bounds(metadata)
    if base is float:
        return "a number" + _bounds(metadata)
    if base is Path:
        return "a path (string)"
    if base is str:
        return "a string"
    return "a valid value"


def _plural(phrase: str) -> str:
    words = {"a string": "strings", "a path (string)": "paths (strings)"}
    return words.get(phrase, phrase.removeprefix("one of ").join(("values (", ")")))


def _bounds(metadata: list[Any]) -> str:
    low = high = None
    low_text = ""
    for item in metadata:
        if isinstance(item, annotated_types.Ge):
            low, low_text = item.ge, f" >= {item.ge}"
        elif isinstance(item, annotated_types.Gt):
            low, low_text = item.gt, f" > {item.gt}"
        elif isinstance(item, annotated_types.Le):
            high = item.le
    if low is not None and high is not None and low_text.startswith(" >="):
        return f" from {low} to {high}"
    if high is not None:
        return low_text + f" and <= {high}"
    return low_text
