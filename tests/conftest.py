"""Shared fixtures: every test writes under its own temporary outputs folder."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def isolated_outputs(tmp_path, monkeypatch):
    """Point BIOVFM_OUTPUTS at a fresh folder so tests never touch the real outputs/."""
    out = tmp_path / "outputs"
    monkeypatch.setenv("BIOVFM_OUTPUTS", str(out))
    return out


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: intra-op threads cost more than they save.
    Modules of small tensors opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
