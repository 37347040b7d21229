"""Models: a timm-style registry and the model families that register themselves in it."""

from __future__ import annotations

from osteoscope.models import ast, timm_baselines
from osteoscope.models.registry import create_model, list_models, register_model

__all__ = ["ast", "create_model", "list_models", "register_model", "timm_baselines"]
