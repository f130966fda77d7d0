"""Offline checks for the Ray cluster launcher configs in ``clusters/``.

Why this exists: a mistake in a cluster YAML usually shows up only after ``ray up`` has spent minutes (and
money) starting a head node, or worse, after a sweep has run with trials on the head, an unpinned image or
results written where no other node can read them. Everything here runs without AWS, boto3 or a network:

1. Ray's own JSON schema (``ray/autoscaler/ray-schema.json`` in the installed wheel) on the file as
   written, so unknown keys, missing fields and non-integer resources are caught before Ray's defaults
   are merged in and could hide them.
2. Ray's own config preparation and checks (``prepare_config`` + ``validate_config``, private to Ray: reached
   through sweeps/compat.py), the same code ``ray up`` runs before it contacts the cloud.
   The AWS-specific step after that (``bootstrap_aws``) needs boto3 and live AWS calls, so it is not run.
3. The project's rules: the head runs no trials, every worker type states integer resources, the
   container image is pinned, torch is pinned, results go to shared storage, an idle timeout is set, head
   and workers start in the same token-auth mode, and nothing in the file looks like a credential.

Usage::

    python clusters/validate.py clusters/*.yaml            # structure + rules; placeholders allowed
    python clusters/validate.py --ready clusters/aws.yaml  # also fail on any FILL_IN left (before ray up)
    python clusters/validate.py --get-storage clusters/aws.yaml   # print metadata.ouvae.storage

Exit status: 0 all files pass, 1 a file has errors, 2 bad usage or unreadable file.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import logging
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

PLACEHOLDER = "FILL_IN"
"""Marker for every value a user must edit; ``--ready`` fails while any remains."""

# Credential shapes. Matched on the raw text, comments included: a key pasted into a comment is as leaked
# as one in a value.
_SECRET_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("an AWS access key id", re.compile(r"\b(?:AKIA|ASIA|AROA|AIDA)[0-9A-Z]{16}\b")),
    ("an AWS secret setting", re.compile(r"aws_secret_access_key|aws_session_token|secret_access_key", re.I)),
    ("a private key", re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")),
    # 40 characters of base64 with upper case, lower case and a digit: the shape of an AWS secret key.
    # Git hashes (lower-case hex) and ordinary words do not match.
    (
        "a 40-character secret key",
        re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
                   r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
    ),
)

_IMAGE_KEYS = ("image", "head_image", "worker_image")
_FLOATING_TAGS = {"latest", "nightly", "master", "main", "stable"}


class ClusterConfigError(Exception):
    """A config file cannot be read at all (missing, not YAML, not a mapping)."""


@dataclass(frozen=True)
class Finding:
    """One problem (``level="error"``) or advice (``"warning"``), named by the rule that found it."""

    level: str
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.level}: [{self.rule}] {self.message}"


@dataclass
class Report:
    """Everything found in one config file."""

    path: str
    findings: list[Finding] = field(default_factory=list)
    placeholders: list[str] = field(default_factory=list)  # one entry per distinct value to fill in

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "error"]

    @property
    def warnings(self) -> list[Finding]:
        return [f for f in self.findings if f.level == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def rules(self) -> set[str]:
        """Names of the rules with an error (for callers)."""
        return {f.rule for f in self.errors}


# --------------------------------------------------------------------------------------------------- loading


def load_config(path: str | Path) -> tuple[dict[str, Any], str]:
    """Read a cluster YAML the way Ray does (``yaml.safe_load``, anchors resolved); return (config, text)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ClusterConfigError(f"{p}: cannot read the file ({e.strerror}). Check the path.") from e
    try:
        config = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ClusterConfigError(f"{p}: not valid YAML: {e}. Fix the syntax at the position shown.") from e
    if not isinstance(config, dict):
        raise ClusterConfigError(
            f"{p}: the top level must be a mapping of cluster settings (cluster_name, provider, ...), "
            f"got {type(config).__name__}."
        )
    return config, text


