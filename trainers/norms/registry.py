"""The scheme registry: short name -> scheme class. Unknown names raise; duplicates are refused."""

from __future__ import annotations

from typing import Any

from trainers.norms.base import NormScheme

_SCHEMES: dict[str, type[NormScheme]] = {}


def register(cls: type[NormScheme]) -> type[NormScheme]:
    """Class decorator: add a scheme under ``cls.name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__}: a scheme needs a non-empty `name`")
    if cls.name in _SCHEMES and _SCHEMES[cls.name] is not cls:
        raise ValueError(f"scheme '{cls.name}' is registered twice ({_SCHEMES[cls.name].__name__}, {cls.__name__})")
    _SCHEMES[cls.name] = cls
    return cls


def get(name: str) -> type[NormScheme]:
    try:
        return _SCHEMES[name]
    except KeyError:
        raise KeyError(f"schemes: unknown scheme '{name}'; known: {', '.join(names())}") from None


def create(name: str, **options: Any) -> NormScheme:
    return get(name)(**options)


def names() -> list[str]:
    return list(_SCHEMES)
