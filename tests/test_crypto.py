"""The keyring: MultiFernet encryption of values, and where its keys come from."""

from __future__ import annotations

import logging
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet

from app.config import Settings
from app.crypto import Keyring, load_keyring
from app.errors import ConfigurationError

VALUE = "ghp_canary-5b0e7a91"


def new_key() -> str:
    """A fresh Fernet key."""
    return Fernet.generate_key().decode()


@pytest.fixture(autouse=True)
def no_tokenfarm_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Settings come only from the test, never from the caller's environment."""
    for name in ("ENVIRONMENT", "DATA_DIR", "DATABASE_URL", "ENCRYPTION_KEYS"):
        monkeypatch.delenv(f"TOKENFARM_{name}", raising=False)
    yield


def settings_for(environment: str, data_dir: Path, keys: str | None = None) -> Settings:
    """Settings of one environment, ignoring any `.env` file."""
    return Settings(
        environment=environment,  # type: ignore[arg-type]
        data_dir=data_dir,
        encryption_keys=keys,
        _env_file=None,  # type: ignore[call-arg]
    )


class TestKeyring:
    @pytest.mark.parametrize(
        "value",
        [VALUE, {"private_key": VALUE, "kid": 3}, [VALUE, 1, None], 42, 0.5, True, ""],
    )
    def test_values_round_trip(self, value: Any) -> None:
        keyring = Keyring([new_key()])
        assert keyring.decrypt(keyring.encrypt(value)) == value

    def test_ciphertext_does_not_show_the_value(self) -> None:
        ciphertext = Keyring([new_key()]).encrypt({"token": VALUE})
        assert VALUE not in ciphertext
        assert "token" not in ciphertext

    def test_same_value_encrypts_differently_each_time(self) -> None:
        keyring = Keyring([new_key()])
        assert keyring.encrypt(VALUE) != keyring.encrypt(VALUE)

    def test_value_written_with_an_old_key_reads_after_a_new_key_goes_first(self) -> None:
        old, new = new_key(), new_key()
        written = Keyring([old]).encrypt(VALUE)
        rotated = Keyring([new, old])
        assert rotated.decrypt(written) == VALUE
        # The first key encrypts: the new key alone reads what the rotated keyring writes.
        assert Keyring([new]).decrypt(rotated.encrypt(VALUE)) == VALUE
        with pytest.raises(ConfigurationError):
            Keyring([old]).decrypt(rotated.encrypt(VALUE))

    def test_rotate_re_encrypts_with_the_first_key(self) -> None:
        old, new = new_key(), new_key()
        written = Keyring([old]).encrypt(VALUE)
        re_encrypted = Keyring([new, old]).rotate(written)
        assert Keyring([new]).decrypt(re_encrypted) == VALUE

    def test_keys_are_trimmed(self) -> None:
        key = new_key()
        written = Keyring([key]).encrypt(VALUE)
        assert Keyring([f"  {key}\n"]).decrypt(written) == VALUE

    @pytest.mark.parametrize("bad", ["not-a-key", "", "c2hvcnQ=", "truncated"])
    def test_invalid_key_says_how_to_make_one(self, bad: str) -> None:
        if bad == "truncated":  # made here: a parameter must be the same in every xdist worker
            bad = new_key()[:-4]
        with pytest.raises(ConfigurationError) as caught:
            Keyring([new_key(), bad])
        message = caught.value.message
        assert "encryption key #2 is not a valid Fernet key" in message
        assert "Fernet.generate_key()" in message
        assert "TOKENFARM_ENCRYPTION_KEYS" in message
        if bad:
            assert bad not in message
        assert caught.value.__cause__ is None and caught.value.__suppress_context__

    def test_no_keys_says_how_to_make_one(self) -> None:
        with pytest.raises(ConfigurationError, match="TOKENFARM_ENCRYPTION_KEYS"):
            Keyring([])

    def test_wrong_key_fails_without_showing_anything(self) -> None:
        key, wrong = new_key(), new_key()
        ciphertext = Keyring([key]).encrypt(VALUE)
        with pytest.raises(ConfigurationError) as caught:
            Keyring([wrong]).decrypt(ciphertext)
        shown = f"{caught.value} {caught.value!r} {caught.value.to_body()}"
        assert "TOKENFARM_ENCRYPTION_KEYS must still list the key" in shown
        for private in (VALUE, ciphertext, key, wrong):
            assert private not in shown
        assert caught.value.__cause__ is None and caught.value.__suppress_context__

    def test_damaged_ciphertext_is_a_configuration_error(self) -> None:
        keyring = Keyring([new_key()])
        with pytest.raises(ConfigurationError):
            keyring.decrypt("gAAAAAnot-a-token")

    def test_repr_hides_the_keys(self) -> None:
        key = new_key()
        assert key not in repr(Keyring([key]))
        assert repr(Keyring([key])) == "Keyring(<redacted>)"