# ---------------------------------------------------------------------------------------- Ray's own checks


def _ray_schema() -> dict[str, Any]:
    import ray.autoscaler

    schema_path = Path(ray.autoscaler.__file__).parent / "ray-schema.json"
    return json.loads(schema_path.read_text())


def check_schema(config: dict[str, Any]) -> list[Finding]:
    """Validate the file as written against the schema shipped in the installed ray wheel (all errors)."""
    try:
        import jsonschema
    except ImportError:
        return [Finding("error", "schema", "jsonschema is not installed: pip install -e '.[dev]' (or jsonschema).")]
    validator = jsonschema.Draft7Validator(_ray_schema())
    out = []
    for err in sorted(validator.iter_errors(config), key=lambda e: list(map(str, e.absolute_path))):
        where = ".".join(str(p) for p in err.absolute_path) or "(top level)"
        out.append(Finding("error", "schema", f"{where}: {err.message}"))
    return out


def check_with_ray(config: dict[str, Any]) -> list[Finding]:
    """Run Ray's own offline preparation and validation (what ``ray up`` does before calling the cloud).

    ``prepare_config`` merges the provider's defaults.yaml, checks the Docker section and (for provider
    ``local``) turns head_ip/worker_ips into a node type; ``validate_config`` re-checks the merged result
    against the schema plus cross-field rules (head_node_type among available_node_types, the sum of
    min_workers within max_workers). Ray logs progress at INFO; that is silenced here.
    """
    from sweeps.compat import autoscaler_config_checks

    try:
        prepare_config, validate_config = autoscaler_config_checks()
    except ImportError as e:  # private to Ray: tests/test_compat.py fails loudly when an upgrade moves it
        return [Finding("error", "ray", f"cannot import Ray's config checks ({e}); is ray installed, at the "
                                        "version the configs pin?")]
    logger = logging.getLogger("ray.autoscaler")
    old_level = logger.level
    logger.setLevel(logging.WARNING)
    chatter = io.StringIO()  # Ray's cli_logger prints its own copy of errors ("PANIC ..."); keep it quiet
    try:
        with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter):
            validate_config(prepare_config(copy.deepcopy(config)))
    except Exception as e:  # Ray raises ValueError, jsonschema errors, AssertionError, ClickException, ...
        msg = getattr(e, "message", None) or str(e) or chatter.getvalue().strip() or "(no message)"
        return [Finding("error", "ray", f"Ray's own config check failed: {type(e).__name__}: {msg}")]
    finally:
        logger.setLevel(old_level)
    return []


# ------------------------------------------------------------------------------------------ project rules


