"""cluster.yaml, checked offline: Ray's own autoscaler schema, no Ray port open to the internet,
a loopback-only dashboard, token auth in every `ray start`, and no credentials in the file.

Every checker is also run against mutated copies of the config, so a checker that cannot fail
fails here. Nothing calls AWS: `prepare_config` and `validate_config` are the offline half of
what `ray up` does before it talks to EC2."""

from __future__ import annotations

import copy
import ipaddress
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"

# Ray's listening ports that must never face the internet: dashboard + job server, GCS, Ray
# client server, object manager, dashboard agent (HTTP).
PROTECTED_PORTS = {8265: "dashboard/job server", 6379: "GCS", 10001: "Ray client server",
                   8076: "object manager", 52365: "dashboard agent"}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
COMMAND_LISTS = ("initialization_commands", "setup_commands", "head_setup_commands",
                 "worker_setup_commands", "head_start_ray_commands", "worker_start_ray_commands")


def raw_text() -> str:
    return CLUSTER_YAML.read_text()


def load(text: str | None = None) -> dict:
    return yaml.safe_load(raw_text() if text is None else text)


def prepared(config: dict) -> dict:
    """The config as `ray up` sees it after merging Ray's AWS defaults (offline)."""
    return prepare_config(copy.deepcopy(config))


# --- checkers -------------------------------------------------------------------------------

def _is_world(cidr: str) -> bool:
    """0.0.0.0/0, ::/0, or anything so wide that it is the internet in practice."""
    net = ipaddress.ip_network(cidr, strict=False)
    return net.prefixlen < (8 if net.version == 4 else 16)


def _port_range(perm: dict) -> tuple[int, int] | None:
    """(low, high) ports a permission covers; None for protocols without ports (ICMP)."""
    protocol = str(perm.get("IpProtocol", "-1")).lower()
    if protocol in ("-1", "all"):
        return 0, 65535
    if protocol not in ("tcp", "udp", "6", "17"):
        return None
    low, high = perm.get("FromPort", -1), perm.get("ToPort", -1)
    if low in (-1, None) or high in (-1, None):
        return 0, 65535
    return int(low), int(high)


def exposure_violations(ip_permissions: list[dict]) -> list[str]:
    """Inbound rules open to the internet that cover a Ray port, or that are not plain SSH."""
    problems = []
    for perm in ip_permissions:
        world = [r["CidrIp"] for r in perm.get("IpRanges", []) if _is_world(r["CidrIp"])]
        world += [r["CidrIpv6"] for r in perm.get("Ipv6Ranges", []) if _is_world(r["CidrIpv6"])]
        if not world:
            continue
        ports = _port_range(perm)
        if ports is not None:
            for port, name in sorted(PROTECTED_PORTS.items()):
                if ports[0] <= port <= ports[1]:
                    problems.append(f"port {port} ({name}) open to {world}")
        protocol = str(perm.get("IpProtocol", "-1")).lower()
        if protocol not in ("tcp", "6") or ports != (22, 22):
            problems.append(f"{protocol} {ports} open to {world}: only SSH (tcp 22) may be")
    return problems


def _commands(config: dict) -> list[tuple[str, str]]:
    found = [(name, cmd) for name in COMMAND_LISTS for cmd in config.get(name) or []]
    for type_name, node_type in config.get("available_node_types", {}).items():
        for name in ("initialization_commands", "worker_setup_commands"):
            found += [(f"{type_name}.{name}", cmd) for cmd in node_type.get(name) or []]
    return found


def _ray_start_invocations(command: str) -> list[tuple[dict[str, str], list[str]]]:
    """(environment assignments, arguments) of each `ray start` in a shell command line."""
    lexer = shlex.shlex(command, posix=True, punctuation_chars=";&|()")
    lexer.whitespace_split = True
    parts, current = [], []
    for token in lexer:
        if set(token) <= set(";&|()"):
            parts.append(current)
            current = []
        else:
            current.append(token)
    parts.append(current)
    found = []
    exported: dict[str, str] = {}  # `export A=b; ray start` in the same command line
    assignment = re.compile(r"[A-Za-z_][A-Za-z0-9_]*=.*")
    for words in parts:
        if words[:1] == ["export"]:
            exported.update(w.split("=", 1) for w in words[1:] if assignment.fullmatch(w))
            continue
        if words[:1] == ["unset"]:
            for name in words[1:]:
                exported.pop(name, None)
            continue
        env = dict(exported)
        while words and assignment.fullmatch(words[0]):
            key, value = words.pop(0).split("=", 1)
            env[key] = value
        if words[:2] == ["ray", "start"]:
            found.append((env, words[2:]))
    return found


