"""Typed settings from plain values: YAML config files and flag overrides.

A config file maps section names to settings; the caller says which sections
there are and which frozen config dataclass each one builds (for the training
section, `trainer.config.TrainingConfig`):

    training:
      backbone: inception_v3
      cut_layer: mixed7
      head: {pooling: flatten, dense_units: [1024], binary: true}
      optimizer: rmsprop
      learning_rate: 1e-4

`build_config` turns a mapping into a dataclass, checking every value against the
field's type annotation (nested dataclasses, tuples, unions, optionals), so a typo
or a wrong type is a one-line error naming the file and the setting rather than a
failure deep inside training. Numbers YAML reads as strings (PyYAML reads ``1e-4``
as a string) are accepted where a float is expected. This module knows no section
of its own: the commands' sections are `pipeline.settings`'s.

This module imports no TensorFlow: the CLI can read configs before loading it.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from typing import Any

import yaml

from trainer.errors import one_line


class ConfigError(ValueError):
    """A config file or a setting in it is unusable; the message says which and why."""


def read_config_file(
    path: str,
    sections: Mapping[str, type],
    ignored_sections: tuple[str, ...] = (),
) -> dict[str, dict[str, Any]]:
    """Reads a YAML (or JSON) file of settings by section and checks every value.

    Args:
        path: The file.
        sections: Section name -> config dataclass that section builds.
        ignored_sections: Sections the file may hold for another reader;
            accepted here unchecked and left out of the result.

    Returns:
        Section name -> its settings as plain values (flags can then override
        them before `build_config`). Sections the file leaves out are absent.

    Raises:
        ConfigError: The file is missing, not UTF-8 or not YAML, repeats a key,
            or a section or setting is unknown or of the wrong type; the message
            names the file and the setting.
    """
    document = _load_document(path)
    document = {} if document is None else document
    known = sorted([*sections, *ignored_sections])
    if not isinstance(document, dict):
        raise ConfigError(f"config file {path!r} must map sections {known} to settings")
    unknown = sorted(str(name) for name in set(document) - set(known))
    if unknown:
        raise ConfigError(f"config file {path!r}: unknown sections {unknown}; known: {known}")
    result = {}
    for section, values in document.items():
        if section in ignored_sections:
            continue
        values = {} if values is None else values
        if not isinstance(values, dict):
            raise ConfigError(f"config file {path!r}: section {section!r} must be a mapping")
        try:
            build_config(sections[section], values)
        except ConfigError as error:
            raise ConfigError(f"config file {path!r}: {section}.{error}") from None
        result[section] = values
    return result


class _DuplicateKeyError(yaml.YAMLError):
    """A mapping of the file gives one key twice."""

    def __init__(self, key: Any, mark: yaml.Mark, first_line: int) -> None:
        super().__init__(f"duplicate key {key!r} on line {mark.line + 1}, column "
                         f"{mark.column + 1} (first on line {first_line})")


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (by default the last wins).

    Keys merged in with ``<<`` are not the mapping's own: overriding them is allowed.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            lines: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    repeated = key in lines
                except TypeError:  # an unhashable key: the base class refuses it
                    continue
                if repeated:
                    raise _DuplicateKeyError(key, key_node.start_mark, lines[key])
                lines[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


def _load_document(path: str) -> Any:
    """The file's YAML (or JSON) document; None when it is empty.

    Raises:
        ConfigError: The file cannot be read, is not UTF-8, is not YAML or
            repeats a key in one mapping; the message names the file.
    """
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as error:
        raise ConfigError(f"cannot read config file {path!r}: {error.strerror}") from error
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        raise ConfigError(
            f"config file {path!r} is not UTF-8 text: byte 0x{raw[error.start]:02x} at offset "
            f"{error.start} (line {line}) cannot be decoded"
        ) from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: builds no objects
    except _DuplicateKeyError as error:
        raise ConfigError(f"config file {path!r}: {error}") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"config file {path!r} is not valid YAML: {one_line(error)}") from error


def build_config(config_class: type, values: Mapping[str, Any]) -> Any:
    """`config_class` from plain values, each checked against its field's type.

    Nested config dataclasses take mappings; tuples take lists; floats take ints
    and numeric strings. Fields left out keep their defaults. `validate()` is not
    called: range checks are the config class's own.

    Raises:
        ConfigError: A key is not a field, or a value has the wrong type; the
            message starts with the setting's dotted name.
    """
    if not isinstance(values, Mapping):
        raise ConfigError(f"expected a mapping of settings, got {values!r}")
    fields = {field.name: field for field in dataclasses.fields(config_class)}
    unknown = sorted(str(key) for key in set(values) - set(fields))
    if unknown:
        raise ConfigError(
            f"{unknown[0]}: unknown setting; {_class_label(config_class)} settings are "
            f"{sorted(fields)}"
        )
    hints = _type_hints(config_class)
    converted = {name: convert_value(hints[name], value, name) for name, value in values.items()}
    return config_class(**converted)


def convert_value(annotation: Any, value: Any, name: str) -> Any:
    """Checks `value` against a type annotation and returns it in that type.

    Raises:
        ConfigError: `value` does not fit; the message starts with `name`.
    """
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        for option in options:
            if option is type(None):
                continue
            try:
                return convert_value(option, value, name)
            except ConfigError:
                pass
        raise ConfigError(f"{name}: expected {_describe(annotation)}, got {value!r}")
    if dataclasses.is_dataclass(annotation):
        if isinstance(value, annotation):
            value = {field.name: getattr(value, field.name)
                     for field in dataclasses.fields(value)}
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping of settings, got {value!r}")
        try:
            return build_config(annotation, value)
        except ConfigError as error:
            raise ConfigError(f"{name}.{error}") from None
    if origin is tuple:
        item_type = typing.get_args(annotation)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{name}: expected a list ({_describe(item_type)} each), "
                              f"got {value!r}")
        return tuple(convert_value(item_type, item, f"{name}[{i}]") for i, item in enumerate(value))
    if origin in (dict, Mapping):
        key_type, item_type = typing.get_args(annotation)
        if not isinstance(value, Mapping):
            raise ConfigError(f"{name}: expected a mapping, got {value!r}")
        return {
            convert_value(key_type, key, name): convert_value(item_type, item, f"{name}.{key}")
            for key, item in value.items()
        }
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name}: expected a whole number, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}: expected a number, got {value!r}")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"{name}: expected a number, got {value!r}")
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name}: expected a string, got {value!r}")
        return value
    return value  # Any, or a type this checker does not know: the class's validate() decides


def to_plain(config: Any) -> Any:
    """A config dataclass as JSON-safe values (tuples become lists)."""
    if dataclasses.is_dataclass(config):
        return {field.name: to_plain(getattr(config, field.name))
                for field in dataclasses.fields(config)}
    if isinstance(config, (list, tuple)):
        return [to_plain(item) for item in config]
    if isinstance(config, Mapping):
        return {key: to_plain(item) for key, item in config.items()}
    return config


@functools.cache
def _type_hints(config_class: type) -> dict[str, Any]:
    return typing.get_type_hints(config_class)


def _describe(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option) for option in typing.get_args(annotation))
    if annotation is type(None):
        return "null"
    if dataclasses.is_dataclass(annotation):
        return "a mapping of settings"
    if origin is tuple:
        return f"a list ({_describe(typing.get_args(annotation)[0])} each)"
    if origin in (dict, Mapping):
        return "a mapping"
    return {bool: "true or false", int: "a whole number", float: "a number",
            str: "a string"}.get(annotation, str(annotation))


def _class_label(config_class: type) -> str:
    return getattr(config_class, "SECTION_LABEL", config_class.__name__)


