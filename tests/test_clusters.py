"""The cluster launcher configs in clusters/ and their offline validator (clusters/validate.py).

Every shipped config must pass Ray's own schema (from the installed wheel), Ray's own offline config
preparation/validation (what `ray up` runs before it calls AWS) and the project's rules; broken variants
must fail, each with the rule that names the problem. Nothing here talks to AWS or needs boto3.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray
import ray.autoscaler
import yaml

from sweeps.compat import autoscaler_config_checks

ROOT = Path(__file__).resolve().parents[1]
CLUSTERS = ROOT / "clusters"
CONFIGS = sorted(CLUSTERS.glob("*.yaml"))


def _import_validate():
    # clusters/ is a folder of configs, not a package: load the module from its path.
    spec = importlib.util.spec_from_file_location("clusters_validate", CLUSTERS / "validate.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


V = _import_validate()


def _load(name: str) -> tuple[dict[str, Any], str]:
    return V.load_config(CLUSTERS / name)


def _errors(config: dict[str, Any], text: str | None = None, **kw) -> set[str]:
    return V.check_config(config, text, **kw).rules()


def _ray_check(config: dict[str, Any]) -> None:
    """Ray's own offline checks, called directly (independent of validate.py)."""
    prepare_config, validate_config = autoscaler_config_checks()
    validate_config(prepare_config(copy.deepcopy(config)))