def _flag(args: list[str], name: str) -> list[str]:
    values = []
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            values.append(args[i + 1])
        elif arg.startswith(name + "="):
            values.append(arg.split("=", 1)[1])
    return values


def start_violations(config: dict) -> list[str]:
    """Dashboard bound beyond loopback, or a `ray start` without RAY_AUTH_MODE=token."""
    problems = []
    starts = 0
    head_has_loopback_dashboard = False
    for where, command in _commands(config):
        for mode in re.findall(r"RAY_AUTH_MODE=(\S+)", command):
            if mode.strip("'\";") != "token":
                problems.append(f"{where}: RAY_AUTH_MODE={mode} (must be token)")
        for env, args in _ray_start_invocations(command):
            starts += 1
            if env.get("RAY_AUTH_MODE") != "token":
                problems.append(f"{where}: `ray start` without RAY_AUTH_MODE=token: {command!r}")
            hosts = _flag(args, "--dashboard-host")
            for host in hosts:
                if host not in LOOPBACK_HOSTS:
                    problems.append(f"{where}: dashboard bound to {host!r}")
            if "--head" in args:
                head_has_loopback_dashboard = bool(hosts) and set(hosts) <= LOOPBACK_HOSTS
                if not _flag(args, "--autoscaling-config"):
                    problems.append(f"{where}: the head starts without --autoscaling-config")
    if not any(args and "--head" in args for _, c in _commands(config)
               for _, args in _ray_start_invocations(c)):
        problems.append("no `ray start --head` command")
    elif not head_has_loopback_dashboard:
        problems.append("the head's `ray start` must say --dashboard-host=127.0.0.1 explicitly")
    if starts and "~/.ray/auth_token" not in (config.get("file_mounts") or {}):
        problems.append("file_mounts must copy ~/.ray/auth_token to the nodes (token auth)")
    return problems