class TestLoadKeyring:
    def test_configured_keys_are_used_in_order(self, tmp_path: Path) -> None:
        first, second = new_key(), new_key()
        written_by_second = Keyring([second]).encrypt(VALUE)
        keyring = load_keyring(settings_for("production", tmp_path, f" {first} , {second} ,"))
        assert keyring.decrypt(written_by_second) == VALUE
        assert Keyring([first]).decrypt(keyring.encrypt(VALUE)) == VALUE
        assert not (tmp_path / "encryption.keys").exists()

    def test_development_generates_a_private_key_file_and_warns(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        data_dir = tmp_path / "not" / "yet" / "there"
        with caplog.at_level(logging.WARNING, logger="app.crypto"):
            keyring = load_keyring(settings_for("development", data_dir))
        key_file = data_dir / "encryption.keys"
        assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
        Fernet(key_file.read_text().strip().encode())  # a valid key
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1
        assert "generated a development key" in warnings[0].getMessage()
        assert str(key_file) in warnings[0].getMessage()
        assert key_file.read_text().strip() not in caplog.text
        assert keyring.decrypt(keyring.encrypt(VALUE)) == VALUE

    def test_development_reuses_its_key_file(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings = settings_for("development", tmp_path)
        written = load_keyring(settings).encrypt(VALUE)
        key = (tmp_path / "encryption.keys").read_text()
        with caplog.at_level(logging.WARNING, logger="app.crypto"):
            again = load_keyring(settings)
        assert again.decrypt(written) == VALUE
        assert (tmp_path / "encryption.keys").read_text() == key
        assert "using the development key file" in caplog.text
        assert key.strip() not in caplog.text

    @pytest.mark.parametrize("environment", ["production", "staging", "test"])
    def test_other_environments_refuse_to_start_without_keys(
        self, tmp_path: Path, environment: str
    ) -> None:
        with pytest.raises(ConfigurationError) as caught:
            load_keyring(settings_for(environment, tmp_path))
        message = caught.value.message
        assert "TOKENFARM_ENCRYPTION_KEYS is required" in message
        assert repr(environment) in message
        assert "Fernet.generate_key()" in message
        assert not (tmp_path / "encryption.keys").exists()

    @pytest.mark.parametrize("environment", ["production", "development"])
    def test_invalid_configured_key_refuses_to_start(
        self, tmp_path: Path, environment: str
    ) -> None:
        with pytest.raises(ConfigurationError, match="not a valid Fernet key"):
            load_keyring(settings_for(environment, tmp_path, "changeme"))

    def test_keys_from_the_environment_variable(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        key = new_key()
        monkeypatch.setenv("TOKENFARM_ENVIRONMENT", "production")
        monkeypatch.setenv("TOKENFARM_ENCRYPTION_KEYS", key)
        monkeypatch.setenv("TOKENFARM_DATA_DIR", str(tmp_path))
        keyring = load_keyring(Settings(_env_file=None))  # type: ignore[call-arg]
        assert Keyring([key]).decrypt(keyring.encrypt(VALUE)) == VALUE
