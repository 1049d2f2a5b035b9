"""The local spool (app/runs/spool.py): durable, encrypted, one file per run, never fatal."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.fernet import Fernet

from app.crypto import Keyring
from app.runs.spool import Spool

RUN_ID = "0f0e2c56-8a4b-4c43-9a44-3c1d2e6f7a80"
CANARY = "rt-spool-canary-5b7e"


def keyring() -> Keyring:
    return Keyring([Fernet.generate_key().decode()])


def payload() -> dict[str, object]:
    return {
        "kind": "answers",
        "answers": [{"content": CANARY}],
        "bases": [{"secret": "REFRESH_TOKEN", "environment": "test", "base_version": 2}],
    }


class TestSpool:
    def test_an_answer_is_kept_encrypted_private_and_read_back(self, tmp_path: Path) -> None:
        keys = keyring()
        spool = Spool(tmp_path / "spool", keys)
        spool.put(RUN_ID, payload())

        files = list((tmp_path / "spool").iterdir())
        assert [f.name for f in files] == [f"{RUN_ID}.answer"]  # no temporary file is left
        assert CANARY not in files[0].read_text()
        assert stat.S_IMODE(files[0].stat().st_mode) == 0o600
        assert stat.S_IMODE((tmp_path / "spool").stat().st_mode) == 0o700
        # Another process (a restart) finds it, and knows which secrets wait for it.
        again = Spool(tmp_path / "spool", keys)
        assert [(e.run_id, e.payload) for e in again.entries()] == [(RUN_ID, payload())]
        assert again.pending({"REFRESH_TOKEN", "OTHER"}) == [RUN_ID]
        assert again.pending({"OTHER"}) == []

        again.remove(RUN_ID)
        assert again.empty and not list((tmp_path / "spool").iterdir())
        again.remove(RUN_ID)  # twice is fine: replaying is idempotent

    def test_a_file_no_key_reads_is_left_for_an_operator_and_logged_by_name(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        Spool(tmp_path / "spool", keyring()).put(RUN_ID, payload())  # another key
        (tmp_path / "spool" / f".{RUN_ID}.tmp").write_text("torn")  # a write that died

        with caplog.at_level(logging.ERROR, "tokenfarm.run"):
            spool = Spool(tmp_path / "spool", keyring())
        assert spool.entries() == [] and spool.empty
        assert (tmp_path / "spool" / f"{RUN_ID}.answer").exists()
        assert f"{RUN_ID}.answer can't be read" in caplog.text
        assert CANARY not in caplog.text

    def test_only_run_ids_name_files(self, tmp_path: Path) -> None:
        with pytest.raises(ValueError):
            Spool(tmp_path / "spool", keyring()).put("../../etc/passwd", payload())
