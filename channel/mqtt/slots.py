"""A faster ``__init__`` for the frozen slotted dataclasses a codec builds per message.

A frozen dataclass's generated ``__init__`` assigns every field through
``object.__setattr__``, which finds the slot again on each call: a 7-field
``Publish`` costs about as much to build as to encode, and the 27 fields of
``Properties`` several times that. ``fast_init`` swaps in an ``__init__`` with
the same parameters and defaults that calls each slot's descriptor directly.
The class is otherwise untouched: still frozen (assignment raises
``FrozenInstanceError``), same ``__eq__``, ``__hash__``, ``__repr__``,
``__match_args__`` and ``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

T = TypeVar("T")


def fast_init(cls: type[T]) -> type[T]:
    """Class decorator, applied above ``@dataclass(frozen=True, slots=True)``."""
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    if not fields:
        return cls
    namespace: dict[str, Any] = {}
    parameters, body = [], []
    for field in fields:
        if not field.init or field.default_factory is not dataclasses.MISSING:
            raise TypeError(f"{cls.__name__}.{field.name}: fast_init takes plain fields only")
        namespace[f"_set_{field.name}"] = vars(cls)[field.name].__set__
        if field.default is dataclasses.MISSING:
            parameters.append(field.name)
        else:
            namespace[f"_default_{field.name}"] = field.default
            parameters.append(f"{field.name}=_default_{field.name}")
        body.append(f"    _set_{field.name}(self, {field.name})")
    source = f"def __init__(self, {', '.join(parameters)}) -> None:\n" + "\n".join(body)
    exec(source, namespace)  # the way dataclasses itself builds __init__
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__doc__ = cls.__init__.__doc__
    setattr(cls, "__init__", init)  # noqa: B010  (mypy forbids assigning a method)
    return cls
