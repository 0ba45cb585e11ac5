"""The session's isolation (tests/conftest.py): no `OMR_*` from the developer's shell, no `.env` from the
checkout - neither in this process nor in the subprocesses tests start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from service.settings import Settings

REPO = Path(__file__).resolve().parents[1]
TOKEN = "from-a-dotenv-file-0123456789"


#: the only OMR_ variables a test sees: the session's own (tests/conftest.py: gRPC off unless a test asks)
SESSION_ENV = {"OMR_GRPC_PORT": "0"}


def test_no_omr_variables_here_or_in_subprocesses() -> None:
    assert {k: v for k, v in os.environ.items() if k.startswith("OMR_")} == SESSION_ENV
    code = "import os; print(sorted(k + '=' + v for k, v in os.environ.items() if k.startswith('OMR_')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == str(sorted(f"{k}={v}" for k, v in SESSION_ENV.items()))


def test_settings_ignore_a_dotenv_in_the_checkout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path.cwd() != REPO and not (Path.cwd() / ".env").exists()
    assert Settings().auth_token is None
    # why it matters: pydantic-settings reads `.env` from the working directory
    (tmp_path / ".env").write_text(f"OMR_AUTH_TOKEN={TOKEN}\n")
    monkeypatch.chdir(tmp_path)
    token = Settings().auth_token
    assert token is not None and token.get_secret_value() == TOKEN
