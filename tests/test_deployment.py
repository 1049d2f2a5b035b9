"""The compose file and Dockerfile describe a deployment that can actually come up: PostgreSQL, a
one-shot migration, two replicas of one image with one environment, and no secret written down."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
REPLICAS = ("app1", "app2")
REQUIRED_FROM_ENVIRONMENT = (
    "TOKENFARM_ENCRYPTION_KEYS",
    "TOKENFARM_JWT_SECRET",
    "POSTGRES_PASSWORD",
)
SECRET_WORDS = {"KEY", "KEYS", "SECRET", "PASSWORD", "TOKEN"}
REQUIRED_VARIABLE = re.compile(r"\$\{(?P<name>[A-Z_]+):\?[^}]+\}")


def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml (anchors and merge keys resolved)."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def services() -> dict[str, Any]:
    """The compose file's services."""
    found: dict[str, Any] = compose()["services"]
    return found


def strings(node: Any, path: str = "") -> Iterator[tuple[str, str]]:
    """Every string in a parsed YAML document, with its path (`services.app1.environment.X`)."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from strings(value, f"{path}[{index}]")
    elif isinstance(node, str):
        yield path, node


class TestCompose:
    def test_has_postgres_a_one_shot_migration_and_two_replicas(self) -> None:
        assert set(services()) == {"postgres", "migrate", *REPLICAS}
        migrate = services()["migrate"]
        assert migrate["command"] == ["tokenfarm", "migrate"]
        assert migrate["restart"] == "no"
        assert "healthcheck" not in migrate and "ports" not in migrate

    def test_replicas_serve_without_migrating_on_every_address(self) -> None:
        for name in REPLICAS:
            command = services()[name]["command"]
            assert command[:2] == ["tokenfarm", "serve"], name
            assert "--no-migrate" in command, name
            assert command[command.index("--host") + 1] == "0.0.0.0", name
            assert command[command.index("--port") + 1] == "8000", name

    def test_start_order_waits_for_health_and_the_migration(self) -> None:
        assert services()["migrate"]["depends_on"] == {"postgres": {"condition": "service_healthy"}}
        for name in REPLICAS:
            assert services()[name]["depends_on"] == {
                "postgres": {"condition": "service_healthy"},
                "migrate": {"condition": "service_completed_successfully"},
            }, name

    def test_postgres_and_every_replica_have_healthchecks(self) -> None:
        assert "pg_isready" in " ".join(services()["postgres"]["healthcheck"]["test"])
        for name in REPLICAS:
            check = services()[name]["healthcheck"]
            assert "/readyz" in " ".join(check["test"]), name
            assert check["interval"] and check["retries"] >= 1, name

    def test_replicas_get_time_to_store_runs_in_flight_when_stopped(self) -> None:
        for name in REPLICAS:
            grace = services()[name]["stop_grace_period"]
            assert re.fullmatch(r"\d+s", grace) and int(grace[:-1]) >= 30, name

    def test_replicas_listen_on_distinct_host_ports(self) -> None:
        published = [services()[name]["ports"] for name in REPLICAS]
        assert all(len(ports) == 1 for ports in published)
        host_ports = [ports[0].rsplit(":", 1)[0] for ports in published]
        assert len(set(host_ports)) == len(REPLICAS)
        assert all(ports[0].endswith(":8000") for ports in published)

    def test_migration_and_replicas_share_one_image_and_one_environment(self) -> None:
        anchor = compose()["x-tokenfarm-env"]
        users = ["migrate", *REPLICAS]
        assert all(services()[name]["environment"] == anchor for name in users)
        assert len({services()[name]["image"] for name in users}) == 1
        assert all(services()[name]["build"] == "." for name in users)
        replicas = [services()[name] for name in REPLICAS]
        assert all(
            {k: v for k, v in replica.items() if k != "ports"}
            == {k: v for k, v in replicas[0].items() if k != "ports"}
            for replica in replicas
        ), "the replicas differ in more than their published port"

    def test_runs_in_production_on_the_compose_postgres(self) -> None:
        env = compose()["x-tokenfarm-env"]
        assert env["TOKENFARM_ENVIRONMENT"] == "production"
        assert re.fullmatch(
            r"postgresql://tokenfarm:\$\{POSTGRES_PASSWORD:\?[^}]+\}@postgres:5432/tokenfarm",
            env["TOKENFARM_DATABASE_URL"],
        )
        assert services()["postgres"]["environment"]["POSTGRES_DB"] == "tokenfarm"

    def test_keys_and_passwords_are_required_from_the_environment(self) -> None:
        env = compose()["x-tokenfarm-env"]
        for variable in ("TOKENFARM_ENCRYPTION_KEYS", "TOKENFARM_JWT_SECRET"):
            match = REQUIRED_VARIABLE.fullmatch(env[variable])
            assert match and match["name"] == variable, f"{variable} must be ${{{variable}:?…}}"
        password = services()["postgres"]["environment"]["POSTGRES_PASSWORD"]
        assert (match := REQUIRED_VARIABLE.fullmatch(password)) and match["name"] == (
            "POSTGRES_PASSWORD"
        )

    def test_no_secret_is_written_down(self) -> None:
        for path, value in strings(compose()):
            if SECRET_WORDS & set(path.rsplit(".", 1)[-1].upper().split("_")):
                assert REQUIRED_VARIABLE.fullmatch(value), f"{path} holds a literal secret"
            if "://" in value and "@" in value:
                credentials = value.split("://", 1)[1].split("@", 1)[0]
                password = credentials.split(":", 1)[1] if ":" in credentials else ""
                assert not password or REQUIRED_VARIABLE.fullmatch(password), path
        text = (ROOT / "docker-compose.yml").read_text()
        # A Fernet key: 32 bytes as url-safe base64.
        assert not re.search(r"[A-Za-z0-9_-]{43}=", text), "an encryption key is inlined"


class TestComposeConfig:
    """`docker compose config` accepts the file with the secrets set, and refuses without."""

    @pytest.fixture
    def docker_compose(self) -> list[str]:
        if shutil.which("docker") is None:
            pytest.skip("docker is not installed")
        probe = subprocess.run(
            ["docker", "compose", "version"], capture_output=True, text=True, check=False
        )
        if probe.returncode != 0:
            pytest.skip(f"docker compose is not available: {probe.stderr.strip()[:200]}")
        return ["docker", "compose", "--file", str(ROOT / "docker-compose.yml")]

    def _config(self, command: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
        clean = {k: v for k, v in os.environ.items() if k not in REQUIRED_FROM_ENVIRONMENT}
        return subprocess.run(
            [*command, "config", "--format", "json"],
            env={**clean, **env},
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            cwd="/",  # no .env file is picked up
        )

    def test_valid_with_the_secrets_and_refused_without(self, docker_compose: list[str]) -> None:
        values = {name: f"value-of-{name.lower()}" for name in REQUIRED_FROM_ENVIRONMENT}
        accepted = self._config(docker_compose, values)
        assert accepted.returncode == 0, accepted.stderr
        for missing in REQUIRED_FROM_ENVIRONMENT:
            without = {k: v for k, v in values.items() if k != missing}
            refused = self._config(docker_compose, without)
            assert refused.returncode != 0
            assert missing in refused.stderr


class TestDockerfile:
    def test_image_carries_the_migrations_and_runs_unprivileged(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert "COPY migrations" in dockerfile
        users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
        assert users and users[-1] not in ("root", "0"), "the image must not run as root"

    def test_installs_no_development_dependencies(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        installs = [line for line in dockerfile.splitlines() if "pip install" in line]
        assert installs and not any("dev]" in line for line in installs)
        assert "COPY tests" not in dockerfile and "COPY . " not in dockerfile

    def test_checks_readiness_and_serves_without_migrating(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert "HEALTHCHECK" in dockerfile and "/readyz" in dockerfile
        cmd = re.search(r"^CMD (\[.*\])$", dockerfile, re.MULTILINE)
        assert cmd is not None
        assert yaml.safe_load(cmd.group(1))[:3] == ["tokenfarm", "serve", "--no-migrate"]
