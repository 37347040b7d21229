"""Model registry in the timm style: ``@register_model(name)`` on a factory, ``create_model(name, **kw)``."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from osteoscope.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[F], F]:
    """Register a model factory under ``name``; a name may be registered once only."""

    def decorator(factory: F) -> F:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ConfigError(f"model name {name!r} is already registered")
        _MODELS[name] = factory
        return factory

    return decorator


def list_models() -> list[str]:
    """Return the registered model names, sorted."""
    return sorted(_MODELS)


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name`` with keyword arguments checked against its factory.

    Raises:
        ConfigError: If the name is unknown (the message lists the known names) or a keyword is not
            accepted by the factory (the message names it and lists the accepted ones).
    """
    if name not in _MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    factory = _MODELS[name]
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise ConfigError(
                f"model {name!r} does not accept {', '.join(repr(b) for b in bad)}; "
                f"accepted arguments: {', '.join(params)}"
            )
    return factory(**kwargs)


def resolve_preset(
    presets: Mapping[str, Mapping[str, Any]], preset: str, overrides: Mapping[str, Any]
) -> dict[str, Any]:
    """Return the size settings of ``preset`` with every non-None value of ``overrides`` applied.

    Raises:
        ConfigError: If ``preset`` is not one of ``presets``.
    """
    if preset not in presets:
        raise ConfigError(f"unknown preset {preset!r}; choose one of: {', '.join(presets)}")
    cfg = dict(presets[preset])
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    return cfg
