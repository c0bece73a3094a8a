"""`make lab` in a real browser: JupyterLab serves the notebooks, Chromium renders them, a cell runs.

The server runs from this environment with throwaway Jupyter dirs (the user's are never touched)
on a free local port; Debian's Chromium (installed by `make test` when absent) is driven headless
through Playwright. The test skips only where that Chromium or Playwright is not there.
"""
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import BinaryIO

import nbformat
import psutil
import pytest

from biovfm_lib.execution import ensure_kernel
from biovfm_lib.runs import KERNEL_NAME

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK = ROOT / "notebooks" / "02_pretrain.ipynb"
CHROMIUM = Path("/usr/bin/chromium")
# Without the background-networking flags a closed network refuses Chromium's own connections.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TIMEOUT_S = 60


def free_port() -> int:
    """A port nothing listens on now (the server is told not to fall back to another one)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_lab(root_dir: Path, port: int, token: str, home: Path,
              log: BinaryIO) -> subprocess.Popen:
    """`jupyter lab` as `make lab` runs it, headless, with its state kept under `home`."""
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_DATA_DIR": str(home / "data"),
           "IPYTHONDIR": str(home / "ipython")}
    cmd = [str(Path(sys.executable).with_name("jupyter")), "lab", "--no-browser",
           f"--port={port}", "--ip=127.0.0.1", "--ServerApp.port_retries=0",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root_dir}",
           "--ServerApp.open_browser=False",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if os.geteuid() == 0:  # CI containers run as root, which the server refuses by default
        cmd.append("--allow-root")
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=log)


def wait_until_serving(proc: subprocess.Popen, url: str, log: Path) -> None:
    """Poll the server's status API until it answers, failing early if the server died."""
    deadline = time.monotonic() + TIMEOUT_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"jupyter lab exited:\n{log.read_text()[-3000:]}"
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.25)
    pytest.fail(f"jupyter lab did not answer in {TIMEOUT_S} s:\n{log.read_text()[-3000:]}")


def stop_tree(proc: subprocess.Popen) -> None:
    """Stop the server and everything it started (kernels run in their own sessions)."""
    if proc.poll() is not None:
        return
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    _, alive = psutil.wait_procs(children, timeout=5)
    for child in alive:
        child.kill()


@pytest.fixture
def lab(tmp_path):
    """A running JupyterLab on a copy of a project notebook plus a one-cell notebook.

    Copies keep the browser's autosaves and checkpoints out of notebooks/.
    Yields the base URL and token.
    """
    ensure_kernel()  # `make` registers it; a bare test environment may not have
    root_dir = tmp_path / "notebooks"
    root_dir.mkdir()
    shutil.copy(NOTEBOOK, root_dir)
    smoke = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(6*7)")])
    smoke.metadata.kernelspec = {"name": KERNEL_NAME, "display_name": "BioVFM (.venv)",
                                 "language": "python"}
    nbformat.write(smoke, root_dir / "smoke.ipynb")

    port, token, log_path = free_port(), secrets.token_hex(16), tmp_path / "lab.log"
    with open(log_path, "wb") as log:
        proc = start_lab(root_dir, port, token, tmp_path, log)
        try:
            base = f"http://127.0.0.1:{port}"
            wait_until_serving(proc, f"{base}/api/status?token={token}", log_path)
            yield base, token
        finally:
            stop_tree(proc)


@pytest.fixture
def page():
    """A headless Debian Chromium page, closed afterwards."""
    if not CHROMIUM.is_file():
        pytest.skip(f"{CHROMIUM} is absent: `make test` installs Debian's chromium with apt-get "
                    "as root; install it (apt-get install chromium) to run this test")
    sync_api = pytest.importorskip("playwright.sync_api",
                                   reason="playwright is missing: pip install -e '.[dev]'")
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.set_default_timeout(TIMEOUT_S * 1000)
            yield page
        finally:
            browser.close()


@pytest.mark.slow
def test_lab_renders_a_notebook_and_runs_a_cell(page, lab):  # page first: skip before lab starts
    base, token = lab
    heading = nbformat.read(NOTEBOOK, as_version=4).cells[0].source.splitlines()[0].lstrip("# ")

    page.goto(f"{base}/lab/tree/{NOTEBOOK.name}?token={token}")
    page.locator(".jp-NotebookPanel .jp-MarkdownOutput h1", has_text=heading).wait_for()

    # `reset` starts from an empty workspace instead of restoring the notebook opened above.
    page.goto(f"{base}/lab/tree/smoke.ipynb?reset&token={token}")
    page.locator(".jp-NotebookPanel-toolbar", has_text="BioVFM (.venv)").wait_for()
    cell = page.locator(".jp-NotebookPanel .jp-CodeCell", has_text="print(6*7)")
    cell.locator(".cm-content").click()
    page.keyboard.press("Shift+Enter")
    cell.locator(".jp-OutputArea-output", has_text="42").wait_for()
