"""Training a population: many runs of one architecture as ONE batched model, each member its own run.

Why, and what is per member or shared: docs/populations.md (HFTA, Wang et al., MLSys 2021). In short, a member
keeps its parameters (initialised from its seed as a run alone, ``ouvae/layers.py``), data order, rho, beta
schedule, free bits, gradient norm, clipping, Adam state (``ouvae/optim.py``), failure and history; the noise
stream, step counter, learning rate and evaluation images are shared. Results agree with runs alone in
distribution, and bit for bit with a rerun of the same population (members, order, device), also after
resuming from a checkpoint.
"""

from __future__ import annotations

import json
import math
import socket
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from . import checkpoint
from .checkpoint import CHECKPOINT_FILE, CheckpointFormatError
from .config import IDENTITY, MEMBER, Config, ConfigError, digest_seed, hashed, settings_with, short_hash
from .data import DatasetSplits, load_config_dataset
from .memory import peak_memory_bytes
from .layers import member_slices
from .metrics import evaluate, gradient_variance
from .model import HierarchicalVAE, Noise
from .objectives import MemberSchedules, rows_for, training_loss
from .optim import MemberAdam

# Config fields a member may set for itself; every other field must be equal across a population.
# What members of one population may differ in: the MEMBER and IDENTITY settings (ouvae/config.py).
MEMBER_FIELDS = settings_with(MEMBER, IDENTITY)

Callback = Callable[["Population", list[dict[str, Any]]], None]
# Members per forward/backward pass on a CPU: larger chunks leave the caches, and per-member speed falls (measured
# with benchmarks/population_bench.py: BENCHMARKS.md, "Populations"). A GPU takes the whole population at once.
CPU_MEMBER_CHUNK = 8
# Checkpoint cadence on a GPU when the config sets none (Config.checkpoint_every_*): a population's checkpoint is
# large (~620 MB at M = 64 for the 4x40 MLP), and a GPU evaluates every few seconds.
GPU_CHECKPOINT_MINUTES = 10.0


def compile_step(step: Callable, device: torch.device, state: Sequence[torch.Tensor]) -> Callable:
    """The whole training step compiled: on CUDA with mode "reduce-overhead" (CUDA graphs: one launch replays
    the step; `state`, the tensors it updates in place, keep fixed addresses so the graph may write them), on a
    CPU with inductor's default mode (fused C++ loops). The backward pass splits it into graphs that
    torch.compile joins; noise and data are drawn before it, eagerly, from the population's own generator."""
    if device.type == "cuda":
        for t in state:
            torch._dynamo.mark_static_address(t)
        return torch.compile(step, mode="reduce-overhead")
    return torch.compile(step)


@contextmanager
def matmul_precision(tf32: bool, device: torch.device) -> Iterator[None]:
    """TF32 matrix products (and cuDNN convolutions) on CUDA while the block runs, restored after it: a setting of
    this population, not of the process (PyTorch's switches are process-wide). A no-op on a CPU."""
    if device.type != "cuda":
        yield
        return
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


class TrainingStalled(RuntimeError):
    """Every member of a run had too many consecutive non-finite steps: training cannot recover."""


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was requested but torch sees no CUDA GPU; use device='auto' or 'cpu'")
    return torch.device(name)


def shared_settings(cfg: Config) -> dict[str, Any]:
    """The settings every member of a population shares (all but MEMBER_FIELDS)."""
    return {k: v for k, v in cfg.to_dict().items() if k not in MEMBER_FIELDS}


def population_key(cfg: Config) -> str:
    """Equal keys = configurations that can train together in one population (the sweeps group by it)."""
    return short_hash(hashed(shared_settings(cfg)))


