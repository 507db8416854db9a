"""The configuration reference and JSON Schema, generated from the pydantic models of driftloop.config."""

from __future__ import annotations

import inspect
import json
import types
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types
from md_table import code, generated_note, json_value, prose
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined, to_jsonable_python

SCHEMA_FILE = "config.schema.json"


@dataclass(frozen=True)
class Key:
    """One leaf key of the config: its dotted path and what the page says about it."""

    path: str
    type: str
    default: str
    constraints: str
    description: str


@dataclass(frozen=True)
class Section:
    """One nested model of the config (`training`, `serving`, ...), or the top level (path "")."""

    path: str
    doc: str
    keys: list[Key]


def type_text(annotation: Any) -> str:
    """A short human form of a field's type: `int`, `float | null`, `one of "a", "b"`, `list of str`."""
    origin = get_origin(annotation)
    if annotation is type(None):
        return "null"
    if origin is Literal:
        return "one of " + ", ".join(json_value(value) for value in get_args(annotation))
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in get_args(annotation))
    if origin in (list, tuple, set, frozenset):
        return "list of " + " | ".join(type_text(arg) for arg in get_args(annotation) if arg is not Ellipsis)
    if isinstance(annotation, type) and issubclass(annotation, PurePath):
        return "path"
    return getattr(annotation, "__name__", str(annotation))


def default_text(field: FieldInfo) -> str:
    """The default as YAML/JSON reads it, or "required"."""
    if field.default_factory is not None:
        value = field.default_factory()  # type: ignore[call-arg]
    elif field.default is PydanticUndefined:
        return "required"
    else:
        value = field.default
    return json_value(to_jsonable_python(value))


CONSTRAINTS = (("ge", "≥"), ("gt", ">"), ("le", "≤"), ("lt", "<"), ("min_length", "length ≥"),
               ("max_length", "length ≤"))


def constraints_text(field: FieldInfo) -> str:
    """The field's bounds (`≥ 1, ≤ 65535`); empty when it has none."""
    found = []
    for item in field.metadata:
        for attribute, sign in CONSTRAINTS:
            value = getattr(item, attribute, None)
            if value is not None and isinstance(item, annotated_types.BaseMetadata):
                found.append(f"{sign} {value}")
    return ", ".join(found)


def is_section(annotation: Any) -> bool:
    """True for a nested config model (a section such as `training:`)."""
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def sections(model: type[BaseModel], path: str = "") -> list[Section]:
    """`model`'s own keys as one section, then each nested model's sections, depth first, in declaration order."""
    keys, nested = [], []
    for name, field in model.model_fields.items():
        dotted = f"{path}.{name}" if path else name
        if is_section(field.annotation):
            nested += sections(field.annotation, dotted)
            continue
        keys.append(Key(dotted, type_text(field.annotation), default_text(field), constraints_text(field),
                        " ".join((field.description or "").split())))
    return [Section(path, inspect.cleandoc(model.__doc__ or ""), keys), *nested]


def key_heading(key: Key) -> str:
    """A key's heading; its anchor is the dotted path itself (configuration.md#training.stages)."""
    return f"### {code(key.path)} {{#{key.path}}}"


def key_entry(key: Key) -> str:
    """A key's heading, its type, default and bounds on one line, and its description."""
    facts = [f"**Type** {code(key.type)}", f"**Default** {code(key.default)}"]
    if key.constraints:
        facts.append(f"**Bounds** {key.constraints}")
    return "\n\n".join([key_heading(key), " · ".join(facts), prose(key.description)])


def config_page(model: type[BaseModel]) -> str:
    """The configuration reference page: every key of `model` with type, default, bounds and description."""
    all_sections = sections(model)
    parts = [
        "# Configuration",
        generated_note("the pydantic models in `core/config.py` (each key's `Field(description=...)`)"),
        "driftloop reads one YAML file (`--config`), validated by these models: an unknown key, a wrong type or a "
        "value out of bounds is an error that names the key, before anything runs. Only `data:` is required; "
        "the demo's config is `core/configs/flights.yaml`. A description's None is YAML's `null`. A key's anchor is "
        "its dotted path, e.g. [`training.stages`](#training.stages).",
        "## Editor support: the JSON Schema\n\n"
        f"[`{SCHEMA_FILE}`]({SCHEMA_FILE}) is the JSON Schema of the same models (generated with this page): "
        "with it an editor completes keys, shows these descriptions on hover and marks unknown keys and values "
        "out of bounds. In VS Code, install the YAML extension (Red Hat) and either put this line at the top of "
        "the config file:\n\n"
        f"```yaml\n# yaml-language-server: $schema=https://<this site>/reference/{SCHEMA_FILE}\n```\n\n"
        "or map it in `.vscode/settings.json`:\n\n"
        f"```json\n{{\"yaml.schemas\": {{\"./{SCHEMA_FILE}\": [\"configs/*.yaml\"]}}}}\n```\n\n"
        "A local copy of the schema, from a checkout or an installed driftloop:\n\n"
        "```bash\npython -c 'import json; from driftloop.config import Config; "
        f"print(json.dumps(Config.model_json_schema(), indent=2))' > {SCHEMA_FILE}\n```",
        "## Sections\n\n" + "\n".join(
            f"- [{code(section.path or '(top level)')}](#{section_anchor(section)}): {prose(first_line(section.doc))}"
            for section in all_sections),
    ]
    for section in all_sections:
        title = code(section.path + ":") if section.path else "Top level"
        parts.append(f"## {title} {{#{section_anchor(section)}}}\n\n{prose(section.doc)}")
        parts += [key_entry(key) for key in section.keys]
    return "\n\n".join(parts) + "\n"


def section_anchor(section: Section) -> str:
    """A section's anchor: its dotted path (`governance`), or `top-level`."""
    return section.path or "top-level"


def first_line(text: str) -> str:
    """A docstring's first paragraph, on one line."""
    return " ".join(text.split("\n\n", 1)[0].split())


def config_schema(model: type[BaseModel]) -> str:
    """The JSON Schema of `model`, for editors (titled, described, unknown keys refused)."""
    schema = model.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "driftloop configuration"
    return json.dumps(schema, indent=2, ensure_ascii=False) + "\n"
