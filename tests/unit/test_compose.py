"""docker-compose.yml and the Dockerfile against the real CLI and settings (no Docker engine here).

Compose cannot run in CI, so this is what keeps it honest: every ``forestream ...`` command it
runs must parse with the real click command tree, and every ``FORESTREAM_*`` variable must be a
field of a settings class with a value that field accepts. A renamed flag or setting breaks
this test instead of the first ``docker compose up``.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
from pathlib import Path
from typing import Annotated, Any

import pytest
import typer
import yaml
from pydantic import TypeAdapter, ValidationError
from pydantic.fields import FieldInfo

from forestream.cli import app
from forestream.runtime.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
SHELLS = {"sh", "bash", "/bin/sh", "/bin/bash"}
SHELL_OPERATORS = {"&&", "||", ";", "|", "&"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def cli() -> Any:
    """The click command tree typer builds (typer vendors click, so no ``click`` types here)."""
    command = typer.main.get_command(app)
    assert hasattr(command, "commands")
    return command


SETTINGS_CLASS = re.compile(r"^class \w+\([^)]*Settings\b", re.MULTILINE)


def import_settings_modules() -> None:
    """Import every module that defines a settings class (a subclass of CommonSettings or of
    one of its subclasses), wherever a component put it, under the name the code uses
    (``forestream.worker...`` through the component symlinks). Without this, a class no other
    module of the test run happened to import was missed."""
    root = ROOT / "forestream"
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = sorted(d for d in dirs if d != "__pycache__")
        for name in sorted(files):
            path = Path(folder) / name
            if name.endswith(".py") and SETTINGS_CLASS.search(path.read_text(encoding="utf-8")):
                parts = path.relative_to(ROOT).with_suffix("").parts
                importlib.import_module(".".join(parts))


def settings_fields() -> dict[str, list[tuple[str, FieldInfo]]]:
    """``FORESTREAM_X`` -> [(settings class, field)] over every settings class that exists."""
    import_settings_modules()
    classes: list[type[CommonSettings]] = []
    todo: list[type[CommonSettings]] = [CommonSettings]
    while todo:
        cls = todo.pop()
        classes.append(cls)
        todo.extend(cls.__subclasses__())
    fields: dict[str, list[tuple[str, FieldInfo]]] = {}
    for cls in classes:
        prefix = str(cls.model_config.get("env_prefix", ""))
        for name, info in cls.model_fields.items():
            env = (prefix + name).upper()
            fields.setdefault(env, []).append((cls.__name__, info))
    return fields


def forestream_invocations(command: str | list[str] | None) -> list[list[str]]:
    """The argument lists of every ``forestream`` call in a compose ``command``.

    Handles the exec form, the string form, and ``sh -c "a && b"`` scripts.
    """
    if command is None:
        return []
    tokens = shlex.split(command) if isinstance(command, str) else [str(t) for t in command]
    if tokens and tokens[0] in SHELLS:
        flags = [t for t in tokens[1:-1] if t.startswith("-")]
        assert any("c" in f for f in flags), f"shell without -c: {tokens}"
        lexer = shlex.shlex(tokens[-1], posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        tokens = list(lexer)
    calls: list[list[str]] = []
    current: list[str] = []
    for token in [*tokens, ";"]:
        if token in SHELL_OPERATORS:
            if current and current[0] == "forestream":
                calls.append(current[1:])
            current = []
        else:
            current.append(token)
    return calls


def resolve(cli: Any, args: list[str]) -> tuple[Any, list[str], list[str]]:
    """Walk subcommand names down the tree: (leaf command, its path, the remaining args)."""
    command = cli
    path: list[str] = []
    rest = list(args)
    while hasattr(command, "commands"):
        assert rest, f"`forestream {' '.join(path)}` needs a subcommand"
        name = rest.pop(0)
        sub = command.commands.get(name)
        assert sub is not None, (
            f"`forestream {' '.join([*path, name])}` does not exist; "
            f"known: {sorted(command.commands)}"
        )
        command, path = sub, [*path, name]
    return command, path, rest


def test_compose_has_the_expected_services_and_images(services: dict[str, dict[str, Any]]) -> None:
    assert {"kafka", "minio", "bucket", "topics", "trainer", "worker", "producer"} <= set(services)
    assert {"prometheus", "grafana"} <= set(services)
    assert services["kafka"]["image"] == "apache/kafka:4.1.1"
    for name in ("topics", "trainer", "worker", "producer"):
        assert services[name]["build"] == ".", name
        assert services[name]["image"] == "forestream:latest", name
    assert services["worker"]["deploy"]["replicas"] == 2


def test_kafka_is_single_node_kraft_reachable_as_kafka_9092(
    services: dict[str, dict[str, Any]],
) -> None:
    env = services["kafka"]["environment"]
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "PLAINTEXT://kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"].split(",")
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{env['KAFKA_NODE_ID']}@kafka:9093"
    for listener in env["KAFKA_LISTENERS"].split(","):
        assert listener.split(":")[0] in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"]
    assert env["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == 1  # a single broker


def test_every_forestream_service_talks_to_the_compose_broker(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, service in services.items():
        if service.get("image") == "forestream:latest":
            assert service["environment"]["FORESTREAM_BOOTSTRAP_SERVERS"] == "kafka:9092", name


def test_model_store_is_the_minio_bucket_not_a_shared_volume(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    """Trainer and workers meet only in the bucket the one-shot ``bucket`` service creates, on
    the MinIO service, with its root credentials; workers cache artifacts in their own /cache."""
    from forestream.registry.open import store_location
    from forestream.registry.store import is_uri

    minio = services["minio"]
    port = next(p.split(":")[-1] for p in minio["ports"] if p.endswith(":9000"))
    script = services["bucket"]["entrypoint"][-1]
    created = re.search(r"mc mb (?:--ignore-existing )?store/([a-z0-9.-]+)", script)
    assert created, script
    alias = re.search(r"mc alias set store (\S+) (\S+) (\S+)", script)
    assert alias, script
    assert alias.group(1) == f"http://minio:{port}"
    assert (alias.group(2), alias.group(3)) == ('"$$MINIO_ROOT_USER"', '"$$MINIO_ROOT_PASSWORD"')
    for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert services["bucket"]["environment"][var] == minio["environment"][var]
    for name in ("trainer", "worker"):
        env = services[name]["environment"]
        store = store_location(env["FORESTREAM_MODEL_STORE"])
        assert is_uri(store) and store.startswith(f"s3://{created.group(1)}/"), (name, store)
        assert env["FORESTREAM_S3_ENDPOINT_URL"] == f"http://minio:{port}", name
        assert env["AWS_ACCESS_KEY_ID"] == minio["environment"]["MINIO_ROOT_USER"], name
        assert env["AWS_SECRET_ACCESS_KEY"] == minio["environment"]["MINIO_ROOT_PASSWORD"], name
        depends = services[name]["depends_on"]
        assert depends["bucket"]["condition"] == "service_completed_successfully", name
        mounts = [v.split(":")[1] for v in services[name].get("volumes", [])]
        assert "/models" not in mounts, f"{name} still mounts a shared model volume"
    assert "models" not in compose["volumes"]
    assert services["worker"]["environment"]["FORESTREAM_MODEL_CACHE_DIR"] == "/cache"
    assert "/cache" in DOCKERFILE.read_text()  # created and owned by the image's user
    assert services["bucket"]["depends_on"]["minio"]["condition"] == "service_healthy"


def _host_port_bindings(service: dict[str, Any]) -> list[str]:
    return [str(p) for p in service.get("ports", [])]


def _mounts(service: dict[str, Any]) -> dict[str, str]:
    """Container path -> host path of the service's bind mounts (``./x:/y[:ro]``)."""
    found = {}
    for volume in service.get("volumes", []):
        host, container, *_ = str(volume).split(":")
        if host.startswith("./"):
            found[container] = host
    return found


