"""Populations on real data (scikit-learn's digits): many runs of one architecture as one batched model.

What must hold: a run from the command line is a population of one; every member is the run it would be alone, in
distribution (its own initialisation, data order, rho, schedule); a diverging member fails alone; checkpoints
resume bit for bit and any member exports as an ordinary single-run checkpoint; nothing touches global state.
"""

from __future__ import annotations

import json
import math
import statistics

import pytest
import torch

from ouvae.checkpoint import CheckpointFormatError
from ouvae.config import Config, ConfigError
from ouvae.population import Population, TrainingStalled, check_population, population_key
from ouvae.train import main as train_main
from ouvae.trainer import Trainer
from sweeps.plan import group_into_populations

torch.set_num_threads(1)


def quick(**overrides) -> Config:
    base = dict(rho=0.8, latent_dims=(5, 5), hidden_units=32, steps=40, eval_every=1000, eval_iw_k=5, n_train=400,
                eval_max_examples=100)
    return Config.from_preset("demo", **{**base, **overrides})


TIMING = ("wall_time_s", "time_per_epoch_s", "peak_memory_bytes")


def test_a_run_from_the_command_line_is_a_population_of_one(digits, tmp_path, capsys):
    """The single-run product path (`python -m ouvae.train`: options, data loading, the Trainer wrapper, its
    callback and checkpoint) trains exactly what `Population([cfg])` trains."""
    argv = ["--preset", "demo", "--rho", "0.7", "--seed", "4", "--latent-dims", "5-5", "--hidden-units", "32",
            "--steps", "30", "--eval-every", "2", "--eval-iw-k", "5", "--n-train", "400", "--eval-max-examples", "100",
            "--out", str(tmp_path), "--quiet"]
    assert train_main(argv) == 0
    cli_rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    cfg = quick(steps=30, eval_every=2, rho=0.7, seed=4)
    rows: list[dict] = []
    pop = Population([cfg], callback=lambda p, r: rows.extend(r), data=digits)
    pop.fit()
    assert torch.equal(Trainer.from_checkpoint(tmp_path, data=digits).model.flat, pop.model.flat)
    strip = lambda h: [{k: v for k, v in r.items() if k not in TIMING} for r in h]  # noqa: E731
    assert strip(cli_rows) == strip(rows) == strip(pop.members[0].history) and len(rows) > 1
    assert [r["member"] for r in rows] == [0] * len(rows) and rows[-1]["is_final"]


def test_members_start_from_their_own_seed_and_keep_their_own_data_order(digits):
    pop = Population([quick(seed=s) for s in (3, 1, 2)], data=digits)
    for m, seed in enumerate((3, 1, 2)):
        alone = Population([quick(seed=seed)], data=digits)
        assert torch.equal(pop.model.flat[m], alone.model.flat[0])
        assert torch.equal(pop.batch_indices(7)[m], alone.batch_indices(7)[0])
    assert not torch.equal(pop.batch_indices(7)[0], pop.batch_indices(7)[1])


def test_the_same_population_gives_the_same_numbers_on_a_rerun(digits):
    configs = [quick(rho=r, seed=s) for r, s in ((0.8, 0), (1.0, 1), (0.6, 2))]
    a, b = Population(configs, data=digits), Population(configs, data=digits)
    a.fit()
    b.fit()
    assert torch.equal(a.model.flat, b.model.flat)
    assert [m.history[-1]["elbo"] for m in a.members] == [m.history[-1]["elbo"] for m in b.members]


