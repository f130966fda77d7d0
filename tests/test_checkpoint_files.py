"""Checkpoint files are input from elsewhere: only plain tensors and data load, and every bad file is one clear
error (ouvae/checkpoint.py)."""

from __future__ import annotations

import pickle

import pytest
import torch

from ouvae import __version__
from ouvae.checkpoint import CHECKPOINT_FILE, FORMAT_VERSION, CheckpointFormatError
from ouvae.config import Config
from ouvae.train import main as train_main
from ouvae.trainer import Trainer


class Planted:
    """An object whose unpickling runs code: what a checkpoint planted in a shared bucket could carry."""

    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('ran')",))


@pytest.fixture
def saved(tmp_path):
    cfg = Config.from_preset("demo", steps=4, latent_dims=(3, 3), hidden_units=8, eval_iw_k=2, eval_max_examples=20)
    trainer = Trainer(cfg)
    trainer.fit()
    trainer.save_checkpoint(tmp_path)
    return tmp_path / CHECKPOINT_FILE


def rewrite(path, change):
    state = torch.load(path, weights_only=True)
    change(state)
    torch.save(state, path)


def test_a_checkpoint_holds_only_plain_data_and_records_its_versions(saved):
    state = torch.load(saved, weights_only=True)  # would raise on any pickled object
    assert state["format_version"] == FORMAT_VERSION and state["ouvae_version"] == __version__
    assert isinstance(state["configs"][0], str) and state["rng"].dtype == torch.uint8


def test_a_file_with_python_objects_is_refused_without_running_them(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rewrite(saved, lambda s: s.update(members=[Planted()]))
    with pytest.raises(CheckpointFormatError, match="refused: the file holds Python objects"):
        Trainer.from_checkpoint(saved.parent)
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize("change,needle", [
    (lambda s: s.update(format_version=FORMAT_VERSION + 1), "upgrade ouvae"),
    (lambda s: s.update(format="something-else"), "not an ouvae checkpoint"),
    (lambda s: s.pop("optimizer"), "incomplete ouvae checkpoint"),
    (lambda s: s.update(params=s["params"][:, :-3]), "do not fit the model"),
])
def test_files_from_elsewhere_are_named_errors(saved, change, needle):
    rewrite(saved, change)
    with pytest.raises(CheckpointFormatError, match=needle):
        Trainer.from_checkpoint(saved.parent)


def test_the_stored_ouvae_version_is_checked(saved):
    rewrite(saved, lambda s: s.update(ouvae_version="99.0.0"))  # same format, newer release: readable, flagged
    with pytest.warns(UserWarning, match="written by the newer ouvae 99.0.0"):
        assert Trainer.from_checkpoint(saved.parent).step == 4


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_a_truncated_or_incomplete_file_is_a_one_line_error_on_the_command_line(saved, capsys):
    saved.write_bytes(saved.read_bytes()[:200])
    assert train_main(["--out", str(saved.parent), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a readable checkpoint" in err and err.count("\n") == 0
    torch.save({"format": "ouvae-checkpoint"}, saved)
    assert train_main(["--out", str(saved.parent), "--resume"]) == 2
    assert "incomplete ouvae checkpoint (no format_version)" in capsys.readouterr().err
    saved.write_bytes(pickle.dumps({"format": "ouvae-checkpoint"}))  # a plain pickle, not a torch file
    assert train_main(["--out", str(saved.parent), "--resume"]) == 2
    assert "refused" in capsys.readouterr().err
