"""Tasks: data shape + labels + loss + default model named together in one place.

Adding a task means adding one :class:`Task` here (and a phantom); the trainer, evaluator and CLI read
everything they need from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from osteoscope.config import DataConfig, LossConfig
from osteoscope.data.datasets import BilateralRois, LabelKind, SampleBuilder
from osteoscope.errors import ConfigError
from osteoscope.losses import BilateralLoss


@dataclass(frozen=True)
class Task:
    """What a task needs from the data and how its models are trained.

    Attributes:
        name: Task name used in configs and on the command line.
        description: One line for ``osteoscope tasks``.
        label_columns: Manifest label columns of the target.
        label_values: Allowed values per label column.
        kind: Binary, multi-class or multi-label target.
        default_model: Registered model name used when the config names none.
        make_builder: ``(data_config, train, cache) -> SampleBuilder``; ``train`` switches augmentation on,
            ``cache`` (a dict or None) is shared by builders that may keep decoded data in memory.
        make_loss: ``loss_config -> loss module`` taking ``(outputs, batch)``.
        subsets: Named case subsets reported separately in evaluation: name -> stages included
            (negatives always included), e.g. the early-stage subset.
    """

    name: str
    description: str
    label_columns: tuple[str, ...]
    label_values: dict[str, tuple[int, ...]]
    kind: LabelKind
    default_model: str
    make_builder: Callable[[DataConfig, bool, dict | None], SampleBuilder]
    make_loss: Callable[[LossConfig], nn.Module]
    subsets: dict[str, tuple[int, ...]]


def _bilateral_builder(data: DataConfig, train: bool, cache: dict | None = None) -> SampleBuilder:
    return BilateralRois(
        cache=cache,
        size=data.roi_size,
        mirror_right=data.mirror_right,
        box_jitter=data.box_jitter if train else 0.0,
        swap_sides=train,
    )


TASKS: dict[str, Task] = {
    "onfh-xray": Task(
        name="onfh-xray",
        description="ONFH yes/no (+ side) from the two femoral heads of an AP pelvis radiograph (AsT)",
        label_columns=("label",),
        label_values={"label": (0, 1)},
        kind="binary",
        default_model="ast",
        make_builder=_bilateral_builder,
        make_loss=lambda loss: BilateralLoss(
            diff_weight=loss.diff_weight, margin=loss.margin, side_weight=loss.side_weight
        ),
        subsets={"early (ARCO I-II)": (1, 2), "late (ARCO III-IV)": (3, 4)},
    ),
}


def get_task(name: str) -> Task:
    """The task called ``name``, or a ConfigError listing the known tasks."""
    if name not in TASKS:
        raise ConfigError(f"unknown task {name!r} (known: {', '.join(TASKS)})")
    return TASKS[name]