@pytest.mark.slow
def test_members_alone_and_inside_a_population_agree_in_distribution(digits):
    """Across groupings only the shared noise stream differs. Three seeds at rho = 1 and three at rho = 0.8,
    trained alone and as one population of six: per rho, the final ELBO, top-layer KL and active units agree within
    their seed-to-seed spread, and both groupings show the phenomenon (at rho = 0.8 the top layer keeps ~3x the KL
    of rho = 1, 1.1-1.25 nats against 0.34-0.44; the rho = 1 member inside the population is the plain VAE,
    tests/test_model.py). Active units do not show it at this budget: 0 of 10 at both rho once Monte Carlo noise is
    not counted (ouvae.metrics.active_units); the KL is spread thinly over the units."""
    configs = [Config.from_preset("demo", rho=rho, seed=s, n_train=797, epochs=12, eval_every=1000, eval_iw_k=10)
               for rho in (1.0, 0.8) for s in (0, 1, 2)]
    alone = [Trainer(c, data=digits).fit() for c in configs]
    together = Population(configs, data=digits).fit()
    assert [r["elbo"] for r in alone] != [r["elbo"] for r in together]  # the noise really differs
    for group in (slice(0, 3), slice(3, 6)):
        for key, floor in (("elbo", 0.1), ("top_kl", 0.05), ("top_active_units", 1.0)):
            a, b = [r[key] for r in alone[group]], [r[key] for r in together[group]]
            se = math.sqrt((statistics.variance(a) + statistics.variance(b)) / len(a))
            assert abs(statistics.mean(a) - statistics.mean(b)) <= 3 * se + floor, (key, a, b)
    for runs in (alone, together):  # a larger top-layer KL at 0.8 than at 1, by over three standard errors
        plain, smoothed = [r["top_kl"] for r in runs[:3]], [r["top_kl"] for r in runs[3:]]
        se = math.sqrt((statistics.variance(plain) + statistics.variance(smoothed)) / 3)
        assert statistics.mean(smoothed) - statistics.mean(plain) > 3 * se, (plain, smoothed)


def test_a_diverging_member_fails_alone_while_the_others_finish(digits):
    configs = [quick(seed=0), quick(seed=1, beta_max=float("inf"), max_skipped_steps=5), quick(seed=2, rho=1.0)]
    rows: list[dict] = []
    pop = Population(configs, callback=lambda p, r: rows.extend(r), data=digits)
    final = pop.fit()
    failed = [r for r in rows if r["member"] == 1]
    assert len(failed) == 1 and failed[0]["failure"].startswith("TrainingStalled: 5 consecutive steps")
    assert "(step 5, 5 skipped in all)" in failed[0]["failure"]  # the step it failed at ...
    assert failed[0]["step"] == 40 and not failed[0]["is_final"] and pop.members[1].skipped_steps == 5
    assert [r["step"] for r in rows] == [40, 40, 40]  # ... reported with the next scheduled evaluation, alone
    for m in (0, 2):
        assert final[m]["is_final"] and final[m]["skipped_steps"] == 0 and final[m]["failure"] is None
        assert all(math.isfinite(v) for v in final[m]["layer_kl"]) and math.isfinite(final[m]["elbo"])
    # frozen, not drifting: Adam's momentum must not move a member whose updates are masked
    assert torch.equal(pop.model.flat[1], Population(configs[1:2], data=digits).model.flat[0])
    with pytest.raises(TrainingStalled, match="5 consecutive steps"):
        Population(configs[1:2], data=digits).fit()


def test_gradient_variance_is_measured_for_every_member_when_asked(digits):
    """grad_var_draws > 1: every row carries its member's own first-layer gradient variance (Fig. 4)."""
    configs = [quick(seed=0, rho=1.0, grad_var_draws=4, steps=8), quick(seed=1, rho=0.6, grad_var_draws=4, steps=8)]
    final = Population(configs, data=digits).fit()
    values = [r["grad_var"] for r in final]
    assert all(v is not None and math.isfinite(v) and v > 0 for v in values) and values[0] != values[1]
    assert Population([quick(steps=8)], data=digits).fit()[0]["grad_var"] is None  # off by default