def test_prometheus_scrapes_the_workers_with_the_ops_rules(
    services: dict[str, dict[str, Any]],
) -> None:
    """The scrape target is the worker service on its --metrics-port, every replica (DNS A
    records), under the job name the WorkerDown rule selects; the rules are ops/'s file."""
    prometheus = services["prometheus"]
    assert prometheus["image"].startswith("prom/prometheus:v")
    mounts = _mounts(prometheus)
    config_path = mounts["/etc/prometheus/prometheus.yml"]
    assert config_path == "./ops/prometheus/prometheus.yml"
    config = yaml.safe_load((ROOT / config_path).read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    assert mounts["/etc/prometheus/alerts.yml"] == "./ops/prometheus/alerts.yml"
    (job,) = config["scrape_configs"]
    assert job["job_name"] == "forestream-workers"
    rules = (ROOT / "ops/prometheus/alerts.yml").read_text()
    assert 'up{job="forestream-workers"}' in rules
    (sd,) = job["dns_sd_configs"]
    assert sd["names"] == ["worker"] and sd["type"] == "A"
    worker_port = forestream_invocations(services["worker"]["command"])[0]
    port = worker_port[worker_port.index("--metrics-port") + 1]
    assert sd["port"] == int(port)
    assert port in [str(e) for e in services["worker"]["expose"]]
    assert "worker" in prometheus["depends_on"]
    for path in mounts.values():
        assert (ROOT / path).exists(), path


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus(
    services: dict[str, dict[str, Any]],
) -> None:
    grafana = services["grafana"]
    assert grafana["image"].startswith("grafana/grafana:")
    mounts = _mounts(grafana)
    for path in mounts.values():
        assert (ROOT / path).exists(), path
    datasources = yaml.safe_load(
        (ROOT / mounts["/etc/grafana/provisioning/datasources"] / "prometheus.yml").read_text()
    )
    (source,) = datasources["datasources"]
    assert source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in _host_port_bindings(services["prometheus"]))
    providers = yaml.safe_load(
        (ROOT / mounts["/etc/grafana/provisioning/dashboards"] / "forestream.yml").read_text()
    )
    (provider,) = providers["providers"]
    folder = provider["options"]["path"]
    dashboard = [c for c, h in mounts.items() if h == "./ops/grafana/forestream-dashboard.json"]
    assert dashboard and dashboard[0].startswith(folder + "/")
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == dashboard[0]
    assert "prometheus" in grafana["depends_on"]


