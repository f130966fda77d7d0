"""One training run: a population of one, with the single-run API the command line and notebooks use.

Why a thin wrapper and not a second trainer: a run alone and a member of a population must be the same model,
loss, optimizer and loop (``ouvae/population.py``), so this class only adapts names -- one config instead of a
list, one metrics dict instead of one per member, and TrainingStalled when the run fails. Checkpoints are the
population's format with one member (plain tensors, ``ouvae/checkpoint.py``), so an exported member of a
population loads here too.

The trainer owns its random generators and touches no process-wide state: it neither seeds torch's global
generator nor sets the thread count (the command line and the sweep trainable, which own their process, do).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

import torch

from .checkpoint import CHECKPOINT_FILE, CheckpointFormatError
from .config import Config
from .data import DatasetSplits
from .population import Population, TrainingStalled, pick_device

__all__ = ["CHECKPOINT_FILE", "Trainer", "TrainingStalled", "pick_device"]

Callback = Callable[["Trainer", dict[str, Any]], None]


class Trainer:
    """Trains one configuration. `fit()` runs to the budget; it can be called again after `from_checkpoint`."""

    def __init__(self, cfg: Config, callback: Callback | None = None, data: DatasetSplits | None = None, *,
                 population: Population | None = None):
        self.callback = callback
        self.population = population if population is not None else Population([cfg], data=data)
        self.population.callback = self._forward

    def _forward(self, population: Population, rows: list[dict[str, Any]]) -> None:
        if self.callback is not None:
            self.callback(self, rows[0])

    # ----- the run's state ----------------------------------------------------------------------------------------
    @property
    def cfg(self) -> Config:
        return self.population.members[0].cfg

    @property
    def data(self) -> DatasetSplits:
        return self.population.data

    @property
    def model(self):  # noqa: ANN201 - HierarchicalVAE with one member
        return self.population.model

    @property
    def device(self):  # noqa: ANN201 - torch.device
        return self.population.device

    @property
    def step(self) -> int:
        return self.population.step

    @property
    def total_steps(self) -> int:
        return self.population.total_steps

    @property
    def history(self) -> list[dict[str, Any]]:
        """Every evaluation's metrics, in order (checkpointed, so a continued run still has them)."""
        return self.population.members[0].history

    @property
    def last_metrics(self) -> dict[str, Any] | None:
        return self.history[-1] if self.history else None

    # ----- training -----------------------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train to the budget and return the final metrics; TrainingStalled if the run diverged."""
        return self.population.fit()[0]

    def train_step(self) -> torch.Tensor:
        """One optimizer step; the loss as a 0-d tensor on the device (NaN if the step was skipped: non-finite
        loss or gradient), not waited for."""
        return self.population.train_step()[0]

    def evaluate(self) -> dict[str, Any]:
        """The metrics now, without recording them."""
        return self.population.evaluate()[0]

    # ----- checkpoints --------------------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str | os.PathLike) -> Path:
        """Write everything needed to resume into `directory`/checkpoint.pt (atomically)."""
        return self.population.save_checkpoint(directory)

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, callback: Callback | None = None,
                        data: DatasetSplits | None = None, **overrides: Any) -> "Trainer":
        """Rebuild a run from `directory`/checkpoint.pt; `overrides` may change e.g. the budget, device or
        data_dir. A population checkpoint of several members is refused: export one member first."""
        population = Population.from_checkpoint(directory, data=data, **overrides)
        if population.size != 1:
            raise CheckpointFormatError(
                f"{Path(directory) / CHECKPOINT_FILE} holds a population of {population.size} runs, not one run: "
                f"load it with ouvae.population.Population.from_checkpoint, or export one member with "
                f"Population.export_member(i, folder)")
        return cls(population.cfg, callback=callback, population=population)