def test_population_checkpoint_resumes_bit_for_bit(digits, tmp_path):
    """Also when the members are computed in chunks (2 + 1 here; a CPU takes 8 at a time)."""
    configs = [quick(rho=r, seed=s, steps=24, eval_every=1) for r, s in ((0.8, 0), (0.9, 5), (1.0, 3))]
    straight = Population(configs, data=digits, chunk=2)
    straight.fit()
    first = Population([c.replace(steps=10) for c in configs], data=digits, chunk=2)
    first.fit()
    first.save_checkpoint(tmp_path)
    resumed = Population.from_checkpoint(tmp_path, data=digits, chunk=2, steps=24)
    resumed.fit()
    assert torch.equal(straight.model.flat, resumed.model.flat)
    assert torch.equal(straight.optimizer.exp_avg_sq, resumed.optimizer.exp_avg_sq)
    assert [m.history[-1]["elbo"] for m in straight.members] == [m.history[-1]["elbo"] for m in resumed.members]


# What differs between two runs of the same numbers: the clock, the memory peak, the machine.
TIMING = ("time_per_epoch_s", "wall_time_s", "peak_memory_bytes", "hostname")


def measured(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k not in TIMING} for row in history]


@pytest.mark.parametrize("first, budget, second, decay", [
    ({"epochs": 2}, "epochs", {"epochs": 4}, 0),  # the old end is on the evaluation cadence: it stays, not final
    ({"epochs": 1}, "epochs", {"epochs": 4}, 0),  # ... off the cadence (every 2nd epoch): the one-go run has no row
    ({"steps": 5}, "steps", {"steps": 12}, 0),  # mid-epoch: likewise dropped
    ({"steps": 5}, "steps", {"steps": 12}, 3),  # a decaying lr continues its schedule where it stopped
    ({"steps": 5}, "steps", {"steps": 12}, (3, 0.5)),  # ... at any power of the decay
])
def test_a_finished_run_continued_to_a_larger_budget_is_the_run_trained_to_it_in_one_go(digits, tmp_path, first,
                                                                                        budget, second, decay):
    """The ladder's contract (sweeps/ladder.py): rows, parameters and optimizer state bit for bit equal, with the
    old budget's final evaluation turned into what the one-go run has at that step."""
    d, power = decay if isinstance(decay, tuple) else (decay, 1.0)
    configs = [quick(rho=r, seed=s, eval_every=2, steps=None, epochs=1, lr_decay_steps=d, lr_decay_power=power)
               for r, s in ((0.8, 0), (0.95, 1))]
    configs = [c.replace(**({"steps": None} if budget == "epochs" else {})) for c in configs]
    one_go = Population([c.replace(**second) for c in configs], data=digits)
    one_go.fit()
    short = Population([c.replace(**first) for c in configs], data=digits)
    short.fit()
    assert all(m.finished for m in short.members)
    short.save_checkpoint(tmp_path)
    continued = Population.from_checkpoint(tmp_path, data=digits, **second)
    assert not continued.done
    continued.fit()
    assert torch.equal(one_go.model.flat, continued.model.flat)
    assert torch.equal(one_go.optimizer.exp_avg_sq, continued.optimizer.exp_avg_sq)
    for a, b in zip(one_go.members, continued.members):
        assert measured(a.history) == measured(b.history)
        assert [r["is_final"] for r in b.history].count(True) == 1


def test_a_member_exports_as_an_ordinary_single_run_checkpoint(digits, tmp_path):
    configs = [quick(seed=s, rho=r, steps=20) for s, r in ((0, 0.8), (1, 0.7))]
    pop = Population(configs, data=digits)
    pop.fit()
    pop.export_member(1, tmp_path / "m1")
    run = Trainer.from_checkpoint(tmp_path / "m1", data=digits, steps=30)
    assert run.cfg == configs[1].replace(steps=30) and run.step == 20
    assert torch.equal(run.model.flat[0], pop.model.flat[1])
    # continued to 30 steps: its final row of step 20 is gone (step 20 is off the evaluation cadence: the run
    # trained to 30 in one go has no row there), the rows before it are the member's
    assert run.history == pop.members[1].history[:-1]
    assert torch.equal(run.population.optimizer.exp_avg[0], pop.optimizer.exp_avg[1])
    assert run.evaluate()["elbo"] == pytest.approx(pop.evaluate()[1]["elbo"], abs=0.5)  # other noise, same model
    assert run.fit()["step"] == 30
    with pytest.raises(CheckpointFormatError, match="population of 2 runs"):  # a population is not one run
        pop.save_checkpoint(tmp_path / "pop")
        Trainer.from_checkpoint(tmp_path / "pop", data=digits)