def _filled_text(name: str) -> str:
    """The shipped file with every FILL_IN replaced by a plausible value (what a user would do)."""
    text = (CLUSTERS / name).read_text()
    values = {
        "s3://FILL_IN_BUCKET/ouvae": "s3://my-lab-bucket/ouvae",
        "FILL_IN_AMI_ID": "ami-0123456789abcdef0",
        "FILL_IN_HEAD_IP": "10.0.0.1",
        "FILL_IN_WORKER_IP_1": "10.0.0.2",
        "FILL_IN_WORKER_IP_2": "10.0.0.3",
        "FILL_IN_SSH_USER": "alice",
        "FILL_IN_KEY_FILE": "id_ed25519",
        "/FILL_IN_NFS_MOUNT/ouvae-results": "/mnt/lab-nfs/ouvae-results",
    }
    for old, new in values.items():
        text = text.replace(old, new)
    # Only commented-out alternatives may still mention the marker.
    assert V.find_placeholders(yaml.safe_load(text)) == [], "a FILL_IN value has no replacement in this test"
    return text


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(CLUSTERS / "validate.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


# --------------------------------------------------------------------------------------- shipped configs


def test_both_configs_are_shipped():
    assert {p.name for p in CONFIGS} >= {"aws.yaml", "local.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_passes_every_check(path: Path):
    report = V.check_file(path)
    assert report.errors == [], "\n".join(map(str, report.errors))
    assert report.warnings == [], "\n".join(map(str, report.warnings))
    # As shipped they still need the user's values, and say which.
    assert report.placeholders, "expected FILL_IN placeholders for the user's own values"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_config_valid_for_ray_itself(path: Path):
    """Directly against the wheel's ray-schema.json and Ray's prepare_config/validate_config."""
    config = yaml.safe_load(path.read_text())
    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(config, schema)
    _ray_check(config)


def test_aws_config_shape():
    """What the issue asks of the AWS config, read from the file itself."""
    config, _ = _load("aws.yaml")
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"] == {"CPU": 0, "GPU": 0}
    assert "InstanceMarketOptions" not in head["node_config"]
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-py311-gpu"
    gpu_types = {t["node_config"]["InstanceType"]: t["resources"]["GPU"]
                 for name, t in types.items() if name != config["head_node_type"]}
    assert gpu_types == {"g5.12xlarge": 4, "p3.8xlarge": 4, "p4d.24xlarge": 8}
    spot = [t for t in types.values() if t["node_config"].get("InstanceMarketOptions", {}).get("MarketType") == "spot"]
    assert spot, "no spot worker type"
    assert config["idle_timeout_minutes"] > 0
    assert config["metadata"]["ouvae"]["storage"].startswith("s3://")
    # Exactly one GPU type enabled, for the reason given in the file.
    enabled = [n for n, t in types.items() if t["resources"]["GPU"] > 0 and t.get("max_workers", 0) > 0]
    assert len(enabled) == 1


def test_pins_agree_with_the_rest_of_the_project():
    """torch pin = the Makefile's TORCH_VERSION; Ray pin in setup = the image's Ray = the installed Ray."""
    make_torch = re.search(r"^TORCH_VERSION \?= (\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert make_torch, "Makefile no longer sets TORCH_VERSION"
    for path in CONFIGS:
        text = path.read_text()
        assert set(re.findall(r"torch==([\w.+-]+)", text)) == {make_torch.group(1)}, path.name
        assert set(re.findall(r"ray\[[\w,]+\]==([\w.]+)", text)) == {ray.__version__}, path.name


def test_readme_covers_every_instance_type_and_command():
    readme = (CLUSTERS / "README.md").read_text()
    config, _ = _load("aws.yaml")
    for t in config["available_node_types"].values():
        assert t["node_config"]["InstanceType"] in readme
    for needle in ("ray up clusters/aws.yaml", "ray down clusters/aws.yaml", "ray dashboard clusters/aws.yaml",
                   "ray job submit", "--resume", "--gpus-per-trial 1", "TUNE_MAX_PENDING_TRIALS_PG",
                   "ray start --head"):
        assert needle in readme, needle


# ------------------------------------------------------------------ negative cases: Ray's schema and checks


def test_fractional_gpu_resource_fails():
    config, _ = _load("aws.yaml")
    config["available_node_types"]["gpu.g5.12xlarge"]["resources"]["GPU"] = 0.5
    report = V.check_config(config)
    assert {"schema", "explicit-resources"} <= report.rules()
    assert any("resources.GPU" in f.message for f in report.errors if f.rule == "schema")
    with pytest.raises(jsonschema.ValidationError):
        _ray_check(config)


def test_unknown_head_node_type_fails():
    config, _ = _load("aws.yaml")
    config["head_node_type"] = "ray.head.typo"
    report = V.check_config(config)
    assert "ray" in report.rules()
    assert any("head_node_type" in f.message for f in report.errors)
    with pytest.raises(ValueError, match="head_node_type"):
        _ray_check(config)


def test_unknown_top_level_key_fails():
    config, _ = _load("aws.yaml")
    config["max_worker"] = 3  # typo of max_workers
    report = V.check_config(config)
    assert "schema" in report.rules()
    assert any("max_worker" in f.message for f in report.errors)
    with pytest.raises(jsonschema.ValidationError):
        _ray_check(config)


def test_missing_required_fields_fail():
    config, _ = _load("aws.yaml")
    del config["cluster_name"]  # Ray's defaults would silently fill this in; the raw-file check does not
    assert any("cluster_name" in f.message for f in V.check_config(config).errors)

    config, _ = _load("aws.yaml")
    del config["available_node_types"]["gpu.p3.8xlarge"]["node_config"]
    assert "schema" in _errors(config)
    with pytest.raises(jsonschema.ValidationError):
        _ray_check(config)

    config, _ = _load("aws.yaml")
    del config["provider"]
    assert "schema" in _errors(config)


def test_local_config_without_head_ip_fails_ray_check():
    config, _ = _load("local.yaml")
    del config["provider"]["head_ip"]
    assert "ray" in _errors(config)


# ------------------------------------------------------------------------ negative cases: project rules


@pytest.mark.parametrize("resources", [{"CPU": 4, "GPU": 0}, {"CPU": 0, "GPU": 1}, {}])
def test_head_that_could_run_trials_fails(resources):
    config, _ = _load("aws.yaml")
    config["available_node_types"]["ray.head.cpu"]["resources"] = resources
    assert "head-no-trials" in _errors(config)


def test_head_start_command_must_not_give_it_cpus():
    config, _ = _load("aws.yaml")
    config["head_start_ray_commands"] = [c.replace("--num-cpus=0", "--num-cpus=8")
                                         for c in config["head_start_ray_commands"]]
    assert "head-no-trials" in _errors(config)

    local, _ = _load("local.yaml")
    local["head_start_ray_commands"] = [c.replace(" --num-cpus=0 --num-gpus=0", "")
                                        for c in local["head_start_ray_commands"]]
    assert "head-no-trials" in _errors(local)


def test_spot_head_fails():
    config, _ = _load("aws.yaml")
    config["available_node_types"]["ray.head.cpu"]["node_config"]["InstanceMarketOptions"] = {"MarketType": "spot"}
    assert "head-on-demand" in _errors(config)


@pytest.mark.parametrize("resources", [{}, {"CPU": 48}, {"CPU": 48, "GPU": True}])
def test_worker_without_explicit_integer_resources_fails(resources):
    config, _ = _load("aws.yaml")
    config["available_node_types"]["gpu.p4d.24xlarge"]["resources"] = resources
    assert "explicit-resources" in _errors(config)


def test_local_worker_fractional_gpu_flag_fails():
    config, _ = _load("local.yaml")
    config["worker_start_ray_commands"] = ["ray stop", "ray start --address=$RAY_HEAD_IP:6379 --num-gpus=1.5"]
    assert "explicit-resources" in _errors(config)


@pytest.mark.parametrize("image, ok", [
    ("rayproject/ray:latest-gpu", False),
    ("rayproject/ray", False),
    ("rayproject/ray:nightly-py311-gpu", False),
    ("rayproject/ray-ml:2.9.0-py310-gpu", False),
    ("registry.example.org:5000/ray", False),                     # a registry port is not a tag
    ("registry.example.org:5000/ray:2.60.0-py311-gpu", True),
    ("rayproject/ray@sha256:" + "0" * 64, True),
])
def test_image_must_be_pinned(image, ok):
    config, _ = _load("aws.yaml")
    config["docker"]["image"] = image
    assert ("pinned-image" not in _errors(config)) is ok


def test_aws_config_without_image_fails():
    config, _ = _load("aws.yaml")
    del config["docker"]
    assert "pinned-image" in _errors(config)


def test_torch_must_be_pinned():
    config, _ = _load("aws.yaml")
    config["setup_commands"] = [c.replace('"torch==2.13.0"', "torch") for c in config["setup_commands"]]
    assert "pinned-torch" in _errors(config)

    config, _ = _load("aws.yaml")
    config["setup_commands"] = [c for c in config["setup_commands"] if "torch" not in c]
    assert "pinned-torch" in _errors(config)


def test_storage_rules():
    config, _ = _load("aws.yaml")
    config["metadata"]["ouvae"]["storage"] = "/home/ray/results"  # one node's disk
    assert "shared-storage" in _errors(config)

    config, _ = _load("aws.yaml")
    del config["metadata"]
    assert "shared-storage" in _errors(config)

    local, _ = _load("local.yaml")
    local["metadata"]["ouvae"]["storage"] = "/mnt/other/results"  # no longer the path setup checks
    assert "shared-storage" in _errors(local)


def test_idle_timeout_required():
    config, _ = _load("aws.yaml")
    del config["idle_timeout_minutes"]
    assert "idle-timeout" in _errors(config)


def test_auth_mode_must_match_between_head_and_workers():
    local, _ = _load("local.yaml")
    local["worker_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "")
                                          for c in local["worker_start_ray_commands"]]
    assert "auth-mode" in _errors(local)

    # provider local must set it explicitly, even if consistently unset
    local["head_start_ray_commands"] = [c.replace("RAY_AUTH_MODE=token ", "")
                                        for c in local["head_start_ray_commands"]]
    assert "auth-mode" in _errors(local)

    config, _ = _load("aws.yaml")
    config["head_start_ray_commands"] = [c.replace("ray start --head", "RAY_AUTH_MODE=token ray start --head")
                                         for c in config["head_start_ray_commands"]]
    assert "auth-mode" in _errors(config)


def test_several_enabled_gpu_types_warn():
    config, _ = _load("aws.yaml")
    config["available_node_types"]["gpu.p4d.24xlarge"]["max_workers"] = 1
    report = V.check_config(config)
    assert report.ok and "one-gpu-type" in {w.rule for w in report.warnings}


@pytest.mark.parametrize("line", [
    "# key: " + "AKIA" + "IOSFODNN7EXAMPLE",                               # AWS's documented fake key id
    "#   " + "aws_secret" + "_access_key = x",
    "# " + "wJalrXUtnFEMI/K7MDENG/bPxRfiCY" + "EXAMPLEKEY",                # AWS's documented fake secret
    "# -----BEGIN OPENSSH " + "PRIVATE KEY-----",
])
def test_secret_like_strings_fail_and_are_not_echoed(line):
    config, text = _load("aws.yaml")
    report = V.check_config(config, text + line + "\n")
    assert "no-secrets" in report.rules()
    secret = line.split()[-1]
    assert all(secret not in f.message for f in report.findings)


def test_secret_scan_ignores_commit_hashes():
    config, text = _load("aws.yaml")
    text += "# pinned to commit 3f9029eb6c423e932d703957009575844924b68d\n"
    assert "no-secrets" not in V.check_config(config, text).rules()


# ------------------------------------------------------------------------------------------ ready + CLI


@pytest.mark.parametrize("name", ["aws.yaml", "local.yaml"])
def test_ready_mode_fails_until_filled_in(name, tmp_path):
    config, text = _load(name)
    report = V.check_config(config, text, ready=True)
    assert "unfilled" in report.rules()
    assert any("metadata.ouvae.storage" in p for p in report.placeholders)

    filled = tmp_path / name
    filled.write_text(_filled_text(name))
    report = V.check_file(filled, ready=True)
    assert report.ok, "\n".join(map(str, report.errors))


def test_cli_exit_codes_and_storage(tmp_path):
    ok = _run_cli(*map(str, CONFIGS))
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "aws.yaml: OK" in ok.stdout and "local.yaml: OK" in ok.stdout

    not_ready = _run_cli("--ready", str(CLUSTERS / "aws.yaml"))
    assert not_ready.returncode == 1 and "[unfilled]" in not_ready.stdout

    broken = tmp_path / "broken.yaml"
    broken.write_text((CLUSTERS / "aws.yaml").read_text().replace('"GPU": 4}', '"GPU": 0.25}', 1))
    filled = tmp_path / "aws.yaml"
    filled.write_text(_filled_text("aws.yaml"))
    not_yaml = tmp_path / "list.yaml"
    not_yaml.write_text("- just\n- a list\n")
    res = _run_cli(str(broken), str(filled), str(not_yaml))
    assert res.returncode == 2  # the worst status wins: unreadable file
    assert "[schema]" in res.stdout and "[explicit-resources]" in res.stdout
    assert f"{filled}: OK" in res.stdout
    assert "top level must be a mapping" in res.stderr

    storage = _run_cli("--get-storage", str(filled))
    assert storage.returncode == 0 and storage.stdout.strip() == "s3://my-lab-bucket/ouvae"
    unfilled = _run_cli("--get-storage", str(CLUSTERS / "aws.yaml"))
    assert unfilled.returncode == 1 and "fill it in first" in unfilled.stderr
