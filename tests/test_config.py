"""Config validation, presets, overrides and the command-line parsing of overrides."""

import argparse
import dataclasses

import pytest

from ouvae.config import (IDENTITY, MEMBER, PRESETS, ROLES, RUNTIME, SHARED, Config, ConfigError, add_config_arguments,
                          overrides_from_args, recorded_columns)


def test_every_preset_is_valid_and_named():
    for name, cfg in PRESETS.items():
        assert cfg.preset == name
        assert Config.from_dict(cfg.to_dict()) == cfg


def test_presets_are_built_from_each_other():
    mlp, one = PRESETS["paper-mlp-4x40"], PRESETS["paper-mlp-1x64"]
    assert mlp.latent_dims == (40, 40, 40, 40) and mlp.hidden_units == 200 and mlp.hidden_layers == 2
    assert one.latent_dims == (64,) and one.dataset == mlp.dataset == "mnist"
    assert PRESETS["paper-conv-cifar"].batch_size == 64 and PRESETS["paper-conv-cifar"].architecture == "conv"


@pytest.mark.parametrize("overrides, fragment", [
    ({"rho": 0.0}, "rho must lie in (0, 1]"),
    ({"rho": 1.2}, "rho must lie in (0, 1]"),
    ({"smooth_samples": 0}, "smooth_samples (K) must be >= 1"),
    ({"latent_dims": ()}, "latent_dims is empty"),
    ({"smooth": "middle"}, "smooth must be one of"),
    ({"beta_schedule": "exp"}, "beta_schedule must be one of"),
    ({"iw_samples": 5}, "needs objective='iwae'"),
    ({"beta_min": 2.0}, "beta_min <= beta_max"),
    ({"lr_decay_steps": -1}, "lr_decay_steps must be >= 0 (0 = a constant lr)"),
    ({"lr_decay_steps": 100, "lr_decay_power": 0.0}, "lr_decay_power (a of lr / (1 + k/d)^a) must lie in (0, 1]"),
    ({"lr_decay_steps": 100, "lr_decay_power": 1.5}, "lr_decay_power (a of lr / (1 + k/d)^a) must lie in (0, 1]"),
    ({"lr_decay_power": 0.5}, "lr_decay_power=0.5 needs lr_decay_steps > 0"),
])
def test_out_of_range_values_are_refused_with_a_message(overrides, fragment):
    with pytest.raises(ConfigError) as e:
        Config.from_preset("demo", **overrides)
    assert fragment in str(e.value)


def test_unknown_keys_and_presets_are_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'rho'"):
        Config.from_preset("demo", rhoo=0.5)
    with pytest.raises(ConfigError, match="unknown preset"):
        Config.from_preset("nope")
    with pytest.raises(ConfigError, match="unknown config key"):
        Config.from_dict({"latent": [1]})


def test_config_hash_ignores_the_seed_but_not_rho():
    a = Config.from_preset("demo", seed=1)
    assert a.config_hash() == a.replace(seed=2).config_hash()
    assert a.config_hash() != a.replace(rho=0.9).config_hash()


def test_every_setting_has_one_role_and_the_lists_that_depend_on_it_follow_from_it():
    """Each field declares its role once (ouvae/config.py); what members may differ in, what config_hash hashes,
    what the table records and what the analysis calls one configuration all follow from it."""
    from analysis.critical import OTHER_SETTINGS
    from analysis.schema import CONFIG_KEYS, SCHEMA
    from ouvae.population import MEMBER_FIELDS

    assert set(ROLES) == {f.name for f in dataclasses.fields(Config)}
    assert set(ROLES.values()) == {SHARED, MEMBER, IDENTITY, RUNTIME}
    assert set(MEMBER_FIELDS) == {n for n, r in ROLES.items() if r in (MEMBER, IDENTITY)}
    a = Config.from_preset("demo")
    changed = {"seed": 3, "preset": "other", "device": "cpu", "num_threads": 1, "compile_step": True, "data_dir": "x",
               "smooth_recompute": True, "rho": 0.5, "free_bits": 0.5, "lr": 0.01, "hidden_units": 7, "n_train": 9}
    for name, value in changed.items():  # one of each role, and fields the table does not record
        same = a.config_hash() == a.replace(**{name: value}).config_hash()
        assert same == (ROLES[name] in (IDENTITY, RUNTIME)), name
    assert set(recorded_columns(SHARED, MEMBER, IDENTITY)) <= set(SCHEMA.names)
    assert set(CONFIG_KEYS) | {"rho", "rho_eval", "split"} == set(recorded_columns(SHARED, MEMBER))
    assert set(OTHER_SETTINGS) | {"seed"} == set(recorded_columns(IDENTITY))


