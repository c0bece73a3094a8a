"""``python -m biovfm_lib.gpu_check.step MODULE:FUNCTION --result F --work D --device X``:
one step of the check, in the subprocess the runner started for it.

The step's exception, if any, is written to the result file as its error line and printed
with its traceback (the runner keeps the last lines); a :class:`Skipped` step exits 0 with its
reason.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from pathlib import Path

from biovfm_lib.gpu_check.context import Skipped, StepContext


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m biovfm_lib.gpu_check.step")
    parser.add_argument("target", help="module:function taking a StepContext")
    parser.add_argument("--result", required=True, type=Path)
    parser.add_argument("--work", required=True, type=Path)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    ctx = StepContext(args.result, args.work, args.device, args.smoke)
    ctx.save()
    module, _, function = args.target.partition(":")
    try:
        getattr(importlib.import_module(module), function)(ctx)
    except Skipped as skip:
        ctx.save(skipped=str(skip))
        print(f"skipped: {skip}", flush=True)
        return 0
    except Exception as err:  # noqa: BLE001 - any failure is the step's result
        traceback.print_exc()
        ctx.save(error=f"{type(err).__name__}: {err}".splitlines()[0][:300])
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
