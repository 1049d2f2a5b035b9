"""The compose file and Dockerfile describe a deployment that can actually come up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent


def compose() -> dict[str, Any]:
    """The parsed docker-compose.yml."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


class TestCompose:
    def test_has_postgres_a_one_shot_migration_and_the_app(self) -> None:
        services = compose()["services"]
        assert {"postgres", "migrate", "app"} <= set(services)
        assert services["migrate"]["command"] == ["tokenfarm", "migrate"]
        assert services["migrate"]["restart"] == "no"

    def test_every_long_running_service_has_a_healthcheck(self) -> None:
        services = compose()["services"]
        for name in ("postgres", "app"):
            assert services[name]["healthcheck"]["test"], name

    def test_start_order_waits_for_health_and_the_migration(self) -> None:
        services = compose()["services"]
        assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
        assert (
            services["app"]["depends_on"]["migrate"]["condition"]
            == "service_completed_successfully"
        )
        assert services["app"]["depends_on"]["postgres"]["condition"] == "service_healthy"

    def test_app_runs_in_production_on_postgres_and_requires_keys(self) -> None:
        env = compose()["services"]["app"]["environment"]
        assert env["TOKENFARM_ENVIRONMENT"] == "production"
        assert env["TOKENFARM_DATABASE_URL"].startswith("postgresql://")
        assert ":?" in env["TOKENFARM_ENCRYPTION_KEYS"], "compose must refuse to start without keys"
        assert ":?" in env["TOKENFARM_JWT_SECRET"], "compose must refuse to start without a JWT key"

    def test_app_does_not_migrate_by_itself(self) -> None:
        assert "--no-migrate" in compose()["services"]["app"]["command"]


class TestDockerfile:
    def test_image_carries_the_migrations_and_runs_unprivileged(self) -> None:
        dockerfile = (ROOT / "Dockerfile").read_text()
        assert "COPY migrations" in dockerfile
        assert "\nUSER " in dockerfile
        assert "HEALTHCHECK" in dockerfile
