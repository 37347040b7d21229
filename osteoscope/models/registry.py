"""Model registry in the timm style: ``@register_model(name)`` on a factory, ``create_model(name, **kw)``.

Besides plain names, a *prefix* family can be registered (``@register_model_prefix("timm", ...)``):
``create_model("timm:resnet18", **kw)`` then calls that family's factory as ``factory("resnet18", **kw)``.
Such a factory covers an open set of names (every timm model, every MONAI network), so its names are
not listed one by one; ``list_models(include_prefixes=True)`` adds one placeholder line per family.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from torch import nn

from osteoscope.errors import ConfigError

_MODELS: dict[str, Callable[..., nn.Module]] = {}
_PRESETS: dict[str, tuple[str, ...]] = {}
_PREFIXES: dict[str, tuple[Callable[..., nn.Module], str]] = {}
_PREFIX_HELP: dict[str, str] = {}

F = TypeVar("F", bound=Callable[..., nn.Module])


def register_model(name: str, presets: Iterable[str] = ()) -> Callable[[F], F]:
    """Register a model factory under ``name`` (once only), with the size presets its ``preset`` takes."""

    def decorator(factory: F) -> F:
        if name in _MODELS and _MODELS[name] is not factory:
            raise ConfigError(f"model name {name!r} is already registered")
        _MODELS[name] = factory
        _PRESETS[name] = tuple(presets)
        return factory

    return decorator


def register_model_prefix(prefix: str, placeholder: str, description: str = "") -> Callable[[F], F]:
    """Register ``factory(name, **kw)`` for every model name of the form ``"<prefix>:<name>"``.

    Args:
        prefix: The family prefix, without the colon (e.g. ``"timm"``).
        placeholder: What may follow the colon, shown by ``list_models(include_prefixes=True)``
            as ``"<prefix>:<placeholder>"`` (e.g. ``"<any timm model>"``).
        description: One line for ``osteoscope models``: what the family builds and how it is sized.
    """
    if not prefix or ":" in prefix:
        raise ValueError(f"invalid model prefix {prefix!r}")

    def decorator(factory: F) -> F:
        if prefix in _PREFIXES and _PREFIXES[prefix][0] is not factory:
            raise ConfigError(f"model prefix {prefix!r} is already registered")
        _PREFIXES[prefix] = (factory, placeholder)
        _PREFIX_HELP[prefix] = description
        return factory

    return decorator


def list_model_prefixes() -> list[str]:
    """Return one line per prefix family, e.g. ``"timm:<any timm model>"``, sorted."""
    return sorted(f"{prefix}:{placeholder}" for prefix, (_, placeholder) in _PREFIXES.items())


def model_presets(name: str) -> tuple[str, ...]:
    """The size presets of a registered model (empty for a family name or a model without presets)."""
    return _PRESETS.get(name, ())


def prefix_descriptions() -> dict[str, str]:
    """``"<prefix>:<placeholder>"`` -> its family's one-line description, sorted by prefix."""
    return {f"{p}:{_PREFIXES[p][1]}": _PREFIX_HELP[p] for p in sorted(_PREFIXES)}


def list_models(include_prefixes: bool = False) -> list[str]:
    """Return the registered model names, sorted; then the prefix families' lines if asked for."""
    names = sorted(_MODELS)
    return names + list_model_prefixes() if include_prefixes else names


def get_model_factory(name: str) -> Callable[..., nn.Module]:
    """Return the callable ``create_model(name, ...)`` would call, so callers can inspect its signature.

    For ``"<prefix>:<rest>"`` this is the family factory with ``rest`` bound as its first argument
    (a ``functools.partial``; ``inspect.signature`` of it shows the remaining keyword parameters).

    Raises:
        ConfigError: If the name or prefix is unknown, or nothing follows the prefix's colon.
    """
    if name in _MODELS:
        return _MODELS[name]
    prefix, sep, rest = name.partition(":")
    if sep:
        if prefix not in _PREFIXES:
            raise ConfigError(
                f"unknown model prefix {prefix + ':'!r} in {name!r}; known prefixes: "
                f"{', '.join(p + ':' for p in sorted(_PREFIXES)) or 'none'}"
            )
        if not rest:
            raise ConfigError(f"model {name!r} names no model after {prefix + ':'!r}")
        return functools.partial(_PREFIXES[prefix][0], rest)
    known = ", ".join(list_models(include_prefixes=True))
    raise ConfigError(f"unknown model {name!r}; known models: {known}")


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the model ``name`` with keyword arguments checked against its factory.

    ``name`` is a registered name or ``"<prefix>:<name>"`` of a registered prefix family; a family
    factory checks its own keywords (raising ``ConfigError`` too).

    Raises:
        ConfigError: If the name is unknown (the message lists the known names) or a keyword is not
            accepted by the factory (the message names it and lists the accepted ones).
    """
    factory = get_model_factory(name)
    if name not in _MODELS:
        return factory(**kwargs)
    params = inspect.signature(factory).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        bad = sorted(set(kwargs) - set(params))
        if bad:
            raise ConfigError(
                f"model {name!r} does not accept {', '.join(repr(b) for b in bad)}; "
                f"accepted arguments: {', '.join(params)}"
            )
    return factory(**kwargs)


def build_model(name: str, defaults: Mapping[str, Any], options: Mapping[str, Any]) -> nn.Module:
    """Build ``name`` from the engine's standard arguments and the user's options.

    ``defaults`` (``in_chans``, ``num_classes`` or ``out_chans``, ``img_size``, ``spatial_dims``, ``preset``,
    ...) describe the task's data and head; each factory gets those among them that it names as parameters,
    so one task serves models with different needs. ``options`` (the config's ``model.options``) are passed
    as given and override the defaults; a factory that does not take one raises a ConfigError naming it.
    """
    factory = get_model_factory(name)
    named = {
        p.name
        for p in inspect.signature(factory).parameters.values()
        if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    }
    kwargs = {key: value for key, value in defaults.items() if key in named}
    try:
        return create_model(name, **{**kwargs, **options})
    except (TypeError, ValueError) as error:  # a factory that cannot take what the task gives
        given = ", ".join(f"{k}={v!r}" for k, v in {**kwargs, **options}.items())
        raise ConfigError(f"model {name} cannot be built with {given}: {error}") from None


def square_side(img_size: int | tuple[int, ...], model: str) -> int:
    """The side of a square input given as an int or an (S, S) pair; anything else is a ConfigError."""
    if isinstance(img_size, int):
        return img_size
    sides = set(img_size)
    if len(img_size) != 2 or len(sides) != 1:
        raise ConfigError(f"model {model} takes square 2-D inputs (img_size S or [S, S]), got {list(img_size)}")
    return int(sides.pop())


def volume_size(img_size: int | Sequence[int], model: str) -> tuple[int, int, int]:
    """A 3-D input size (D, H, W) given as an int (a cube) or three numbers; anything else is a ConfigError."""
    size = [img_size] * 3 if isinstance(img_size, int) else [int(s) for s in img_size]
    if len(size) != 3:
        raise ConfigError(f"{model} is a 3-D model; img_size must be (D, H, W), got {size}")
    return size[0], size[1], size[2]


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
