"""Shared fixtures: every test writes under its own temporary outputs folder."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Point BIOVFM_OUTPUTS at a fresh folder so tests never touch the real outputs/."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("BIOVFM_OUTPUTS", str(out))
    return out