def check_population(configs: Sequence[Config]) -> None:
    """Refuse configurations that cannot share one batched model, naming the settings that differ."""
    if not configs:
        raise ConfigError("a population needs at least one configuration")
    first = shared_settings(configs[0])
    for i, cfg in enumerate(configs[1:], 1):
        other = shared_settings(cfg)
        diff = sorted(k for k in first if first[k] != other[k])
        if diff:
            shown = ", ".join(f"{k}={first[k]!r} vs {other[k]!r}" for k in diff[:4])
            raise ConfigError(f"member {i} cannot train in the same population as member 0: they differ in {shown}"
                              f" (members may differ only in {', '.join(MEMBER_FIELDS)}); group runs by "
                              f"ouvae.population.population_key")


def derived_seed(*parts: Any) -> int:
    """A 63-bit seed from any parts (member seeds, a step, a purpose), stable across machines and versions."""
    return digest_seed(list(parts)) >> 1


@dataclass
class Member:
    """One run inside a population: its configuration and what it has done so far."""

    cfg: Config
    history: list[dict[str, Any]] = field(default_factory=list)
    skipped_steps: int = 0
    consecutive_skips: int = 0
    failure: str | None = None  # why it stopped training (set once, then it is frozen)
    failure_reported: bool = False  # its last row (with the failure) went to the callback

    @property
    def active(self) -> bool:
        return self.failure is None

    @property
    def finished(self) -> bool:
        """Its final evaluation (end of the budget) is recorded."""
        return bool(self.history) and bool(self.history[-1]["is_final"])

    def state(self) -> str:
        """JSON of everything but the config (checkpoints hold plain data only)."""
        return json.dumps({f.name: getattr(self, f.name) for f in fields(self) if f.name != "cfg"})

    def restore(self, text: str) -> None:
        for key, value in json.loads(text).items():
            setattr(self, key, value)


