"""The training loop: seeding, device choice, NaN guard, evaluation callbacks, checkpoints that resume exactly.

Why a callback per evaluation rather than a logger: the sweep layer reports to Ray Tune (and checkpoints)
from it, the CLI prints from it, and tests inspect it -- the trainer itself knows nothing about any of them.
Checkpoints hold config, model, optimizer, step and every RNG state (NVAE style), and the data order is a
pure function of (seed, epoch), so a resumed run takes the same next step as one that never stopped.
"""

from __future__ import annotations

import math
import os
import random
import socket
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from . import __version__
from .config import Config
from .data import DatasetSplits, load_dataset
from .metrics import evaluate, gradient_variance, peak_memory_bytes
from .model import HierarchicalVAE
from .objectives import beta_at, training_loss

CHECKPOINT_FILE = "checkpoint.pt"
Callback = Callable[["Trainer", dict[str, Any]], None]


class TrainingStalled(RuntimeError):
    """Too many consecutive optimizer steps had a non-finite loss or gradient: the run cannot recover."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Trains one configuration. `fit()` runs to the budget; it can be called again after `from_checkpoint`."""

    def __init__(self, cfg: Config, callback: Callback | None = None, data: DatasetSplits | None = None):
        self.cfg, self.callback = cfg, callback
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        self.device = pick_device(cfg.device)
        seed_everything(cfg.seed)
        self.data = data if data is not None else load_dataset(cfg.dataset, cfg.data_dir)  # data seed fixed: every run scored on the same images
        self.train_x = self.data.train if cfg.n_train is None else self.data.train[: cfg.n_train]
        eval_x = getattr(self.data, cfg.eval_split)
        self.eval_x = eval_x if cfg.eval_max_examples is None else eval_x[: cfg.eval_max_examples]
        self.model = HierarchicalVAE(cfg, self.data.image_shape, self.data.likelihood).to(self.device)
        # fused Adam: one kernel for all parameters instead of a Python loop (~5x faster step on small models)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=cfg.lr, fused=True)
        self.batches_per_epoch = math.ceil(self.train_x.shape[0] / cfg.batch_size)
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.batches_per_epoch
        self.step = 0
        self.skipped_steps = 0
        self.consecutive_skips = 0
        self.train_seconds = 0.0  # optimizer steps only: time per epoch compares methods, not evaluation
        self.eval_seconds = 0.0
        # Every evaluation's metrics, in order; checkpointed, so a run that continues from a checkpoint still
        # has them (a sweep re-reports them when it cannot know which reports reached its driver).
        self.history: list[dict[str, Any]] = []
        self._order, self._order_epoch = torch.empty(0, dtype=torch.long), -1
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)

    @property
    def last_metrics(self) -> dict[str, Any] | None:
        """The newest evaluation's metrics (None before the first evaluation)."""
        return self.history[-1] if self.history else None

    # ----- training ---------------------------------------------------------------------------------
    @property
    def epoch(self) -> float:
        return self.step / self.batches_per_epoch

    def fit(self) -> dict[str, Any]:
        self.model.train()
        t0 = time.perf_counter()
        while self.step < self.total_steps:
            self.train_step(self.batch_at(self.step))
            at_epoch_end = self.step % self.batches_per_epoch == 0
            final = self.step >= self.total_steps
            if final or (at_epoch_end and (self.step // self.batches_per_epoch) % self.cfg.eval_every == 0):
                self.train_seconds += time.perf_counter() - t0
                self.evaluate_and_report(is_final=final)
                t0 = time.perf_counter()
        if self.last_metrics is None or not self.last_metrics["is_final"]:  # resumed after the last step
            self.evaluate_and_report(is_final=True)
        return self.last_metrics

    def batch_at(self, step: int) -> torch.Tensor:
        """The training batch of optimizer step `step`: a pure function of (seed, step), so resume is exact."""
        epoch, b = divmod(step, self.batches_per_epoch)
        if self._order_epoch != epoch:
            g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + epoch)
            self._order, self._order_epoch = torch.randperm(self.train_x.shape[0], generator=g), epoch
        return self.train_x[self._order[b * self.cfg.batch_size:(b + 1) * self.cfg.batch_size]]

    def _binarize(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return torch.bernoulli(x) if self.data.binarization == "dynamic" else x

    def train_step(self, x_batch: torch.Tensor) -> float:
        """One optimizer step on a batch; a non-finite loss or gradient skips the update and is counted."""
        x = self._binarize(x_batch)
        loss, _ = training_loss(self.model, x, beta_at(self.cfg, self.epoch))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # One fused norm over all gradients: the finiteness check, and clipping when grad_clip is set.
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip or math.inf)
        if not bool(torch.isfinite(loss) & torch.isfinite(norm)):
            self.skipped_steps += 1
            self.consecutive_skips += 1
            self.step += 1
            if self.consecutive_skips >= self.cfg.max_skipped_steps:
                raise TrainingStalled(
                    f"{self.consecutive_skips} consecutive steps had a non-finite loss or gradient (step "
                    f"{self.step}, {self.skipped_steps} skipped in all): training has diverged. Lower lr "
                    f"(now {self.cfg.lr}), set grad_clip, or check the data for NaNs.")
            return float("nan")
        self.consecutive_skips = 0
        self.optimizer.step()
        self.step += 1
        return loss.item()

    # ----- evaluation ---------------------------------------------------------------------------------
    def evaluate(self) -> dict[str, Any]:
        cfg = self.cfg
        ev = evaluate(self.model, self.eval_x, iw_k=cfg.eval_iw_k, rho=cfg.effective_rho_eval,
                      batch_size=max(cfg.batch_size, 100))
        grad_var = None
        if cfg.grad_var_draws > 1:
            x = self.eval_x[: cfg.batch_size].to(self.device)
            grad_var = gradient_variance(self.model, x, beta_at(cfg, self.epoch), cfg.grad_var_draws)
        epochs_done = max(self.epoch, 1e-12)
        return {
            "epoch": int(self.step // self.batches_per_epoch),
            "step": self.step,
            "time_per_epoch_s": self.train_seconds / epochs_done,
            "peak_memory_bytes": peak_memory_bytes(self.device),
            "skipped_steps": self.skipped_steps,
            "hostname": socket.gethostname(),
            "split": cfg.eval_split,
            **ev.as_dict(),
            "grad_var": grad_var,
        }

    def evaluate_and_report(self, is_final: bool) -> dict[str, Any]:
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            # evaluation draws must not change the training trajectory (or resume would differ)
            metrics = {**self.evaluate(), "is_final": is_final}
        self.eval_seconds += time.perf_counter() - t0
        metrics["wall_time_s"] = self.train_seconds + self.eval_seconds
        self.history.append(metrics)
        if self.callback is not None:
            self.callback(self, metrics)
        return metrics

    # ----- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, directory: str | os.PathLike) -> Path:
        """Write everything needed to resume into `directory`/checkpoint.pt (atomically)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "ouvae_version": __version__,
            "config": self.cfg.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "skipped_steps": self.skipped_steps,
            "consecutive_skips": self.consecutive_skips,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
            "history": self.history,
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
        }
        path = directory / CHECKPOINT_FILE
        tmp = path.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, path)
        return path

    @classmethod
    def from_checkpoint(cls, directory: str | os.PathLike, callback: Callback | None = None,
                        data: DatasetSplits | None = None, **overrides: Any) -> "Trainer":
        """Rebuild a trainer from `directory`/checkpoint.pt; `overrides` may change e.g. device or data_dir."""
        path = Path(directory) / CHECKPOINT_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no checkpoint at {path}: pass the folder a Trainer.save_checkpoint wrote")
        state = torch.load(path, map_location="cpu", weights_only=False)
        cfg = Config.from_dict(state["config"]).replace(**overrides)
        trainer = cls(cfg, callback=callback, data=data)
        trainer.model.load_state_dict(state["model"])
        trainer.optimizer.load_state_dict(state["optimizer"])
        for key in ("step", "skipped_steps", "consecutive_skips", "train_seconds", "eval_seconds"):
            setattr(trainer, key, state[key])
        # Checkpoints written before the history was kept hold only the newest evaluation.
        trainer.history = state.get("history") or ([state["last_metrics"]] if state.get("last_metrics") else [])
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        np.random.set_state(rng["numpy"])
        random.setstate(rng["python"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return trainer