def test_command_line_overrides_are_typed():
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    args = p.parse_args(["--rho", "0.9", "--latent-dims", "4x40", "--steps", "12", "--rho_eval", "none",
                         "--beta-schedule", "cosine"])
    cfg = Config.from_preset("demo", **overrides_from_args(args))
    assert cfg.rho == 0.9 and cfg.latent_dims == (40, 40, 40, 40) and cfg.steps == 12
    assert cfg.rho_eval is None and cfg.beta_schedule == "cosine"
    assert overrides_from_args(p.parse_args(["--latent-dims", "5-5-5"]))["latent_dims"] == (5, 5, 5)
    with pytest.raises(ConfigError, match="cannot read 'x1' as float"):
        overrides_from_args(p.parse_args(["--rho", "x1"]))
    both = overrides_from_args(p.parse_args(["--set", "smooth_space=prior", "--set", "rho=0.5", "--rho", "0.7"]))
    assert both == {"smooth_space": "prior", "rho": 0.7}  # a field's own option wins over --set
    with pytest.raises(ConfigError, match="smooth_space must be one of"):
        Config.from_preset("demo", **overrides_from_args(p.parse_args(["--set", "smooth_space=posteriour"])))


def test_run_columns_carry_the_hyperparameters_and_the_data():
    from ouvae.data import load_dataset
    from ouvae.records import run_columns

    f = run_columns(Config.from_preset("demo", rho=0.9, seed=3), load_dataset("digits"))
    assert f["latent_dims"] == "10-10-10-10" and f["n_layers"] == 4 and f["rho"] == 0.9 and f["seed"] == 3
    assert f["rho_eval"] == 0.9 and f["binarization"] == "dynamic" and f["beta_params"] == '{"beta_max": 1.0}'
    assert f["dataset"] == "digits" and f["likelihood"] == "bernoulli" and f["tf32"] is False


def test_one_parser_types_every_field_from_its_real_type_hint():
    from ouvae.config import parse_assignment, parse_field, parse_latent_dims

    assert parse_field("smooth_recompute", "yes") is True and parse_field("grad_clip", "none") is None
    assert parse_field("n_train", "797") == 797 and parse_field("latent_dims", "2x5") == (5, 5)
    assert parse_assignment("eval-iw-k = 25") == ("eval_iw_k", 25)
    assert parse_latent_dims([3, 4]) == (3, 4) == parse_latent_dims("3,4")
    for text, needle in [("epochs=1.5", "cannot read '1.5' as int"), ("seed=none", "cannot read 'none' as int"),
                         ("smooth_recompute=maybe", "as bool"), ("rhoo=0.5", "did you mean 'rho'"),
                         ("rho", "write KEY=VALUE"), ("latent_dims=4xten", "cannot read latent dims")]:
        with pytest.raises(ConfigError, match=needle):
            parse_assignment(text)