_SECRET_PATTERNS = [
    (re.compile(r"aws_(access_key_id|secret_access_key|session_token)", re.I), "AWS key name"),
    (re.compile(r"\b(AKIA|ASIA|AIDA|AROA|AGPA|ANPA)[A-Z0-9]{16}\b"), "AWS access key id"),
    (re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"), "inline private key"),
    (re.compile(r"(?<![A-Za-z0-9/+=])(?=[A-Za-z0-9/+]*[A-Z])(?=[A-Za-z0-9/+]*[a-z])"
                r"(?=[A-Za-z0-9/+]*[0-9])[A-Za-z0-9/+]{40}(?![A-Za-z0-9/+=])"),
     "40-character secret-like string"),
]
# key = value / key: value with a literal value; a path (~/, /) or a $VARIABLE is not a secret.
_ASSIGNMENT = re.compile(r"(password|passwd|secret|token|api[_-]?key|access[_-]?key)"
                         r"[\"']?\s*[:=]\s*[\"']?([^\s\"',}]*)", re.I)


def credential_violations(text: str) -> list[str]:
    problems = [f"{what}: {m.group(0)[:12]}..." for pattern, what in _SECRET_PATTERNS
                for m in pattern.finditer(text)]
    for m in _ASSIGNMENT.finditer(text):
        value = m.group(2)
        if value and not value.startswith(("~/", "/", "$")):
            problems.append(f"literal value for {m.group(1)!r}: {m.group(0)[:24]}...")
    return problems


# --- the real file --------------------------------------------------------------------------

def test_cluster_yaml_matches_rays_schema():
    config = load()
    validate_config(config)  # the file as written
    full = prepared(config)  # and as `ray up` fills it out with Ray's AWS defaults
    validate_config(full)
    assert full["provider"]["type"] == "aws" and full["provider"]["region"]
    assert full["auth"]["ssh_user"] == "ubuntu"


def test_node_types_cpu_head_gpu_workers_from_zero():
    config = load()
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["max_workers"] == 0 and head.get("min_workers", 0) == 0
    assert "GPU" not in head["resources"] and head["resources"]["CPU"] >= 1
    gpu_types = {n: t for n, t in types.items() if t["resources"].get("GPU", 0) >= 1}
    assert gpu_types, "a GPU worker type is required for the CLIP/CAM pools and Train workers"
    for node_type in gpu_types.values():
        assert node_type["min_workers"] == 0 and node_type["max_workers"] >= 1
        assert node_type["resources"]["CPU"] >= 1
    assert all(t.get("min_workers", 0) == 0 for t in types.values()), "scale from zero"
    assert config["max_workers"] >= max(t["max_workers"] for t in gpu_types.values())
    assert config["idle_timeout_minutes"] > 0
    for node_type in types.values():
        profile = node_type["node_config"].get("IamInstanceProfile", {})
        assert set(profile) <= {"Name", "Arn"}, "instance profiles by name or ARN only"


def test_no_ray_port_open_to_the_internet():
    config = load()
    rules = config["provider"].get("security_group", {}).get("IpPermissions", [])
    assert exposure_violations(rules) == []


def test_rules_ray_would_authorize_expose_only_ssh():
    """The ingress rules Ray itself builds for the group it creates: its defaults (intra-group
    traffic, SSH from anywhere) plus ours. Only SSH may face the internet."""
    from ray.autoscaler._private.aws.config import _create_default_inbound_rules

    config = load()
    extra = config["provider"].get("security_group", {}).get("IpPermissions", [])
    rules = _create_default_inbound_rules({"sg-00000000"}, extra)
    assert exposure_violations(rules) == []
    assert any(r.get("UserIdGroupPairs") for r in rules), "intra-cluster traffic stays allowed"


def test_dashboard_loopback_and_token_auth_everywhere():
    assert start_violations(load()) == []
    assert start_violations(prepared(load())) == []


def test_no_credentials_in_cluster_yaml():
    assert credential_violations(raw_text()) == []


def test_setup_installs_the_pinned_pyproject_dependencies(tmp_path):
    """Run the setup command that writes ~/ccd-requirements.txt against this checkout."""
    config = load()
    [command] = [c for c in config["setup_commands"] if "> ~/ccd-requirements.txt" in c]
    (tmp_path / "ccd-venv" / "bin").mkdir(parents=True)
    (tmp_path / "ccd-venv" / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "ccd-ray").symlink_to(ROOT)
    subprocess.run(["bash", "-c", command], check=True, env={**os.environ, "HOME": str(tmp_path)})
    written = (tmp_path / "ccd-requirements.txt").read_text().split()
    pinned = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert written == pinned
    assert "torch==2.14.1" in written
    assert any(c.endswith("pip install --quiet -r ~/ccd-requirements.txt")
               for c in config["setup_commands"])
    assert config["file_mounts"]["~/ccd-ray"] == "."


# --- the checkers catch what they are for ---------------------------------------------------

def _with_rule(rule: dict) -> list[dict]:
    config = load()
    config["provider"].setdefault("security_group", {}).setdefault("IpPermissions", []).append(rule)
    return config["provider"]["security_group"]["IpPermissions"]


@pytest.mark.parametrize("rule, expected", [
    ({"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
      "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "port 8265"),
    ({"IpProtocol": "tcp", "FromPort": 6379, "ToPort": 6379,
      "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}, "port 6379"),
    ({"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "port 10001"),
    ({"IpProtocol": "tcp", "FromPort": 8000, "ToPort": 9000,
      "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "port 8076"),
    ({"IpProtocol": "tcp", "FromPort": 0, "ToPort": 65535,
      "IpRanges": [{"CidrIp": "0.0.0.0/1"}, {"CidrIp": "128.0.0.0/1"}]}, "port 8265"),
    ({"IpProtocol": "tcp", "FromPort": 443, "ToPort": 443,
      "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}, "only SSH"),
])
def test_exposure_checker_catches_open_ports(rule, expected):
    problems = exposure_violations(_with_rule(rule))
    assert any(expected in p for p in problems), problems


def test_exposure_checker_allows_private_ranges():
    rule = {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265,
            "IpRanges": [{"CidrIp": "10.0.0.0/16"}]}
    assert exposure_violations(_with_rule(rule)) == []


def _replace(text: str, old: str, new: str, count: int = -1) -> str:
    assert old in text, f"mutation target {old!r} is gone from cluster.yaml"
    return text.replace(old, new, count)


@pytest.mark.parametrize("mutate, expected", [
    (lambda t: _replace(t, "--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0"),
     "dashboard bound to '0.0.0.0'"),
    (lambda t: _replace(t, "--dashboard-host=127.0.0.1", "--dashboard-host 0.0.0.0"),
     "dashboard bound to '0.0.0.0'"),
    (lambda t: _replace(t, " --dashboard-host=127.0.0.1", ""), "explicitly"),
    (lambda t: _replace(t, "RAY_AUTH_MODE=token RAY_ACCEL", "RAY_ACCEL"),
     "without RAY_AUTH_MODE=token"),
    (lambda t: _replace(t, "RAY_AUTH_MODE=token RAY_ACCEL", "RAY_AUTH_MODE=disabled RAY_ACCEL"),
     "RAY_AUTH_MODE=disabled"),
    (lambda t: _replace(t, '  "~/.ray/auth_token": "~/.ray/auth_token"\n', ""),
     "~/.ray/auth_token"),
    (lambda t: _replace(t, "--autoscaling-config=~/ray_bootstrap_config.yaml", ""),
     "--autoscaling-config"),
])
def test_start_checker_catches_mutations(mutate, expected):
    problems = start_violations(prepared(load(mutate(raw_text()))))
    assert any(expected in p for p in problems), problems


def test_start_checker_accepts_an_exported_auth_mode():
    text = _replace(raw_text(), "RAY_AUTH_MODE=token RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1\n",
                    "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO=1\n", count=1)
    assert start_violations(load(text)), "the head's ray start lost its auth mode"
    text = _replace(text, "ulimit -n 65536; unset OMP_NUM_THREADS;",
                    "ulimit -n 65536; unset OMP_NUM_THREADS; export RAY_AUTH_MODE=token;", count=1)
    assert start_violations(load(text)) == []


def test_start_checker_catches_rays_default_start_commands():
    """Without our start commands Ray's defaults apply: dashboard on 0.0.0.0, no token."""
    config = load()
    del config["head_start_ray_commands"], config["worker_start_ray_commands"]
    problems = start_violations(prepared(config))
    assert any("dashboard bound to '0.0.0.0'" in p for p in problems), problems
    assert any("without RAY_AUTH_MODE=token" in p for p in problems), problems


@pytest.mark.parametrize("leak", [
    "  aws_access_key_id: AKIAIOSFODNN7EXAMPLE\n",
    "  aws_secret_access_key: wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    "# key AKIAIOSFODNN7EXAMPLE\n",
    "# wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\n",
    "  password: hunter2\n",
    "head_setup_commands: [export RAY_AUTH_TOKEN=abcdef0123456789]\n",
    "# token=abcdef0123456789\n",
    "# -----BEGIN RSA PRIVATE KEY-----\n",
])
def test_credential_checker_catches_leaks(leak):
    text = raw_text()
    mutated = text + leak if not leak.startswith("head_setup_commands") else \
        _replace(text, "head_setup_commands: []\n", leak)
    assert credential_violations(mutated), leak


def test_schema_check_catches_broken_configs():
    config = load()
    bad = copy.deepcopy(config)
    bad["available_node_types"]["gpu.worker"]["resources"]["GPU"] = 0.5  # must be an integer
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["dashboard_host"] = "0.0.0.0"  # no such top-level key
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["head_node_type"] = "missing"
    with pytest.raises(ValueError):
        validate_config(bad)
    bad = copy.deepcopy(config)
    bad["provider"]["security_group"]["FromPort"] = 22  # not an AWS security-group field
    with pytest.raises(jsonschema.ValidationError):
        validate_config(bad)
