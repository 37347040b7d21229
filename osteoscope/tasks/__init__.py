"""Tasks: one module per diagnostic problem, each a :class:`~osteoscope.tasks.base.Task` subclass.

Task modules in this package are found by name, so adding a task means adding its module (and its
phantom); nothing else lists them. A module registers its task by defining ``TASK``, the Task subclass.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Mapping
from functools import cache
from typing import Any

from osteoscope.errors import ConfigError
from osteoscope.tasks.base import Task

__all__ = ["Task", "get_task", "make_task", "task_classes"]


@cache
def task_classes() -> dict[str, type[Task]]:
    """Every task of the package by name, in module order."""
    found: dict[str, type[Task]] = {}
    for module in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module.name == "base":
            continue
        task = getattr(importlib.import_module(f"{__name__}.{module.name}"), "TASK", None)
        if task is not None:
            if task.name in found:
                raise ConfigError(f"two task modules define the task name {task.name!r}")
            found[task.name] = task
    return found


def get_task(name: str) -> type[Task]:
    """The task class called ``name``, or a ConfigError listing the known tasks."""
    tasks = task_classes()
    if name not in tasks:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(tasks)})")
    return tasks[name]


def make_task(
    name: str, options: Mapping[str, Any] | None = None, loss_options: Mapping[str, Any] | None = None
) -> Task:
    """The task ``name`` configured with its data and loss options (strictly checked)."""
    return get_task(name)(options, loss_options)
