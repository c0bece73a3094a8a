"""The ``biovfm`` command: notebook runs, grids, reports, data tools and benchmarks."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from biovfm_lib.params import MEDMNIST_2D_TASKS, MEDMNIST_SIZES, ParamError


def cmd_run(args: argparse.Namespace) -> int:
    from biovfm_lib.execution import execute
    from biovfm_lib.params import params_for
    from biovfm_lib.runs import notebook_path

    params = params_for(notebook_path(args.notebook).stem)
    overrides = {k: params.parse_override(k, v) for k, v in args.parameters}
    result = execute(args.notebook, args.file, overrides, progress=not args.quiet)
    print(f"run {result.status}: {result.run_dir}")
    if result.html:
        print(f"report: {result.html}")
    if result.error:
        print(f"traceback: {result.run_dir / 'error.txt'}", file=sys.stderr)
        print(f"error: {result.error}", file=sys.stderr)
        return 1
    return 0


def cmd_grid(args: argparse.Namespace) -> int:
    from biovfm_lib.grid import load_grid

    grid = load_grid(args.file)
    if args.dry_run and not args.slurm:
        from biovfm_lib.grid.plan import describe

        print(describe(grid, force=args.force, only=args.points))
        return 0
    if args.slurm:
        from biovfm_lib.grid.slurm import submit

        submit(grid, force=args.force, only=args.points, dry_run=args.dry_run)
        return 0
    from biovfm_lib.grid.runner import run_grid

    if not args.analysis_only:  # before anything starts: what a point would find missing
        todo = [grid.point(k) for k in args.points] if args.points else grid.points
        if missing := next((m for p in todo if (m := p.missing_input())), None):
            raise FileNotFoundError(missing)
    summary = run_grid(grid, force=args.force, jobs=args.jobs, gpu_sets=args.gpus,
                       only=args.points, points=not args.analysis_only)
    print(summary.text())
    return summary.exit_code


def cmd_report(args: argparse.Namespace) -> int:
    from biovfm_lib.reports import build_index

    print(f"index: {build_index()}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    from biovfm_lib.reports import collect_runs

    problems: list = []
    found = [r for r in collect_runs(problems) if not args.notebook or r.notebook == args.notebook]
    for r in found:
        process = r.record.get("process") or {}
        where = f"{process.get('host', '?')}:{process.get('pid', '?')}" if process else ""
        print(f"{r.notebook:<20} {r.run_id:<24} {r.status:<10} "
              f"{r.record.get('started') or '':<26} {where}")
    for path, reason in problems:
        print(f"unreadable: {path}: {reason}")
    return 0


def cmd_synth(args: argparse.Namespace) -> int:
    from biovfm_lib.data.synthetic import write_synthetic
    from biovfm_lib.runs import resolve

    paths = write_synthetic(resolve(args.root), size=args.size, scale=args.scale,
                            seed=args.seed, tasks=args.tasks, progress=True)
    print(f"synthetic MedMNIST-format files ({len(paths)}) in {resolve(args.root)}")
    return 0


def cmd_medmnist(args: argparse.Namespace) -> int:
    from biovfm_lib.data import medmnist as mm
    from biovfm_lib.runs import resolve

    root = resolve(args.root)
    if args.download:
        paths = mm.download(root, args.size, args.tasks)
        print(f"downloaded and verified {len(paths)} files in {root}")
        return 0
    bad = 0
    for flag in args.tasks:
        state = mm.file_state(root, flag, args.size, verify_md5=args.verify)
        bad += not state.good
        print(f"{state.state:<12}  {state.detail}")
    return 1 if bad else 0


def cmd_curate(args: argparse.Namespace) -> int:
    from biovfm_lib.curation.pipeline import curate_params
    from biovfm_lib.params import CurationParams

    values = {k: CurationParams.parse_override(k, v) for k, v in args.parameters}
    values.update(sources=args.sources, out=args.out)
    result = curate_params(CurationParams.validate_mapping(values), progress=not args.quiet)
    print(result.summary.to_string(index=False))
    rate = result.images_per_second_per_core
    print(f"corpus: {len(result.manifest)} images in {result.out_dir} "
          f"({len(result.rejects)} rejects, {len(result.duplicates)} duplicates removed; "
          f"parts done {result.parts_done}, already done {result.parts_skipped}"
          + (f"; {rate:.0f} images/s per core" if rate else "") + ")")
    print(result.changes_line())
    if result.skipped_sources:
        print(f"sources without a root (not downloaded here): {len(result.skipped_sources)}")
    return 0


def cmd_bench_augment(args: argparse.Namespace) -> int:
    from biovfm_lib.train.bench import bench_augment

    bench_augment(global_size=args.img_size, local_size=args.local_size, n_local=args.n_local,
                  batch_size=args.batch_size, device=args.device)
    return 0


def cmd_bench_curate(args: argparse.Namespace) -> int:
    from biovfm_lib.curation.bench import bench_curate

    bench_curate(images=args.images, size=args.size, short_side=args.short_side)
    return 0


def cmd_bench_probe(args: argparse.Namespace) -> int:
    from biovfm_lib.probe.bench import bench_probe

    bench_probe(encoder=args.encoder, size=args.size, patch_size=args.patch_size,
                n_images=args.images, batch_size=args.batch_size, device=args.device)
    return 0


def cmd_bench_pretrain(args: argparse.Namespace) -> int:
    from biovfm_lib.train.bench import bench_pretrain

    # all: both DINOv2 recipes, the study's (2x224 + 8x96 at patch 16) and the variant
    every = ["study", "dinov2_p14"] if args.algo == "dinov2" else ["study"]
    for recipe in every if args.recipe == "all" else [args.recipe]:
        bench_pretrain(algorithm=args.algo, size=args.size, batch_size=args.batch_size,
                       steps=args.steps, img_size=args.img_size, local_size=args.local_size,
                       n_local=args.n_local,
                       activation_checkpointing=args.activation_checkpointing,
                       compile_blocks=args.compile, device=args.device, recipe=recipe)
    return 0


def cmd_bench_gpu(args: argparse.Namespace) -> int:
    from biovfm_lib.gpu_check.check import gpu_check

    return gpu_check(out=args.out, budget_s=args.budget_s, only=args.only, device=args.device,
                     smoke=args.smoke)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="biovfm", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="execute a notebook with papermill into outputs/runs/")
    run.add_argument("notebook", help="notebook name (03_probe) or path")
    run.add_argument("-f", "--file", help="papermill parameter file (YAML)")
    run.add_argument("-p", "--parameters", nargs=2, action="append", default=[],
                     metavar=("KEY", "VALUE"), help="override one parameter (YAML value)")
    run.add_argument("-q", "--quiet", action="store_true", help="no cell progress bar")
    run.set_defaults(func=cmd_run)

    grid = sub.add_parser("grid", help="run a scaling grid (params/grids/*.yaml): every "
                          "point's notebooks, then the analysis; finished points are skipped")
    grid.add_argument("file", help="grid file, e.g. params/grids/smoke.yaml")
    grid.add_argument("--dry-run", action="store_true", help="list the points and what would run")
    grid.add_argument("--force", action="store_true", help="rerun finished points and analysis")
    grid.add_argument("--jobs", type=int, default=1, help="points side by side (CPU)")
    grid.add_argument("--gpus", nargs="+", default=[], metavar="SET",
                      help="GPU sets, e.g. 0,1 2,3: one point at a time on each")
    grid.add_argument("--slurm", action="store_true", help="submit each point as a Slurm job")
    grid.add_argument("--points", nargs="+", default=[], metavar="ID",
                      help="only these points (id or slug); the analysis is not run")
    grid.add_argument("--analysis-only", action="store_true",
                      help="run only the analysis over the points completed so far")
    grid.set_defaults(func=cmd_grid)

    report = sub.add_parser("report", help="build outputs/index.html over all runs and grids")
    report.set_defaults(func=cmd_report)
    listing = sub.add_parser("runs", help="list run folders with their status (a dead run's "
                                          "'running' shows as killed)")
    listing.add_argument("--notebook", default="", help="only this notebook's runs (03_probe)")
    listing.set_defaults(func=cmd_runs)

    data = sub.add_parser("data", help="MedMNIST data tools").add_subparsers(
        dest="data_command", required=True)
    synth = data.add_parser("synth", help="write synthetic MedMNIST-format files")
    synth.add_argument("--root", required=True)
    synth.add_argument("--size", type=int, default=28, choices=MEDMNIST_SIZES)
    synth.add_argument("--scale", type=float, default=0.02)
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--tasks", nargs="+", default=list(MEDMNIST_2D_TASKS),
                       choices=MEDMNIST_2D_TASKS)
    synth.set_defaults(func=cmd_synth)

    mm = data.add_parser("medmnist", help="check (or download) the real MedMNIST files")
    mm.add_argument("--root", default="outputs/data/medmnist")
    mm.add_argument("--size", type=int, default=224, choices=MEDMNIST_SIZES)
    mm.add_argument("--tasks", nargs="+", default=list(MEDMNIST_2D_TASKS),
                    choices=MEDMNIST_2D_TASKS)
    mm.add_argument("--download", action="store_true",
                    help="fetch with the medmnist package's downloader (needs network)")
    mm.add_argument("--verify", action="store_true",
                    help="also check MD5 against medmnist.INFO (reads each file whole; keys, "
                         "dtypes, shapes, labels and counts are always checked)")
    mm.set_defaults(func=cmd_medmnist)

    cur = sub.add_parser("curate", help="curate raw image sources into a sharded corpus")
    cur.add_argument("sources", help="the sources registry (YAML), e.g. "
                                     "params/curation/demo_sources.yaml")
    cur.add_argument("--out", required=True, help="the corpus folder (a rerun resumes it)")
    cur.add_argument("-p", "--parameters", nargs=2, action="append", default=[],
                     metavar=("KEY", "VALUE"),
                     help="a 01_curation parameter, e.g. -p short_side 224 -p workers 8")
    cur.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    cur.set_defaults(func=cmd_curate)

    bench = sub.add_parser("bench", help="benchmarks (print and write outputs/bench/)")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True)
    bp = bench_sub.add_parser("probe", help="feature-extraction throughput of one encoder")
    bp.add_argument("--encoder", default="base")
    bp.add_argument("--size", type=int, default=224)
    bp.add_argument("--patch-size", type=int, default=0)
    bp.add_argument("--images", type=int, default=2048)
    bp.add_argument("--batch-size", type=int, default=256)
    bp.add_argument("--device", default="auto")
    bp.set_defaults(func=cmd_bench_probe)
    ba = bench_sub.add_parser("augment", help="DINOv2 augmentation images/s: CPU loader "
                                              "vs batched photometrics on the device")
    ba.add_argument("--img-size", type=int, default=224)
    ba.add_argument("--local-size", type=int, default=98)
    ba.add_argument("--n-local", type=int, default=8)
    ba.add_argument("--batch-size", type=int, default=64)
    ba.add_argument("--device", default="auto")
    ba.set_defaults(func=cmd_bench_augment)
    bc = bench_sub.add_parser("curate", help="curation images/s per core (DICOM, PNG) and "
                                             "shard read throughput")
    bc.add_argument("--images", type=int, default=400, help="images per input format")
    bc.add_argument("--size", type=int, default=512, help="side of the generated raw images")
    bc.add_argument("--short-side", type=int, default=256, help="the corpus image size")
    bc.set_defaults(func=cmd_bench_curate)
    bt = bench_sub.add_parser("pretrain", help="SSL training throughput and MFU of one device")
    bt.add_argument("--algo", choices=["dinov2", "mae"], default="mae")
    bt.add_argument("--size", default="large", help="nano, tiny, small, base, large, huge")
    bt.add_argument("--batch-size", type=int, default=64)
    bt.add_argument("--steps", type=int, default=20)
    bt.add_argument("--img-size", type=int, default=224)
    bt.add_argument("--local-size", type=int, default=0, help="0: the recipe's")
    bt.add_argument("--n-local", type=int, default=8)
    bt.add_argument("--recipe", choices=["all", "study", "dinov2_p14"], default="all",
                    help="DINOv2: both recipes (all) or one; MAE has only study")
    bt.add_argument("--activation-checkpointing", action="store_true")
    bt.add_argument("--compile", action="store_true", help="torch.compile each block")
    bt.add_argument("--device", default="auto")
    bt.set_defaults(func=cmd_bench_pretrain)
    bg = bench_sub.add_parser("gpu", help="the prepared GPU check: every GPU path, each step "
                                          "in its own subprocess, into gpu-check.json / .md")
    bg.add_argument("--out", default="", help="default: outputs/bench/gpu-<UTC time>")
    bg.add_argument("--budget-s", type=float, default=420.0,
                    help="the whole check's wall-clock limit; steps it cannot fit are not run")
    bg.add_argument("--only", nargs="+", default=[], metavar="STEP",
                    help="only these steps: env probe pretrain-throughput huge-fits "
                         "strategies numerics augment resume")
    bg.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    bg.add_argument("--smoke", action="store_true",
                    help="nano sizes (CPU: steps that need CUDA say so and the rest run)")
    bg.set_defaults(func=cmd_bench_gpu)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ParamError, FileNotFoundError, ValueError) as err:
        print(f"biovfm: error: {err}", file=sys.stderr)
        return 2
    except RuntimeError as err:
        from biovfm_lib.runs import FolderBusy  # imported by whatever raised it: no start-up cost

        if not isinstance(err, FolderBusy):
            raise
        print(f"biovfm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # what was finished stays written; a rerun resumes the rest
        print("biovfm: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
