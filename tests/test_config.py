"""Settings (`TOKENFARM_*`) and the database URL rules: users give plain URLs, never drivers."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy.engine import make_url

from app.config import Settings
from app.db import async_database_url
from app.errors import ConfigurationError


@pytest.fixture(autouse=True)
def no_tokenfarm_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come only from the test, never from the caller's environment."""
    for name in ("ENVIRONMENT", "DATA_DIR", "DATABASE_URL", "ENCRYPTION_KEYS", "VERSIONS_KEPT"):
        monkeypatch.delenv(f"TOKENFARM_{name}", raising=False)
    yield


def settings(**values: object) -> Settings:
    """Settings from keyword values and the environment, ignoring any `.env` file."""
    return Settings(_env_file=None, **values)  # type: ignore[arg-type]


class TestAsyncDatabaseUrl:
    @pytest.mark.parametrize(
        ("url", "expected"),
        [
            ("sqlite:///x.db", "sqlite+aiosqlite:///x.db"),
            ("sqlite:////var/lib/tokenfarm/x.db", "sqlite+aiosqlite:////var/lib/tokenfarm/x.db"),
            ("sqlite://", "sqlite+aiosqlite://"),
            ("postgresql://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
            ("postgres://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
            ("postgresql://u:p@h:6543/db", "postgresql+asyncpg://u:p@h:6543/db"),
            ("postgresql://h/db", "postgresql+asyncpg://h/db"),
            ("postgresql+psycopg2://u:p@h/db", "postgresql+asyncpg://u:p@h/db"),
        ],
    )
    def test_driver_is_chosen_for_the_user(self, url: str, expected: str) -> None:
        assert async_database_url(url) == expected

    @pytest.mark.parametrize(
        "url",
        [
            "postgresql://tokenfarm:s3cr%40t%2Fp%3Aw@db.internal:5432/tokenfarm",
            "postgres://tokenfarm:plain-Password_123@db/tokenfarm",
        ],
    )
    def test_password_is_preserved(self, url: str) -> None:
        converted = make_url(async_database_url(url))
        assert converted.password == make_url(url).password
        assert converted.username == "tokenfarm"
        assert converted.drivername == "postgresql+asyncpg"

    @pytest.mark.parametrize("mode", ["require", "disable", "verify-full"])
    def test_libpq_sslmode_becomes_the_asyncpg_ssl_option(self, mode: str) -> None:
        converted = make_url(async_database_url(f"postgresql://u:p@h/db?sslmode={mode}"))
        assert dict(converted.query) == {"ssl": mode}

    def test_other_query_options_are_kept(self) -> None:
        converted = make_url(async_database_url("postgresql://h/db?application_name=tf"))
        assert dict(converted.query) == {"application_name": "tf"}

    @pytest.mark.parametrize("url", ["mysql://u:p@h/db", "mssql+pyodbc://h/db", "oracle://h/db"])
    def test_unsupported_database_is_refused_naming_the_supported_ones(self, url: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            async_database_url(url)
        assert "sqlite://" in caught.value.message
        assert "postgresql://" in caught.value.message

    @pytest.mark.parametrize("url", ["garbage", "", "://nothing", "localhost:5432"])
    def test_garbage_is_refused_with_an_example(self, url: str) -> None:
        with pytest.raises(ConfigurationError) as caught:
            async_database_url(url)
        assert "TOKENFARM_DATABASE_URL" in caught.value.message

    def test_password_never_appears_in_an_error(self) -> None:
        with pytest.raises(ConfigurationError) as caught:
            async_database_url("mysql://u:hunter2-canary@h/db")
        assert "hunter2-canary" not in caught.value.message


class TestSettings:
    def test_defaults(self) -> None:
        defaults = settings()
        assert defaults.environment == "development"
        assert defaults.data_dir == Path("data")
        assert defaults.encryption_keys is None
        assert defaults.versions_kept == 20

    def test_default_database_is_a_sqlite_file_in_the_data_dir(self, tmp_path: Path) -> None:
        url = settings(data_dir=tmp_path).resolved_database_url
        assert url == f"sqlite:///{tmp_path / 'tokenfarm.db'}"
        parsed = make_url(async_database_url(url))
        assert parsed.drivername == "sqlite+aiosqlite"
        assert Path(parsed.database or "") == tmp_path / "tokenfarm.db"

    def test_relative_data_dir_gives_a_relative_sqlite_file(self) -> None:
        assert settings().resolved_database_url == "sqlite:///data/tokenfarm.db"

    def test_given_database_url_wins(self, tmp_path: Path) -> None:
        given = settings(data_dir=tmp_path, database_url="postgresql://u@h/db")
        assert given.resolved_database_url == "postgresql://u@h/db"

    def test_key_file_lives_in_the_data_dir(self, tmp_path: Path) -> None:
        assert settings(data_dir=tmp_path).key_file == tmp_path / "encryption.keys"

    def test_tokenfarm_prefixed_variables_are_read(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("TOKENFARM_ENVIRONMENT", "staging")
        monkeypatch.setenv("TOKENFARM_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TOKENFARM_DATABASE_URL", "postgres://u:p@db/tokenfarm")
        monkeypatch.setenv("TOKENFARM_ENCRYPTION_KEYS", "k1,k2")
        monkeypatch.setenv("TOKENFARM_VERSIONS_KEPT", "50")
        monkeypatch.setenv("TOKENFARM_HTTP_TIMEOUT_SECONDS", "5")
        read = settings()
        assert read.environment == "staging"
        assert read.data_dir == tmp_path
        assert read.resolved_database_url == "postgres://u:p@db/tokenfarm"
        assert read.encryption_keys == "k1,k2"
        assert read.versions_kept == 50
        assert read.http_timeout_seconds == 5.0

    def test_unprefixed_variables_are_ignored(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("ENVIRONMENT", "production")
        monkeypatch.setenv("DATABASE_URL", "postgresql://u@h/db")
        read = settings()
        assert read.environment == "development"
        assert read.database_url is None

    def test_empty_database_url_means_the_default(
        self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        monkeypatch.setenv("TOKENFARM_DATABASE_URL", "")
        url = settings(data_dir=tmp_path).resolved_database_url
        assert url == f"sqlite:///{tmp_path / 'tokenfarm.db'}"

    def test_unknown_environment_is_refused(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("TOKENFARM_ENVIRONMENT", "prod")
        with pytest.raises(ValidationError, match="environment"):
            settings()

    def test_fewer_than_twenty_versions_kept_is_refused(self) -> None:
        with pytest.raises(ValidationError, match="versions_kept"):
            settings(versions_kept=19)


class TestSettingsRepr:
    def test_keys_never_show_in_repr_or_str(self) -> None:
        settings = Settings(encryption_keys="key-canary-91c2", jwt_secret="jwt-canary-" * 4)
        for text in (repr(settings), str(settings)):
            assert "key-canary-91c2" not in text
            assert "jwt-canary-" not in text


def test_public_url_gives_the_connect_callback() -> None:
    settings = Settings(public_url="https://tokens.example.com/")
    assert settings.public_url == "https://tokens.example.com"
    assert settings.connect_callback_url == "https://tokens.example.com/connect/callback"
    assert settings.public_url_is_https
    assert Settings().connect_callback_url is None


@pytest.mark.parametrize("environment", ["staging", "production"])
def test_http_public_url_is_refused_outside_development(environment: str) -> None:
    with pytest.raises(ValidationError, match="must be https:// in " + environment):
        Settings(public_url="http://tokens.example.com", environment=environment)
    assert Settings(public_url="http://127.0.0.1:8000", environment="test").public_url


@pytest.mark.parametrize("bad", ["ftp://x.example.com", "tokens.example.com", "https://x/?a=1"])
def test_public_url_must_be_a_base_url(bad: str) -> None:
    with pytest.raises(ValidationError, match="TOKENFARM_PUBLIC_URL"):
        Settings(public_url=bad)


def test_return_origins_are_checked_and_normalized() -> None:
    settings = Settings(connect_return_origins="https://App.example.com, http://localhost:3000")
    assert settings.return_origins == {"https://app.example.com", "http://localhost:3000"}
    with pytest.raises(ValidationError, match="TOKENFARM_CONNECT_RETURN_ORIGINS"):
        Settings(connect_return_origins="https://app.example.com/path")