def test_stable_digests_are_the_ones_already_recorded(monkeypatch):
    """config_hash values in results tables, population keys, member and evaluation seeds and the adaptive
    search's bootstrap stream all come from ouvae.config.stable_digest. These values were computed before the
    five call sites shared it: a change here changes recorded hashes and random streams."""
    from types import SimpleNamespace

    from ouvae.population import derived_seed, population_key
    from ouvae.records import run_columns
    from sweeps.refine import RefinePolicy

    assert Config().config_hash() == "8dcb142fccd4"
    assert Config.from_preset("sweep-demo").config_hash() == "47f956bfa290"
    assert Config.from_preset("demo", beta_schedule="cyclical", rho=0.9).config_hash() == "1cc1cd5d3f7f"
    assert population_key(Config.from_preset("demo")) == "5491784e759f"
    assert population_key(Config.from_preset("paper-conv")) == "54482d0b0397"
    assert derived_seed("population", [0, 1, 2]) == 3995507307717619561
    assert derived_seed("evaluation", 7, 120) == 8213982266743598081
    assert derived_seed("moved", 7, 120, "cuda") == 303776231786389006
    user_data = SimpleNamespace(name="idx:kmnist", binarization="dynamic", likelihood="bernoulli")
    assert run_columns(Config(dataset="idx"), user_data)["config_hash"] == "f961b202aca4"
    # a field added since (HASHED_WHEN_SET) changes them only where it is set
    decaying = Config.from_preset("demo", lr_decay_steps=240)
    assert decaying.replace(lr_decay_power=1.0).config_hash() == decaying.config_hash()
    assert decaying.replace(lr_decay_power=0.5).config_hash() != decaying.config_hash()
    assert population_key(decaying.replace(lr_decay_power=0.5)) != population_key(decaying)

    import sweeps.refine

    seen = []
    real_fit = sweeps.refine.fit_transition

    def fit_noting_the_seed(*args, rng, **kwargs):
        seen.append(rng.bit_generator.seed_seq.entropy)
        return real_fit(*args, rng=rng, **kwargs)

    monkeypatch.setattr(sweeps.refine, "fit_transition", fit_noting_the_seed)
    policy = RefinePolicy([{"latent_dims": (10,) * 4}], seeds=(0, 1, 2, 3), random_state=5)
    for rho, active in zip(policy.coarse_grid(), (10, 8, 3, 0)):
        for seed in policy.settings.seeds:
            policy.record(0, rho, seed, min(10, active + seed % 2))
    policy.fit(0)  # the seed of its bootstrap stream: digest_seed("5|<group key>|16")
    assert seen == [1720570038810585497]


def test_the_schedule_table_names_exactly_the_fields_each_schedule_reads():
    """SCHEDULE_PARAMETERS is the one list of what each schedule reads (recorded as beta_params, sampled by the
    annealing search): changing a field it lists changes that schedule's beta, changing any other does not."""
    from ouvae.config import SCHEDULE_PARAMETERS
    from ouvae.objectives import beta_at

    changed = {"beta_max": 0.7, "beta_min": 0.2, "anneal_epochs": 6.0, "sigmoid_steepness": 4.0, "n_cycles": 2,
               "cycle_ratio": 0.9}
    assert set(changed) == {p for params in SCHEDULE_PARAMETERS.values() for p in params}
    for schedule, params in SCHEDULE_PARAMETERS.items():
        cfg = Config(beta_schedule=schedule, beta_min=0.1, beta_max=0.9, anneal_epochs=4.0, n_cycles=3,
                     cycle_ratio=0.5, sigmoid_steepness=10.0)
        assert tuple(cfg.beta_params) == params
        curve = [beta_at(cfg, e) for e in (0.5, 1.3, 2.9, 4.4, 7.1, 9.5, 13.0)]
        for name, value in changed.items():
            other = [beta_at(cfg.replace(**{name: value}), e) for e in (0.5, 1.3, 2.9, 4.4, 7.1, 9.5, 13.0)]
            assert (other != curve) == (name in params), (schedule, name)


def test_every_field_says_what_it_means_and_its_choices_are_the_accepted_values():
    """Each field's metadata carries its help (shown by --help) and, for fixed text values, its choices: every
    choice makes a valid Config and a value outside them is refused."""
    from ouvae.config import FIELDS

    for name, f in FIELDS.items():
        assert len(f.metadata["help"].strip()) > 10, name
        for choice in f.metadata["choices"] or ():
            overrides = {name: choice, **({"architecture": "conv"} if choice == "conv" else {})}
            assert getattr(Config.from_preset("demo", **overrides), name) == choice
        if f.metadata["choices"]:
            with pytest.raises(ConfigError, match=name):
                Config.from_preset("demo", **{name: "not-a-choice"})
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    text = " ".join(p.format_help().split())
    assert "the coordinates the generative maps' copies are drawn in" in text
    assert "(one of posterior, prior; default from the preset)" in text
    assert "(float or none; default from the preset)" in text
