"""``python -m biovfm_lib.train --config RESOLVED.yaml``: the entry point torchrun starts."""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time

import psutil
import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.launch import LAUNCHER_PID
from biovfm_lib.train.loop import TrainingStopped, train


def stop_with_launcher(poll_s: float = 2.0) -> None:
    """End this rank when the process that launched torchrun (a notebook kernel, a grid run)
    is gone. torchrun runs in its own session so a cell can stop it cleanly, which also means
    a killed kernel would leave it training into a folder that a rerun is about to resume."""
    pid = int(os.environ.get(LAUNCHER_PID, "0"))
    if not pid:
        return

    def watch() -> None:
        while psutil.pid_exists(pid):
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="launcher-watch", daemon=True).start()


@record  # torchrun then reports the failing rank's exception, not just its exit code
def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m biovfm_lib.train")
    parser.add_argument("--config", required=True, help="resolved config.yaml of the run")
    args = parser.parse_args()
    stop_with_launcher()
    try:
        train(TrainConfig.from_yaml(args.config))
    except TrainingStopped as stop:
        print(f"training stopped: {stop}", file=sys.stderr, flush=True)
        return 3
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