def test_prometheus_and_grafana_listen_on_the_loopback_only(
    services: dict[str, dict[str, Any]],
) -> None:
    for name in ("prometheus", "grafana"):
        ports = _host_port_bindings(services[name])
        assert ports, name
        for binding in ports:
            assert binding.startswith("127.0.0.1:"), f"{name} publishes {binding} beyond 127.0.0.1"


def test_depends_on_names_real_services(services: dict[str, dict[str, Any]]) -> None:
    for name, service in services.items():
        for dependency in service.get("depends_on", {}):  # a mapping, or a list of names
            assert dependency in services, f"{name} depends on unknown service {dependency}"


def test_the_steps_run_the_intended_commands(services: dict[str, dict[str, Any]]) -> None:
    def paths(service: str) -> list[list[str]]:
        return [call[:2] for call in forestream_invocations(services[service]["command"])]

    assert forestream_invocations(services["topics"]["command"]) == [
        ["topics", "create", "--partitions", "6"]
    ]
    trainer = forestream_invocations(services["trainer"]["command"])
    assert trainer[-1][0] == "train" and "--promote" in trainer[-1]
    assert paths("worker") == [["worker", "--metrics-port"]]
    producer = forestream_invocations(services["producer"]["command"])[0]
    assert producer[0] == "produce" and "--loop" in producer
    assert producer[producer.index("--rate") + 1] == "50"


def test_every_forestream_command_and_flag_exists_and_parses(
    services: dict[str, dict[str, Any]], cli: Any
) -> None:
    problems: list[str] = []
    checked = 0
    for name, service in services.items():
        for call in forestream_invocations(service.get("command")):
            checked += 1
            try:
                command, path, rest = resolve(cli, call)
            except AssertionError as exc:
                problems.append(f"{name}: {exc}")
                continue
            known = {opt for p in command.params for opt in (*p.opts, *p.secondary_opts)}
            flags = [t.split("=")[0] for t in rest if t.startswith("--")]
            unknown = [flag for flag in flags if flag not in known]
            if unknown:
                problems.append(f"{name}: `forestream {' '.join(path)}` has no option {unknown}")
                continue
            try:  # types, missing values, stray arguments: exactly what the container would hit
                command.make_context(" ".join(["forestream", *path]), list(rest))
            except Exception as exc:  # click's usage errors (typer vendors click)
                message = exc.format_message() if hasattr(exc, "format_message") else repr(exc)
                if "does not exist" in message:
                    continue  # a container path (/data, /models): it exists in the container
                problems.append(f"{name}: `forestream {' '.join(call)}`: {message}")
    assert checked >= 5
    assert not problems, "\n".join(problems)


