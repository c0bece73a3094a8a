"""``python -m biovfm_lib.train --config RESOLVED.yaml``: the entry point torchrun starts."""
from __future__ import annotations

import argparse
import sys

import torch.distributed as dist
from torch.distributed.elastic.multiprocessing.errors import record

from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.loop import TrainingStopped, train


@record  # torchrun then reports the failing rank's exception, not just its exit code
def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m biovfm_lib.train")
    parser.add_argument("--config", required=True, help="resolved config.yaml of the run")
    args = parser.parse_args()
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