def _all_commands(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """(key, command) for every shell command in the config, node-type-specific ones included."""
    for key in ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
                "head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config.get(key) or []:
            yield key, str(cmd)
    for name, node in (config.get("available_node_types") or {}).items():
        for key in ("initialization_commands", "worker_setup_commands"):
            for cmd in (node or {}).get(key) or []:
                yield f"available_node_types.{name}.{key}", str(cmd)


def _flag_values(commands: list[str], flag: str) -> list[str]:
    """Values given to ``--flag=V`` or ``--flag V`` in the commands, in order."""
    rx = re.compile(rf"--{re.escape(flag)}(?:=|\s+)(\S+)")
    return [m.group(1).strip("'\"") for cmd in commands for m in rx.finditer(cmd)]


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_head(config: dict[str, Any]) -> list[Finding]:
    """The head runs no trials: it advertises CPU 0 and GPU 0, and is not a spot instance."""
    out: list[Finding] = []
    provider = (config.get("provider") or {}).get("type")
    starts = [str(c) for c in config.get("head_start_ray_commands") or []]
    ray_starts = [c for c in starts if "ray start" in c]
    for flag in ("num-cpus", "num-gpus"):
        for v in _flag_values(ray_starts, flag):
            if v != "0":
                out.append(Finding("error", "head-no-trials",
                                   f"head_start_ray_commands give --{flag}={v}; use 0 so no trial runs on the head."))
    if provider == "local":
        # No node types: the start command is the only place to say it.
        for flag in ("num-cpus", "num-gpus"):
            if not _flag_values(ray_starts, flag):
                out.append(Finding("error", "head-no-trials",
                                   f"head_start_ray_commands must pass --{flag}=0 to `ray start --head` so no "
                                   "trial is scheduled on the head (provider local has no node types)."))
        return out

    types = config.get("available_node_types") or {}
    head_type = config.get("head_node_type")
    head = types.get(head_type) if isinstance(types, dict) else None
    if not isinstance(head, dict):
        return out  # missing/unknown head type: reported by the schema and Ray's own checks
    res = head.get("resources")
    if not isinstance(res, dict) or "CPU" not in res:
        out.append(Finding("error", "head-no-trials",
                           f"available_node_types.{head_type}.resources must say \"CPU\": 0 (and \"GPU\": 0) "
                           "so trials are never scheduled on the head."))
    else:
        if res.get("CPU") != 0:
            out.append(Finding("error", "head-no-trials",
                               f"head type {head_type} advertises CPU={res.get('CPU')!r}; set \"CPU\": 0 so "
                               "trials run only on workers (the Tune driver needs no Ray CPU)."))
        if res.get("GPU", 0) != 0:
            out.append(Finding("error", "head-no-trials",
                               f"head type {head_type} advertises GPU={res.get('GPU')!r}; set \"GPU\": 0 and "
                               "put GPUs on worker types."))
    market = ((head.get("node_config") or {}).get("InstanceMarketOptions") or {}).get("MarketType")
    if market == "spot":
        out.append(Finding("error", "head-on-demand",
                           f"head type {head_type} is a spot instance; losing it loses the Tune driver and "
                           "the cluster. Remove InstanceMarketOptions from the head."))
    return out


def check_worker_resources(config: dict[str, Any]) -> list[Finding]:
    """Every worker type states CPU and GPU as non-negative integers; warn if several GPU types are enabled."""
    out: list[Finding] = []
    types = config.get("available_node_types") or {}
    if not isinstance(types, dict):
        return out
    head_type = config.get("head_node_type")
    enabled_gpu = []
    for name, node in types.items():
        if name == head_type or not isinstance(node, dict):
            continue
        res = node.get("resources")
        if not isinstance(res, dict) or not res:
            out.append(Finding("error", "explicit-resources",
                               f"worker type {name}: resources missing or empty; write them out, e.g. "
                               "{\"CPU\": 48, \"GPU\": 4}. Ray would otherwise need AWS calls to guess them."))
            continue
        for key in ("CPU", "GPU"):
            if key not in res:
                out.append(Finding("error", "explicit-resources",
                                   f"worker type {name}: resources has no \"{key}\"; state it (0 if none)."))
        for key, val in res.items():
            if not _is_int(val) or val < 0:
                out.append(Finding("error", "explicit-resources",
                                   f"worker type {name}: resources.{key} = {val!r} must be a whole number >= 0 "
                                   "(fractions are for trial requests, e.g. --gpus-per-trial 0.25, not nodes)."))
        gpus = res.get("GPU")
        if _is_int(gpus) and gpus > 0 and node.get("max_workers", config.get("max_workers", 0)):
            enabled_gpu.append(name)
    if len(enabled_gpu) > 1:
        out.append(Finding("warning", "one-gpu-type",
                           f"several GPU worker types are enabled ({', '.join(enabled_gpu)}). Ray's autoscaler "
                           "picks among them by packing score, not price; set max_workers: 0 on all but one."))
    if (config.get("provider") or {}).get("type") == "local":
        workers = [c for c in (str(x) for x in config.get("worker_start_ray_commands") or []) if "ray start" in c]
        for flag in ("num-cpus", "num-gpus"):
            for v in _flag_values(workers, flag):
                if not v.isdigit():
                    out.append(Finding("error", "explicit-resources",
                                       f"worker_start_ray_commands give --{flag}={v}; use a whole number."))
    return out


def _images(config: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    docker = config.get("docker") or {}
    for key in _IMAGE_KEYS:
        if key in docker:
            yield f"docker.{key}", docker[key]
    for name, node in (config.get("available_node_types") or {}).items():
        ndocker = (node or {}).get("docker") or {}
        for key in _IMAGE_KEYS:
            if key in ndocker:
                yield f"available_node_types.{name}.docker.{key}", ndocker[key]


def _image_tag(image: str) -> str | None:
    """The tag of ``repo[:tag][@digest]`` (``None`` if untagged); registry ports are not tags."""
    if "@sha256:" in image:
        return "@digest"
    last = image.rsplit("/", 1)[-1]
    return last.split(":", 1)[1] if ":" in last else None


def check_images(config: dict[str, Any]) -> list[Finding]:
    """Container images are pinned to a fixed tag (or digest); on AWS an image is required."""
    out: list[Finding] = []
    images = list(_images(config))
    if (config.get("provider") or {}).get("type") == "aws" and not any(v for _, v in images):
        out.append(Finding("error", "pinned-image",
                           "docker.image is missing: set a pinned image such as rayproject/ray:2.60.0-py311-gpu."))
    for where, image in images:
        if not image:
            continue
        image = str(image)
        tag = _image_tag(image)
        if tag is None:
            out.append(Finding("error", "pinned-image", f"{where} = {image!r} has no tag (means 'latest'); pin a "
                                                        "version, e.g. rayproject/ray:2.60.0-py311-gpu."))
        elif tag != "@digest" and (tag in _FLOATING_TAGS or any(t in tag.split("-") for t in _FLOATING_TAGS)):
            out.append(Finding("error", "pinned-image", f"{where} = {image!r} uses a moving tag ({tag}); pin a "
                                                        "version, e.g. rayproject/ray:2.60.0-py311-gpu."))
        elif image.startswith("rayproject/ray-ml"):
            out.append(Finding("error", "pinned-image", f"{where} = {image!r}: rayproject/ray-ml images are no "
                                                        "longer published; use rayproject/ray:<version>-py311-gpu."))
        else:
            m = re.match(r"rayproject/ray:(\d+\.\d+\.\d+)", image)
            if m:
                import ray

                if m.group(1) != ray.__version__:
                    out.append(Finding("warning", "ray-version",
                                       f"{where} has Ray {m.group(1)} but this machine has Ray "
                                       f"{ray.__version__}; `ray up` needs the same version on both sides."))
    return out


def check_torch_pinned(config: dict[str, Any]) -> list[Finding]:
    """Setup installs an exact torch (``torch==X``): on GPU Linux that is the CUDA build of a known version."""
    out: list[Finding] = []
    setup = [(k, c) for k, c in _all_commands(config) if "start_ray" not in k]
    pinned = False
    for key, cmd in setup:
        if "pip" not in cmd:
            continue
        for m in re.finditer(r"(?<![\w.-])torch(?![\w.-])([^\s'\"]*)", cmd):
            spec = m.group(1)
            if spec.startswith("=="):
                pinned = True
            else:
                out.append(Finding("error", "pinned-torch",
                                   f"{key}: `{cmd}` installs torch without an exact version; use torch==X "
                                   "(e.g. torch==2.13.0, the CUDA build on GPU Linux)."))
    if not pinned and any("pip" in c and "install" in c for _, c in setup):
        out.append(Finding("error", "pinned-torch",
                           "setup commands install packages but pin no exact torch (torch==X); the project's "
                           "own `torch>=2.4` would pull whatever is newest."))
    return out


def _storage(config: dict[str, Any]) -> Any:
    return (((config.get("metadata") or {}).get("ouvae")) or {}).get("storage")


def check_auth_mode(config: dict[str, Any]) -> list[Finding]:
    """Head and workers start Ray in the same token-auth mode (explicitly so on provider local).

    Ray 2.60's `ray start --head` turns token auth on by itself when ~/.ray/auth_token exists on the head,
    while `ray start --address` (workers) follows only RAY_AUTH_MODE; a mismatch leaves every worker
    unable to join ("InvalidAuthToken"). On AWS the containers start clean, so leaving both unset is fine.
    """
    def modes(key: str) -> set[str]:
        cmds = [str(c) for c in config.get(key) or [] if "ray start" in str(c)]
        found = {m.group(1) for c in cmds for m in re.finditer(r"RAY_AUTH_MODE=(\w+)", c)}
        return found or {"(unset)"}

    head, workers = modes("head_start_ray_commands"), modes("worker_start_ray_commands")
    if head != workers:
        return [Finding("error", "auth-mode",
                        f"head starts Ray with RAY_AUTH_MODE {sorted(head)} but workers with {sorted(workers)}; "
                        "use the same mode in head_start_ray_commands and worker_start_ray_commands.")]
    if (config.get("provider") or {}).get("type") == "local" and head == {"(unset)"}:
        return [Finding("error", "auth-mode",
                        "provider local: prefix both `ray start` commands with RAY_AUTH_MODE=token (or =disabled). "
                        "Left unset, a ~/.ray/auth_token on the head turns auth on there but not on the workers.")]
    return []


def check_storage(config: dict[str, Any]) -> list[Finding]:
    """Results go to storage every node shares: S3 on AWS, an absolute (NFS) path on local clusters."""
    provider = (config.get("provider") or {}).get("type")
    storage = _storage(config)
    if not isinstance(storage, str) or not storage:
        return [Finding("error", "shared-storage",
                        "metadata.ouvae.storage is missing: set the shared results location the sweep's "
                        "--storage gets (s3://bucket/prefix on AWS, an NFS path on a local cluster).")]
    if provider == "aws" and not re.fullmatch(r"s3://[^/\s]+(/\S*)?", storage):
        return [Finding("error", "shared-storage",
                        f"metadata.ouvae.storage = {storage!r}: on AWS use an S3 URI, s3://bucket/prefix "
                        "(a node's local disk is not seen by the others).")]
    if provider == "local":
        if not storage.startswith("/"):
            return [Finding("error", "shared-storage",
                            f"metadata.ouvae.storage = {storage!r}: use the absolute path of the NFS mount, "
                            "the same on every machine.")]
        if not any(storage in cmd for key, cmd in _all_commands(config) if key == "setup_commands"):
            return [Finding("error", "shared-storage",
                            f"no setup command checks that {storage} is writable on every machine; keep the "
                            "`mkdir -p ... && test -w ...` setup command and put the same path in it.")]
    return []


def check_idle_timeout(config: dict[str, Any]) -> list[Finding]:
    """An explicit idle timeout, so idle GPU workers do not run (and bill) forever."""
    if "idle_timeout_minutes" not in config:
        return [Finding("error", "idle-timeout",
                        "idle_timeout_minutes is not set; state it (e.g. 10) so idle workers are stopped.")]
    return []


def check_secrets(text: str) -> list[Finding]:
    """Nothing in the file (comments included) looks like a credential. The match itself is not echoed."""
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        for what, rx in _SECRET_PATTERNS:
            if rx.search(line):
                out.append(Finding("error", "no-secrets",
                                   f"line {lineno} contains what looks like {what}. Remove it: `ray up` uses "
                                   "your local AWS credentials and nodes use IAM instance profiles. If a real "
                                   "key was ever committed, revoke it."))
    return out


def _walk_placeholders(node: Any, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, value) of every value (comments are not values) that still contains FILL_IN."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _walk_placeholders(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk_placeholders(v, f"{prefix}[{i}]")
    elif isinstance(node, str) and PLACEHOLDER in node:
        yield prefix, node


def find_placeholders(config: dict[str, Any]) -> list[str]:
    """Dotted paths of every value that still contains FILL_IN."""
    return [path for path, _ in _walk_placeholders(config)]


def describe_placeholders(config: dict[str, Any]) -> list[str]:
    """One line per distinct unfilled value (a YAML anchor shared by several node types is listed once)."""
    by_value: dict[str, list[str]] = {}
    for path, value in _walk_placeholders(config):
        by_value.setdefault(value, []).append(path)
    return [paths[0] + (f" (and {len(paths) - 1} more place(s) sharing it)" if len(paths) > 1 else "")
            for paths in by_value.values()]


# --------------------------------------------------------------------------------------------- entry points


def check_config(config: dict[str, Any], text: str | None = None, *, ready: bool = False,
                 path: str = "<config>") -> Report:
    """All checks on an already-loaded config. ``text`` is the file as written (for the secret scan);
    when omitted, the config is dumped to YAML and scanned instead."""
    report = Report(path=path)
    schema = check_schema(config)
    report.findings += schema
    if schema:
        report.findings.append(Finding("warning", "ray", "Ray's own checks were skipped until the schema errors "
                                                         "above are fixed."))
    else:
        report.findings += check_with_ray(config)
    for rule in (check_head, check_worker_resources, check_images, check_torch_pinned, check_storage,
                 check_idle_timeout, check_auth_mode):
        try:
            report.findings += rule(config)
        except (AttributeError, TypeError) as e:  # odd shapes are schema errors, reported above
            if not schema:
                report.findings.append(Finding("error", rule.__name__, f"could not apply the rule: {e}"))
    report.findings += check_secrets(text if text is not None else yaml.safe_dump(config))
    report.placeholders = describe_placeholders(config)
    if ready and report.placeholders:
        report.findings.append(Finding("error", "unfilled",
                                       "still to fill in: " + "; ".join(report.placeholders)
                                       + " (see the '# FILL IN:' comments and clusters/README.md)."))
    return report


def check_file(path: str | Path, *, ready: bool = False) -> Report:
    """Load and check one cluster YAML."""
    config, text = load_config(path)
    return check_config(config, text, ready=ready, path=str(path))


def get_storage(path: str | Path) -> str:
    """metadata.ouvae.storage of a config (what the sweep's --storage should get)."""
    config, _ = load_config(path)
    storage = _storage(config)
    if not isinstance(storage, str) or not storage:
        raise ClusterConfigError(f"{path}: metadata.ouvae.storage is not set.")
    if PLACEHOLDER in storage:
        raise ClusterConfigError(f"{path}: metadata.ouvae.storage is still {storage!r}; fill it in first.")
    return storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check Ray cluster launcher configs offline.")
    parser.add_argument("files", nargs="+", help="cluster YAML files, e.g. clusters/*.yaml")
    parser.add_argument("--ready", action="store_true", help="also fail while any FILL_IN placeholder remains")
    parser.add_argument("--get-storage", action="store_true",
                        help="print metadata.ouvae.storage of the (single) file and exit")
    parser.add_argument("-q", "--quiet", action="store_true", help="print only errors")
    args = parser.parse_args(argv)

    if args.get_storage:
        if len(args.files) != 1:
            parser.error("--get-storage takes exactly one file")
        try:
            print(get_storage(args.files[0]))
        except ClusterConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    status = 0
    for path in args.files:
        try:
            report = check_file(path, ready=args.ready)
        except ClusterConfigError as e:
            print(f"error: {e}", file=sys.stderr)
            status = max(status, 2)
            continue
        shown = report.errors if args.quiet else report.findings
        for f in shown:
            print(f"{path}: {f}")
        if report.ok:
            if not args.quiet:
                todo = (f"; {len(report.placeholders)} value(s) to fill in before `ray up`: "
                        + "; ".join(report.placeholders)) if report.placeholders else ""
                print(f"{path}: OK{todo}")
        else:
            status = max(status, 1)
    return status


if __name__ == "__main__":
    sys.exit(main())
