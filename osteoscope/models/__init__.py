"""Models: a timm-style registry and the model families that register themselves in it."""

from __future__ import annotations

from osteoscope.models import adapters, ast, mr_fusion, sranet, timm_baselines, volume_baselines
from osteoscope.models.registry import (
    build_model,
    create_model,
    get_model_factory,
    list_model_prefixes,
    list_models,
    register_model,
    register_model_prefix,
)

__all__ = [
    "adapters",
    "ast",
    "build_model",
    "create_model",
    "get_model_factory",
    "list_model_prefixes",
    "list_models",
    "mr_fusion",
    "register_model",
    "register_model_prefix",
    "sranet",
    "timm_baselines",
    "volume_baselines",
]