class Population:
    """Trains M configurations that share an architecture (check_population) as one model.

    ``callback(population, rows)`` runs after each evaluation with one metrics dict per member that is still
    training -- plus, once, the last row of a member that failed since the previous evaluation (its ``failure``
    says why). ``on_checkpoint(population)``, if given, runs when a checkpoint is due (``checkpoint_due``; at an
    evaluation before its callback, so that a reported final step always has its checkpoint). ``fit()`` runs to
    the budget; a population restored with ``from_checkpoint`` continues exactly.
    """

    def __init__(self, configs: Sequence[Config], callback: Callback | None = None,
                 data: DatasetSplits | None = None, *, chunk: int | None = None,
                 on_checkpoint: Callable[["Population"], None] | None = None):
        check_population(configs)
        self.members = [Member(c) for c in configs]
        self.cfg = cfg = configs[0]  # the shared settings (member fields: see self.members)
        self.callback, self.on_checkpoint = callback, on_checkpoint
        self.device = pick_device(cfg.device)
        # The data seed is fixed: every member and every run is scored on the same images.
        self.data = data if data is not None else load_config_dataset(cfg)
        train = self.data.train if cfg.n_train is None else self.data.train[: cfg.n_train]
        evals = getattr(self.data, cfg.eval_split)
        evals = evals if cfg.eval_max_examples is None else evals[: cfg.eval_max_examples]
        self.train_x, self.eval_x = train.to(self.device), evals.to(self.device)  # kept on the device
        seeds = [c.seed for c in configs]
        self.model = HierarchicalVAE(cfg, self.data.image_shape, self.data.likelihood, seeds).to(self.device)
        self.optimizer = MemberAdam(self.model.flat, cfg.lr, decay_steps=cfg.lr_decay_steps,
                                    decay_power=cfg.lr_decay_power)
        # members per pass: a fixed function of the device (so the same population gives the same numbers)
        self.chunk = chunk if chunk is not None else (CPU_MEMBER_CHUNK if self.device.type == "cpu" else None)
        self._chunks = member_slices(len(configs), self.chunk)
        self.seed = seeds[0] if len(seeds) == 1 else derived_seed("population", seeds)
        self.generator = torch.Generator(self.device).manual_seed(self.seed)
        self.batches_per_epoch = math.ceil(self.train_x.shape[0] / cfg.batch_size)
        self.total_steps = cfg.steps if cfg.steps is not None else cfg.epochs * self.batches_per_epoch
        self.step = 0
        self.train_seconds = 0.0  # optimizer steps only: time per epoch compares methods, not evaluation
        self.eval_seconds = 0.0
        self._last_checkpoint = (0, time.monotonic())  # (step, clock) of the newest checkpoint (or the start)
        self.rho = [c.rho for c in configs]
        self.rho_eval = [c.effective_rho_eval for c in configs]
        as_tensor = lambda v, dtype=torch.float32: torch.tensor(v, dtype=dtype, device=self.device)  # noqa: E731
        self._rho_t = as_tensor(self.rho)
        self._free_bits_t = as_tensor([c.free_bits for c in configs])
        self._schedules = MemberSchedules(configs, self.device)
        # What a step decides lives on the device and is read by the host only in sync_members (evaluations and
        # every failure_check_steps): the step counter (for beta), each member's skip counters and failure mark.
        self._step_t = as_tensor(0, torch.int64)
        self._max_skips_t = as_tensor([c.max_skipped_steps for c in configs], torch.int64)
        self._consecutive_t = as_tensor([0] * len(configs), torch.int64)
        self._skipped_t = torch.zeros_like(self._consecutive_t)
        self._failed_step_t = torch.zeros_like(self._consecutive_t)  # the step a member failed at (0: it has not)
        self._order = torch.empty(0, dtype=torch.long)
        self._order_epoch = -1
        self._step_fn = self._compute_and_update
        if cfg.compile_step:
            self._step_fn = compile_step(self._compute_and_update, self.device, [
                self.model.flat, *self.optimizer.tensors(), self._step_t, self._consecutive_t, self._skipped_t,
                self._failed_step_t])

    @property
    def size(self) -> int:
        return len(self.members)

    @property
    def epoch(self) -> float:
        return self.step / self.batches_per_epoch

    @property
    def done(self) -> bool:
        """Every member has finished its budget (final evaluation recorded) or failed."""
        return all(m.failure_reported or m.finished for m in self.members)

    # ----- training ---------------------------------------------------------------------------------------------
    def fit(self) -> list[dict[str, Any]]:
        """Train to the budget; returns every member's last metrics (a failed member's is its failure row).
        Raises TrainingStalled when every member has failed. A member's failure is found at the next evaluation
        or skip-counter read (failure_check_steps) and reported with the next scheduled evaluation; only when
        every member has failed does the population stop and report at once."""
        t0 = time.perf_counter()
        while self.step < self.total_steps and any(m.active for m in self.members):
            self.train_step()
            final = self.step >= self.total_steps
            due = self.evaluates_at(self.step)
            if not (final or due) and self.step % self.cfg.failure_check_steps == 0:
                self.sync_members()
                due = not any(m.active for m in self.members)
            if final or due:
                self.train_seconds += time.perf_counter() - t0
                self.evaluate_and_report(is_final=final)
                t0 = time.perf_counter()
            elif self.on_checkpoint is not None and self.checkpoint_due(at_evaluation=False):
                self._checkpoint()
        if any(m.active and not m.finished for m in self.members):
            self.evaluate_and_report(is_final=True)  # resumed after the last step
        if not any(m.active for m in self.members):
            reasons = dict.fromkeys(m.failure.removeprefix(f"{TrainingStalled.__name__}: ")
                                    for m in self.members if m.failure)
            raise TrainingStalled("; ".join(reasons))
        return [m.history[-1] for m in self.members]

    def evaluates_at(self, step: int) -> bool:
        """Whether `step` is on the evaluation cadence (the end of every eval_every-th epoch); the budget's last
        step is evaluated as well."""
        epoch, rest = divmod(step, self.batches_per_epoch)
        return rest == 0 and epoch % self.cfg.eval_every == 0

    def _reopen(self) -> None:
        """After the budget was raised past the step a member finished at: its history becomes that of a run
        trained to the new budget in one go. The old final evaluation stays (no longer final) where the cadence
        evaluates that step anyway, and is dropped where only the old budget's end made it an evaluation."""
        if self.step >= self.total_steps:
            return
        for mem in self.members:
            if mem.active and mem.finished:
                last = mem.history[-1]
                if self.evaluates_at(last["step"]):
                    last["is_final"] = False
                else:
                    mem.history.pop()

    def batch_indices(self, step: int) -> torch.Tensor:
        """(M, B) training-image indices of optimizer step `step`: member m's are a pure function of (its seed,
        epoch), the same as when it trains alone, so resume is exact."""
        epoch, b = divmod(step, self.batches_per_epoch)
        if self._order_epoch != epoch:
            n = self.train_x.shape[0]
            orders = [torch.randperm(n, generator=torch.Generator().manual_seed(m.cfg.seed * 1_000_003 + epoch))
                      for m in self.members]
            self._order, self._order_epoch = torch.stack(orders).to(self.device), epoch
        size = self.cfg.batch_size
        return self._order[:, b * size:(b + 1) * size]

    def train_step(self) -> torch.Tensor:
        """One optimizer step of every member on its own batch; returns each member's loss as an (M,) tensor on
        the device (NaN where the step was skipped or the member has failed) without waiting for it. A member
        whose loss or gradient is not finite skips this update and is counted, on the device."""
        x = self.train_x[self.batch_indices(self.step)]
        if self.data.binarization == "dynamic":
            x = torch.bernoulli(x, generator=self.generator)
        rows = rows_for(self.model, x.shape[1])
        noises = [self.model.draw_noise(rows, self.rho[part], self.generator) for part in self._chunks]
        with matmul_precision(self.cfg.tf32, self.device):
            losses = self._step_fn(x, noises)
        self.step += 1
        return losses

    def _compute_and_update(self, x: torch.Tensor, noises: list[Noise]) -> torch.Tensor:
        """The step on the device: forward, backward, per-member check and clipping, Adam, skip counters. No host
        read of a device tensor, no copy from the host, and its dispatched ops do not grow with the members (one
        pass when the population is one chunk, as on a GPU): what compile_step captures as one graph."""
        beta = self._schedules.beta(self._step_t.double() / self.batches_per_epoch)
        parts = []
        for part, noise in zip(self._chunks, noises):  # a chunk of members at a time: their rows, as a leaf
            params = self.model.flat[part].detach().requires_grad_()
            loss = training_loss(self.model, x[part], self._rho_t[part], noise, beta[part], self._free_bits_t[part],
                                 params)
            loss.per_member.sum().backward()  # a sum: each member's gradient is its own
            self.optimizer.grad[part].copy_(params.grad)
            parts.append(loss.per_member.detach())
        per_member = torch.cat(parts) if len(parts) > 1 else parts[0]
        active = self._failed_step_t == 0
        ok = self.optimizer.check_and_clip(per_member, self.cfg.grad_clip, active)
        self.optimizer.step(ok & active)
        skipped = active & ~ok
        consecutive = self._consecutive_t
        consecutive.copy_(torch.where(ok & active, 0, consecutive + skipped.long()))
        self._skipped_t.add_(skipped.long())
        self._step_t.add_(1)
        newly_failed = skipped & (consecutive >= self._max_skips_t)
        self._failed_step_t.copy_(torch.where(newly_failed, self._step_t, self._failed_step_t))
        return torch.where(ok & active, per_member, math.nan)

    def sync_members(self) -> None:
        """Read the device's skip counters and failure marks into the members (one wait for the device): a member
        that failed since the last read gets its failure message, naming the step it failed at."""
        counters = torch.stack([self._consecutive_t, self._skipped_t, self._failed_step_t]).tolist()
        for m, consecutive, skipped, failed_step in zip(self.members, *counters):
            m.consecutive_skips, m.skipped_steps = consecutive, skipped
            if failed_step and m.failure is None:
                m.failure = (f"TrainingStalled: {consecutive} consecutive steps had a non-finite loss or gradient "
                             f"(step {failed_step}, {skipped} skipped in all): training has diverged. Lower lr "
                             f"(now {m.cfg.lr}), set grad_clip, or check the data for NaNs.")

    def _load_member_counters(self) -> None:
        """The members' counters and failure marks (restored from a checkpoint) onto the device."""
        with torch.no_grad():
            self._step_t.fill_(self.step)
            self._consecutive_t.copy_(torch.tensor([m.consecutive_skips for m in self.members]))
            self._skipped_t.copy_(torch.tensor([m.skipped_steps for m in self.members]))
            self._failed_step_t.copy_(torch.tensor([0 if m.active else max(self.step, 1) for m in self.members]))

    # ----- evaluation -------------------------------------------------------------------------------------------
    def evaluate(self) -> list[dict[str, Any]]:
        """Every member's metrics now (ELBO, L_k, per-layer KL and active units, ...), without reporting them.
        Evaluation draws its noise from a generator of its own, seeded by the step, so it never changes the
        training trajectory."""
        cfg, m = self.cfg, self.size
        self.sync_members()
        gen = torch.Generator(self.device).manual_seed(derived_seed("evaluation", self.seed, self.step))
        with matmul_precision(cfg.tf32, self.device):
            evals = evaluate(self.model, self.eval_x, iw_k=cfg.eval_iw_k, rho=self.rho_eval, generator=gen,
                             batch_size=max(cfg.batch_size, 100), chunk=self.chunk)
            grad_var: list[float | None] = [None] * m
            if cfg.grad_var_draws > 1:
                x = self.eval_x[: cfg.batch_size]
                beta = self._schedules.beta(torch.tensor(self.epoch, dtype=torch.float64, device=self.device))
                grad_var = gradient_variance(self.model, x, rho=self.rho, beta=beta, free_bits=self._free_bits_t,
                                             draws=cfg.grad_var_draws, generator=gen, chunk=self.chunk)
        common = {"epoch": int(self.step // self.batches_per_epoch), "step": self.step,
                  "time_per_epoch_s": self.train_seconds / max(self.epoch, 1e-12),
                  "peak_memory_bytes": peak_memory_bytes(self.device), "hostname": socket.gethostname(),
                  "split": cfg.eval_split, "population_size": m}
        return [{**common, **ev.as_dict(), "grad_var": gv, "member": i, "skipped_steps": mem.skipped_steps,
                 "failure": mem.failure}
                for i, (ev, gv, mem) in enumerate(zip(evals, grad_var, self.members))]

    def evaluate_and_report(self, is_final: bool) -> list[dict[str, Any]]:
        t0 = time.perf_counter()
        metrics = self.evaluate()
        self.eval_seconds += time.perf_counter() - t0
        rows = []
        for mem, row in zip(self.members, metrics):
            if mem.failure_reported:
                continue
            row.update(is_final=is_final and mem.active, wall_time_s=self.train_seconds + self.eval_seconds)
            mem.history.append(row)
            mem.failure_reported = not mem.active
            rows.append(row)
        if self.on_checkpoint is not None and (self.done or self.checkpoint_due(at_evaluation=True)):
            self._checkpoint()
        if self.callback is not None and rows:
            self.callback(self, rows)
        return rows

    # ----- checkpoints --------------------------------------------------------------------------------------------
    def checkpoint_due(self, at_evaluation: bool) -> bool:
        """Whether the config's checkpoint cadence asks for one now (host clock and step only: no device read)."""
        steps, minutes = self.cfg.checkpoint_every_steps, self.cfg.checkpoint_every_minutes
        if steps is None and minutes is None:
            if self.device.type == "cpu":
                return at_evaluation
            minutes = GPU_CHECKPOINT_MINUTES
        last_step, last_clock = self._last_checkpoint
        return (steps is not None and self.step - last_step >= steps) or \
            (minutes is not None and time.monotonic() - last_clock >= 60 * minutes)

    def _checkpoint(self) -> None:
        self.on_checkpoint(self)
        self._last_checkpoint = (self.step, time.monotonic())

    def _state(self, members: Sequence[int], rng: torch.Tensor) -> dict[str, Any]:
        idx = torch.tensor(list(members), device=self.device)
        rows = lambda t: t.detach()[idx].cpu()  # noqa: E731 - indexing copies: only these members leave the device
        return {
            "configs": [json.dumps(self.members[i].cfg.to_dict()) for i in members],
            "layout": json.dumps(self.model.layout.describe()),
            "params": rows(self.model.flat),
            "optimizer": {k: rows(v) for k, v in self.optimizer.state_dict().items()},
            "step": self.step,
            "members": [self.members[i].state() for i in members],
            "rng": rng,
            "rng_device": self.device.type,
            "train_seconds": self.train_seconds,
            "eval_seconds": self.eval_seconds,
        }

    def save_checkpoint(self, directory: str | Path) -> Path:
        """Everything needed to continue exactly -- all members, optimizer, step, RNG, histories -- written
        atomically to `directory`/checkpoint.pt (plain tensors and text: ouvae/checkpoint.py)."""
        self.sync_members()
        state = self._state(range(self.size), self.generator.get_state())
        return checkpoint.write(state, Path(directory) / CHECKPOINT_FILE)

    def export_member(self, member: int, directory: str | Path) -> Path:
        """Member `member` as an ordinary single-run checkpoint (``python -m ouvae.train --resume`` and
        evaluation accept it). Its noise stream continues from a generator seeded by (its seed, step): a valid
        continuation of that run, though not the numbers it would have drawn inside this population."""
        if not 0 <= member < self.size:
            raise IndexError(f"member {member} does not exist in a population of {self.size}")
        self.sync_members()
        gen = torch.Generator(self.device).manual_seed(derived_seed("export", self.members[member].cfg.seed,
                                                                     self.step))
        return checkpoint.write(self._state([member], gen.get_state()), Path(directory) / CHECKPOINT_FILE)

    @classmethod
    def from_checkpoint(cls, directory: str | Path, callback: Callback | None = None,
                        data: DatasetSplits | None = None, *, chunk: int | None = None,
                        on_checkpoint: Callable[["Population"], None] | None = None,
                        **overrides: Any) -> "Population":
        """Rebuild a population from `directory`/checkpoint.pt; `overrides` apply to every member (e.g. a larger
        budget, or the runtime settings device, data_dir, num_threads); `chunk` as for the constructor.

        A larger budget (epochs or steps) continues a run that had finished: its rows, parameters and noise stream
        are then exactly those of a run trained to the larger budget in one go (``_reopen``; tested bit for bit)."""
        path = Path(directory) / CHECKPOINT_FILE
        state = checkpoint.read(path)
        try:
            configs = [Config.from_dict(json.loads(text)).replace(**overrides) for text in state["configs"]]
        except ConfigError as e:
            raise CheckpointFormatError(f"{path}: its configuration is not valid here ({e})") from None
        pop = cls(configs, callback=callback, data=data, chunk=chunk, on_checkpoint=on_checkpoint)
        if json.loads(state["layout"]) != pop.model.layout.describe() or \
                tuple(state["params"].shape) != tuple(pop.model.flat.shape):
            raise CheckpointFormatError(f"{path}: its parameters do not fit the model its configuration describes "
                                        f"(another ouvae version or a damaged file): retrain the run")
        with torch.no_grad():
            pop.model.flat.copy_(state["params"])
        pop.optimizer.load_state_dict(state["optimizer"])
        pop.step = int(state["step"])
        pop._last_checkpoint = (pop.step, time.monotonic())
        pop.train_seconds, pop.eval_seconds = float(state["train_seconds"]), float(state["eval_seconds"])
        for mem, text in zip(pop.members, state["members"]):
            mem.restore(text)
        pop._load_member_counters()
        pop._reopen()  # a larger budget continues a finished run as if it had been trained to it in one go
        if state.get("rng_device", "cpu") == pop.device.type:
            pop.generator.set_state(state["rng"])
        else:  # CPU and CUDA generators have different states: continue validly, though not bit for bit
            pop.generator.manual_seed(derived_seed("moved", pop.seed, pop.step, state["rng_device"]))
        return pop