def test_the_command_line_resumes_an_exported_member(tmp_path, capsys):
    cfg = Config.from_preset("demo", steps=12, latent_dims=(4, 4), hidden_units=16, eval_iw_k=3, seed=1)
    pop = Population([cfg.replace(seed=0), cfg])
    pop.fit()
    pop.export_member(1, tmp_path)
    assert train_main(["--out", str(tmp_path), "--resume", "--steps", "16"]) == 0
    final = json.loads((tmp_path / "metrics.json").read_text())
    assert final["step"] == 16 and final["seed"] == 1 and final["dataset"] == "digits"


def test_runs_are_grouped_by_architecture_and_smoothing_into_balanced_populations():
    runs = [quick(latent_dims=dims, rho=rho, seed=s) for dims in ((5, 5), (5, 10)) for rho in (0.8, 0.9, 1.0)
            for s in range(3)]
    groups = group_into_populations(runs, size=4)
    assert sorted(len(g) for g in groups) == [3, 3, 3, 3, 3, 3]  # 6 smoothed runs -> 3 + 3, not 4 + 2
    for g in groups:
        check_population(g)  # each group can really train together
        assert len({c.rho < 1 for c in g}) == 1  # plain runs are not slowed down by smoothed ones
    assert sorted(id(c) for g in groups for c in g) == sorted(id(c) for c in runs)  # every run exactly once
    assert len(group_into_populations(runs, size=100)) == 4 and len(group_into_populations(runs, size=1)) == 18


def test_members_that_differ_in_shape_cannot_share_a_population(digits):
    with pytest.raises(ConfigError, match=r"differ in hidden_units=32 vs 64.*population_key"):
        Population([quick(), quick(hidden_units=64)], data=digits)
    assert population_key(quick(rho=0.5, seed=3, free_bits=0.2)) == population_key(quick())
    assert population_key(quick(latent_dims=(5, 10))) != population_key(quick())


def test_trainers_touch_no_global_state_so_two_in_one_process_do_not_disturb_each_other(digits):
    threads, rng = torch.get_num_threads(), torch.get_rng_state()
    a_alone = Trainer(quick(seed=0, num_threads=2), data=digits).fit()
    a, b = Trainer(quick(seed=0, num_threads=2), data=digits), Trainer(quick(seed=1), data=digits)
    for _ in range(40):  # interleaved step by step
        a.train_step()
        b.train_step()
    a.population.evaluate_and_report(is_final=True)
    assert a.history[-1]["elbo"] == a_alone["elbo"]
    assert torch.get_num_threads() == threads and torch.equal(torch.get_rng_state(), rng)


def test_checkpoints_follow_their_own_cadence_and_always_come_with_the_final_evaluation(digits):
    saved: list[int] = []
    reported: list[int] = []
    cfg = quick(steps=24, eval_every=1000, checkpoint_every_steps=7)
    Population([cfg], callback=lambda p, r: reported.append(p.step), data=digits,
               on_checkpoint=lambda p: saved.append(p.step)).fit()
    assert saved == [7, 14, 21, 24] and reported == [24]  # independent of evaluations; the last one before its report
    saved.clear()
    every_eval = quick(steps=12, n_train=200, eval_every=1)  # 2 batches per epoch: an evaluation every 2 steps
    Population([every_eval], data=digits, on_checkpoint=lambda p: saved.append(p.step)).fit()
    assert saved == [2, 4, 6, 8, 10, 12]  # the default on a CPU: with every evaluation