def test_every_forestream_env_var_is_a_setting_with_a_valid_value(
    services: dict[str, dict[str, Any]],
) -> None:
    fields = settings_fields()
    problems: list[str] = []
    seen = 0
    for name, service in services.items():
        env = service.get("environment") or {}
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        for var, raw in env.items():
            if not var.startswith("FORESTREAM_"):
                continue
            seen += 1
            owners = fields.get(var.upper())
            if not owners:
                problems.append(f"{name}: {var} is not a field of any settings class")
                continue
            errors = []
            for cls_name, info in owners:
                try:
                    field_type = info.annotation  # with its ge/le constraints, if any
                    if info.metadata:
                        field_type = Annotated[field_type, *info.metadata]
                    TypeAdapter(field_type).validate_python(str(raw))
                except ValidationError as exc:
                    errors.append(f"{cls_name}: {exc.errors()[0]['msg']}")
            if len(errors) == len(owners):
                problems.append(f"{name}: {var}={raw!r} is invalid ({'; '.join(errors)})")
    assert seen > 0
    assert not problems, "\n".join(problems)


def test_dockerfile_installs_the_locked_set_then_the_project_on_python_311_slim() -> None:
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    locked = text.index("pip install --require-hashes -r requirements.lock")
    assert re.search(r"pip install --no-deps \.(\s|$)", text[locked:])
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".forestream"} <= set(ignored)  # never ship local state


def test_invocation_parser_handles_shell_scripts_and_exec_form() -> None:
    script = ["sh", "-ec", "forestream a --x 1 && echo hi; forestream b c --flag"]
    assert forestream_invocations(script) == [["a", "--x", "1"], ["b", "c", "--flag"]]
    assert forestream_invocations("forestream worker --metrics-port 9100") == [
        ["worker", "--metrics-port", "9100"]
    ]
    assert forestream_invocations(["python", "-m", "x"]) == []


SECRET_NAME = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|_KEY$|TOKEN", re.IGNORECASE)
INTERPOLATED = re.compile(r"^\$\{[A-Z_][A-Z0-9_]*(:?[-?][^}]*)?\}$")


def test_no_secret_is_a_literal_value(services: dict[str, dict[str, Any]]) -> None:
    """Credentials come from .env (``${VAR:?...}``) or compose secrets (/run/secrets/...)."""
    checked = 0
    for name, service in services.items():
        for var, value in (service.get("environment") or {}).items():
            if not SECRET_NAME.search(var):
                continue
            checked += 1
            text = str(value)
            assert INTERPOLATED.match(text) or text.startswith("/run/secrets/"), (
                f"{name}: {var} is a literal value; take it from .env or a compose secret"
            )
    assert checked >= 6
    example = (ROOT / ".env.example").read_text()
    for var in ("MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"):
        assert re.search(rf"^{var}=", example, re.MULTILINE), var
    assert ".env" in (ROOT / ".gitignore").read_text().split()
    assert ".env" in (ROOT / ".dockerignore").read_text().split()


def test_signing_keys_are_secrets_and_workers_get_only_the_public_one(
    compose: dict[str, Any], services: dict[str, dict[str, Any]]
) -> None:
    secrets = compose["secrets"]
    assert secrets["signing_key"]["file"].endswith("/signing.key")
    assert secrets["verify_key"]["file"].endswith("/verify.pub")
    trainer, worker = services["trainer"], services["worker"]
    assert trainer["secrets"] == ["signing_key"]
    assert trainer["environment"]["FORESTREAM_SIGNING_KEY_FILE"] == "/run/secrets/signing_key"
    assert worker["secrets"] == ["verify_key"]
    assert worker["environment"]["FORESTREAM_VERIFY_KEY_FILE"] == "/run/secrets/verify_key"
    for name, service in services.items():
        if name != "trainer":
            assert "signing_key" not in service.get("secrets", []), name


def test_host_ports_are_published_on_loopback_only(services: dict[str, dict[str, Any]]) -> None:
    published = 0
    for name, service in services.items():
        for port in service.get("ports", []):
            published += 1
            assert str(port).startswith("127.0.0.1:"), f"{name} publishes {port} on every address"
    assert published >= 3


def test_workers_listen_for_probes_inside_the_network(services: dict[str, dict[str, Any]]) -> None:
    """The default is loopback (nothing exposed by accident); a container sets 0.0.0.0 so its
    own network reaches /metrics, and publishes no host port."""
    worker = services["worker"]
    assert worker["environment"]["FORESTREAM_METRICS_HOST"] == "0.0.0.0"
    assert "ports" not in worker
