"""The trainable's own checkpoint store (sweeps/trainable.py) on a real filesystem with real digits trainers.

What a sweep relies on: the newest complete checkpoint is found by listing alone, only the newest `keep` stay, a
half-written checkpoint is never picked, a damaged newest one falls back to the one before, and a trial whose
checkpoints are all unreadable fails with a message that names the folder and the fix.
"""

import pyarrow.fs as pafs
import pytest
import torch

from ouvae.config import Config
from ouvae.population import Population
from sweeps.trainable import CheckpointError, TrialCheckpoints

torch.set_num_threads(1)


def trainer_at(digits, steps: int) -> Population:
    """A trial's trainer after `steps` steps: a population (here of two runs; a run alone is a population of one)."""
    cfg = Config.from_preset("demo", latent_dims=(3, 3), hidden_units=16, steps=steps, eval_every=1, eval_iw_k=2,
                             n_train=200, eval_max_examples=50, rho=0.9)
    t = Population([cfg, cfg.replace(seed=1, rho=0.8)], data=digits)
    t.fit()
    return t


def mid_run(t: Population) -> Population:
    """As if the checkpoint were taken before the last evaluation of the budget."""
    for m in t.members:
        m.history[-1]["is_final"] = False
    return t


def store_in(tmp_path, keep: int = 2) -> TrialCheckpoints:
    return TrialCheckpoints(pafs.LocalFileSystem(), str(tmp_path / "trial" / "ouvae_checkpoints"), keep=keep)


def test_keeps_the_newest_and_restores_the_newest_with_its_history(digits, tmp_path):
    store = store_in(tmp_path)
    assert store.steps() == [] and store.load_newest(data=digits) is None  # a trial's first run
    trainers = [trainer_at(digits, s) for s in (2, 4, 6)]
    for t in trainers:
        store.save(mid_run(t))
    assert store.steps() == [4, 6]
    back = store.load_newest(data=digits)
    assert back.step == 6 and len(back.members[1].history) == 3
    assert [m.history for m in back.members] == [m.history for m in trainers[-1].members]
    assert torch.equal(back.model.flat, trainers[-1].model.flat)
    store.save(trainer_at(digits, 8))  # the final evaluation: only its checkpoint stays
    assert store.steps() == [8]


def test_half_written_files_are_never_picked_and_are_cleaned_up(digits, tmp_path):
    store = store_in(tmp_path)
    store.save(trainer_at(digits, 2))
    folder = tmp_path / "trial" / "ouvae_checkpoints"
    (folder / ".staging-dead.pt").write_bytes(b"half a checkpoint")  # a run killed mid-save
    (folder / "notes.txt").write_text("not a checkpoint")
    assert store.steps() == [2]
    assert store.load_newest(data=digits).step == 2
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt", "step_000000000002.pt"]


def test_a_damaged_newest_checkpoint_falls_back_to_the_one_before(digits, tmp_path, caplog):
    store = store_in(tmp_path)
    for steps in (2, 4):
        store.save(mid_run(trainer_at(digits, steps)))
    (tmp_path / "trial" / "ouvae_checkpoints" / "step_000000000004.pt").write_bytes(b"\0" * 100)
    assert store.load_newest(data=digits).step == 2
    assert "cannot be read" in caplog.text


def test_all_checkpoints_unreadable_is_a_clear_error(digits, tmp_path):
    store = store_in(tmp_path, keep=1)
    store.save(trainer_at(digits, 2))
    (tmp_path / "trial" / "ouvae_checkpoints" / "step_000000000002.pt").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="delete that folder to restart the trial from scratch"):
        store.load_newest(data=digits)
    with pytest.raises(ValueError, match="keep at least one"):
        store_in(tmp_path, keep=0)


def test_works_on_a_non_local_pyarrow_filesystem(digits):
    """Tune hands the trainable its storage filesystem (S3, GCS ...): the store uses only the pyarrow
    FileSystem interface. pyarrow's in-memory mock filesystem stands in for an object store here."""
    fs = pafs._MockFileSystem()
    store = TrialCheckpoints(fs, "bucket/sweep/trial_1/ouvae_checkpoints")
    assert store.load_newest(data=digits) is None  # nothing there yet, not even the folder
    first, final = mid_run(trainer_at(digits, 2)), trainer_at(digits, 4)
    store.save(first)
    store.save(final)
    assert store.steps() == [4]  # the finished trial keeps only its final checkpoint
    assert store.load_newest(data=digits).members[0].history == final.members[0].history
