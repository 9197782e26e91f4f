"""Flat views of nested settings dataclasses: one name per setting, read out and built back strictly."""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import textwrap
import typing
from typing import Any, NamedTuple, TypeVar

Settings = TypeVar("Settings")


class FlatField(NamedTuple):
    """One setting as a flat view shows it: its type and default, lists where the dataclass keeps tuples,
    and what it means (its attribute docstring)."""

    name: str
    type: Any
    default: Any
    doc: str = ""


@functools.cache
def attribute_docs(kind: type) -> dict[str, str]:
    """Each field's docstring: the string right under its declaration, as Sphinx and pydantic read them.

    Settings are described once, beside their declaration; the UI and the CLI show the same words.
    Empty where the source is not there to read (a build without .py files).
    """
    try:
        (node,) = ast.parse(textwrap.dedent(inspect.getsource(kind))).body
    except (OSError, TypeError, ValueError):
        return {}
    assert isinstance(node, ast.ClassDef)
    docs = {}
    for declared, after in zip(node.body, node.body[1:], strict=False):
        if (
            isinstance(declared, ast.AnnAssign)
            and isinstance(declared.target, ast.Name)
            and isinstance(after, ast.Expr)
            and isinstance(after.value, ast.Constant)
            and isinstance(after.value.value, str)
        ):
            docs[declared.target.id] = " ".join(inspect.cleandoc(after.value.value).split())
    return docs


def _is_settings(kind: Any) -> bool:
    return isinstance(kind, type) and dataclasses.is_dataclass(kind)


def _default(spec: dataclasses.Field) -> Any:
    if spec.default is not dataclasses.MISSING:
        return spec.default
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    raise TypeError(f"setting {spec.name!r} has no default: a flat view needs one for every setting")


def _as_list_type(kind: Any) -> Any:
    """``tuple[X, ...]`` as ``list[X]`` (config systems speak lists); any other type as it is."""
    if typing.get_origin(kind) is tuple:
        args = typing.get_args(kind)
        if len(args) == 2 and args[1] is Ellipsis:
            return list[args[0]]  # type: ignore[valid-type]  # a type built at run time
    return kind


def flat_fields(kind: type) -> list[FlatField]:
    """Every setting of the dataclass ``kind``, nested settings dataclasses opened in place.

    Raises when two nested groups use one name: a flat view could not tell them apart.
    """
    hints = typing.get_type_hints(kind)
    found: list[FlatField] = []
    for spec in dataclasses.fields(kind):
        if not spec.init:
            continue
        if _is_settings(hints[spec.name]):
            found.extend(flat_fields(hints[spec.name]))
            continue
        default = _default(spec)
        found.append(
            FlatField(
                spec.name,
                _as_list_type(hints[spec.name]),
                list(default) if isinstance(default, tuple) else default,
                attribute_docs(kind).get(spec.name, ""),
            )
        )
    names = [f.name for f in found]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{kind.__name__} has settings of one name in two groups: {', '.join(clashes)}")
    return found


def from_flat(kind: type[Settings], values: dict[str, Any]) -> Settings:
    """``kind`` built from one flat mapping (a resource's config); lists become tuples.

    A name that is no setting of ``kind`` raises: a typo or a stale option never passes silently.
    """
    unknown = sorted(set(values) - {f.name for f in flat_fields(kind)})
    if unknown:
        raise ValueError(f"{', '.join(unknown)}: no such setting of {kind.__name__}")
    return _build(kind, values)


def _build(kind: type[Settings], values: dict[str, Any]) -> Settings:
    hints = typing.get_type_hints(kind)
    chosen: dict[str, Any] = {}
    for spec in dataclasses.fields(typing.cast(Any, kind)):
        if not spec.init:
            continue
        if _is_settings(hints[spec.name]):
            chosen[spec.name] = _build(hints[spec.name], values)
        elif spec.name in values:
            value = values[spec.name]
            chosen[spec.name] = tuple(value) if isinstance(value, list) else value
    return kind(**chosen)
