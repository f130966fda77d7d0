"""The trainer on real data (scikit-learn's digits): learning, exact resume, NaN guard, CLI, the phenomenon."""

import json
import math

import pytest
import torch

from ouvae.config import Config
from ouvae.data import DatasetSplits
from ouvae.train import main as train_main
from ouvae.trainer import Trainer, TrainingStalled

torch.set_num_threads(1)


def quick(**overrides) -> Config:
    base = dict(rho=1.0, latent_dims=(5, 5), hidden_units=32, steps=40, eval_every=1000, eval_iw_k=5, n_train=400,
                eval_max_examples=100)
    return Config.from_preset("demo", **{**base, **overrides})


def test_a_short_digits_run_lowers_the_loss(digits):
    trainer = Trainer(quick(steps=150, rho=0.8), data=digits)
    before = trainer.evaluate()["elbo"]
    after = trainer.fit()
    assert after["elbo"] > before + 5.0  # nats per image; a fresh model sits ~20 nats below a trained one
    assert after["step"] == 150 and after["is_final"] and after["skipped_steps"] == 0
    assert after["time_per_epoch_s"] > 0 and after["peak_memory_bytes"] > 0
    assert len(after["layer_kl"]) == len(after["layer_active_units"]) == 2


def test_checkpoint_resumes_to_the_same_next_step_loss(digits, tmp_path):
    a = Trainer(quick(rho=0.7, steps=30, eval_every=1), data=digits)
    a.fit()  # evaluations happen at epoch ends: they must not disturb the noise stream either
    a.save_checkpoint(tmp_path)
    b = Trainer.from_checkpoint(tmp_path, data=digits, steps=31)
    assert b.step == a.step == 30 and b.cfg.rho == 0.7
    # a larger budget makes b the run trained to 31 steps in one go: step 30 is no epoch end, so the old budget's
    # final evaluation there is not one of its rows
    assert a.history[-1]["step"] == 30 and a.history[-1]["is_final"]
    assert len(a.history) > 2 and b.history == a.history[:-1] and b.last_metrics == a.history[-2]
    assert torch.equal(a.train_step(), b.train_step())  # each trainer owns its generators: no global state to line up
    assert torch.equal(a.model.flat, b.model.flat)


def test_a_resumed_run_ends_where_an_uninterrupted_one_does(digits, tmp_path):
    straight = Trainer(quick(steps=24), data=digits)
    straight.fit()
    first = Trainer(quick(steps=10), data=digits)
    first.fit()
    first.save_checkpoint(tmp_path)
    resumed = Trainer.from_checkpoint(tmp_path, data=digits, steps=24)
    resumed.fit()
    assert torch.equal(straight.model.flat, resumed.model.flat)
    assert resumed.history[-1] == {**straight.history[-1], "wall_time_s": resumed.history[-1]["wall_time_s"],
                                   "time_per_epoch_s": resumed.history[-1]["time_per_epoch_s"],
                                   "peak_memory_bytes": resumed.history[-1]["peak_memory_bytes"]}


def nan_data(digits: DatasetSplits, every_batch: bool) -> DatasetSplits:
    train = digits.train[:400].round()
    if every_batch:
        train = train.clone().fill_(float("nan"))
    else:
        train = train.clone()
        train[::7] = float("nan")  # a NaN image in some batches only
    return DatasetSplits(name="digits-nan", train=train, validation=digits.validation.round(),
                         test=digits.test.round(), binarization="static", likelihood="bernoulli",
                         split_note="test data with NaNs")


def test_nan_steps_are_skipped_counted_and_reported(digits):
    data = nan_data(digits, every_batch=False)
    # batch of 100 over 400 images: every batch holds NaN images; batch 10 with every 7th: most do too
    cfg = quick(steps=30, batch_size=3, max_skipped_steps=50)
    metrics = Trainer(cfg, data=data).fit()
    assert 0 < metrics["skipped_steps"] < 30
    assert all(math.isfinite(v) for v in metrics["layer_kl"])


def test_a_run_that_only_produces_nan_fails_with_a_clear_error(digits):
    trainer = Trainer(quick(max_skipped_steps=5), data=nan_data(digits, every_batch=True))
    with pytest.raises(TrainingStalled, match="5 consecutive steps had a non-finite loss"):
        trainer.fit()


def test_cli_trains_prints_the_top_layer_and_writes_metrics_and_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    code = train_main(["--preset", "demo", "--steps", "12", "--latent-dims", "4-4", "--hidden-units", "16",
                       "--eval-iw-k", "3", "--rho", "0.9", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "z2 (top)" in printed and "top layer: KL" in printed
    final = json.loads((out / "metrics.json").read_text())
    assert {"top_kl", "top_active_units", "layer_kl", "rho", "config_hash"} <= set(final)
    assert final["rho"] == 0.9 and final["step"] == 12 and (out / "checkpoint.pt").is_file()
    assert len((out / "metrics.jsonl").read_text().splitlines()) >= 1
    assert train_main(["--out", str(out), "--resume", "--steps", "16"]) == 0  # continue the same run
    assert json.loads((out / "metrics.json").read_text())["step"] == 16


def test_cli_bad_values_exit_2_with_a_message(tmp_path, capsys):
    assert train_main(["--rho", "1.5", "--out", str(tmp_path)]) == 2
    assert "rho must lie in (0, 1]" in capsys.readouterr().err
    assert train_main(["--dataset", "no-such-set", "--out", str(tmp_path)]) == 2
    assert "no-such-set" in capsys.readouterr().err
