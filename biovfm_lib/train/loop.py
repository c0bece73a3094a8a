"""The pretraining loop: one readable loop for every objective, size and strategy.

Each step sets the scheduled learning rate and weight decay, runs the method under autocast,
clips, steps AdamW and lets the method update its teacher. Every ``log_every`` steps rank 0
appends a JSON line (loss terms, lr, grad norm, images/s, MFU); every ``monitor_every`` steps
the online kNN monitor (``monitor.py``) adds one with the backbone's kNN accuracy and AUC;
every ``checkpoint_every`` steps the full state is saved. A restart with the same config
resumes from the last checkpoint and replays the same data, augmentations and masks, so it
ends where an uninterrupted run would. A non-finite loss or a collapsed representation stops
the run with a clear message instead of burning compute.
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from biovfm_lib.curation.subsets import select_subset
from biovfm_lib.data.device_augment import DINOv2Photometric
from biovfm_lib.data.pretrain import PretrainImages, index_images
from biovfm_lib.data.sampler import ResumableDistributedSampler
from biovfm_lib.data.ssl_transforms import DINOv2Augmentation, MAEAugmentation
from biovfm_lib.models.checkpoints import export_backbone
from biovfm_lib.models.sizes import study_params_m
from biovfm_lib.ssl import MAE, DINOv2, DINOv2Config, MAEConfig
from biovfm_lib.train.checkpoint import FULL, load_checkpoint, save_checkpoint
from biovfm_lib.train.config import TrainConfig
from biovfm_lib.train.distributed import (
    DistEnv,
    all_gather_objects,
    all_reduce_mean,
    autocast,
    barrier,
    init_distributed,
    prepare_model,
    unwrap,
)
from biovfm_lib.train.meter import ThroughputMeter
from biovfm_lib.train.monitor import OnlineMonitor

COLLAPSE_MIN_STD = 1e-3  # a "*_std" monitor below this, at COLLAPSE_PATIENCE logs in a row
COLLAPSE_PATIENCE = 3
MONITOR_BUDGET = 0.05  # the online monitor's target share of the training compute


class TrainingStopped(RuntimeError):
    """The run was stopped on purpose (non-finite loss, collapse); the message says why."""


def method_config(cfg: TrainConfig, global_batch: int, steps_per_pass: int = 0
                  ) -> DINOv2Config | MAEConfig:
    """The objective's recipe for this run: ``cfg.recipe`` at ``cfg.size``, then the run's
    crops (a ``local_size`` of 0 keeps the recipe's), global batch and ``method`` overrides.
    MAE's epochs are passes over the data: ``steps_per_pass`` (when known) is its
    ``epoch_length``, so its warm-up is 40 real epochs whatever ``max_steps`` cuts."""
    if cfg.algorithm == "dinov2":
        local = {"local_crop_size": cfg.local_size} if cfg.local_size else {}
        return DINOv2Config.for_size(
            cfg.size, cfg.recipe, **{"global_crop_size": cfg.img_size, **local,
                                     "n_local_crops": cfg.n_local, "batch_size": global_batch,
                                     **cfg.method})
    if cfg.algorithm == "mae":
        epoch = {"epoch_length": steps_per_pass} if steps_per_pass else {}
        return MAEConfig.for_size(cfg.size, **{"img_size": cfg.img_size,
                                               "batch_size": global_batch, **epoch,
                                               **cfg.method})
    raise ValueError(f"unknown algorithm {cfg.algorithm!r}; choose dinov2 or mae")


def build_method(cfg: TrainConfig, global_batch: int, total_steps: int,
                 photometric: bool = True, steps_per_pass: int = 0) -> tuple[nn.Module, Any]:
    """The objective and the per-sample augmentation it expects (for DINOv2 without
    ``photometric``: the uint8 crops that :func:`device_augmentation` finishes)."""
    mcfg = method_config(cfg, global_batch, steps_per_pass)
    if isinstance(mcfg, DINOv2Config):
        return DINOv2(mcfg, total_steps), DINOv2Augmentation(
            mcfg.global_crop_size, mcfg.local_crop_size, mcfg.n_local_crops,
            blur_p=mcfg.blur_p, photometric=photometric)
    return MAE(mcfg, total_steps), MAEAugmentation(mcfg.img_size)


def iterations_per_epoch(mcfg: DINOv2Config | MAEConfig, steps_per_pass: int) -> int:
    """What one of the run's ``epochs`` is, in iterations: DINOv2's ``epoch_length`` where its
    recipe counts official epochs (the study's), else one pass over the data."""
    if isinstance(mcfg, DINOv2Config) and mcfg.epoch_length:
        return mcfg.epoch_length
    return steps_per_pass


def schedule_notes(method: nn.Module) -> list[str]:
    """A line for each warm-up phase the run ends before (its lengths are absolute in the
    study recipe, so a run cut by ``max_steps`` can be shorter than one)."""
    return [f"schedule: the run's {method.total_steps} steps end inside the {name} "
            f"({length} steps), which it never completes"
            for name, length in method.phases().items() if length > method.total_steps]


def device_augmentation(cfg: TrainConfig, env: DistEnv) -> DINOv2Photometric | None:
    """DINOv2's photometric augmentation for the training device, or None where the loader
    does it. ``auto`` picks the device on a GPU, where the CPU loader would starve the model,
    and the loader on a CPU, where both share the same cores. MAE's augmentation (a crop and a
    flip) is cheap and always stays in the loader."""
    on_device = cfg.augment_on == "device" or (cfg.augment_on == "auto"
                                               and env.device.type == "cuda")
    if cfg.algorithm != "dinov2" or not on_device:
        return None
    blur_p = method_config(cfg, cfg.batch_size).blur_p  # the recipe's, as the loader's
    return DINOv2Photometric(seed=cfg.seed, rank=env.rank, blur_p=blur_p)


def training_images(cfg: TrainConfig):
    index = index_images(cfg.sources)
    return select_subset(index, seed=cfg.seed, **cfg.subset)


def use_bf16(cfg: TrainConfig, device: torch.device) -> bool:
    if cfg.precision == "bf16":
        return True
    return cfg.precision == "auto" and device.type == "cuda"


class JsonLog:
    """Rank 0's JSON-lines log; on resume, lines past the restored step are dropped."""

    def __init__(self, path: Path, resume_step: int):
        self.path = path
        if path.exists():
            kept = [line for line in path.read_text().splitlines()
                    if line and json.loads(line).get("step", 0) <= resume_step]
            path.write_text("".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")


def train_step(model: nn.Module, method: nn.Module, opt: torch.optim.Optimizer, batch: dict,
               step: int, bf16: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """One optimisation step: scheduled lr / wd, forward, backward, clip, AdamW, teacher.

    A group with ``frozen_steps`` (DINOv2's last layer) gets lr 0 before that step."""
    lr, wd = method.lr(step), method.weight_decay(step)
    for group in opt.param_groups:
        frozen = step < group.get("frozen_steps", 0)
        group["lr"] = 0.0 if frozen else lr * group["lr_scale"]
        group["weight_decay"] = wd * group["wd_scale"]
    with autocast(next(method.parameters()).device, bf16):
        result = model(batch, step)
    opt.zero_grad(set_to_none=True)
    result["loss"].backward()
    grad_norm = nn.utils.clip_grad_norm_([p for p in method.parameters() if p.requires_grad],
                                         method.clip_grad or math.inf)
    method.before_optimizer_step(step)
    opt.step()
    method.after_optimizer_step(step)
    return result, grad_norm


def train(cfg: TrainConfig) -> Path | None:
    """Run (or resume) one pretraining run; return the exported backbone on rank 0."""
    env = init_distributed()
    out = cfg.dir
    export_stem = out / "export" / "backbone"
    if export_stem.with_suffix(".json").exists():
        if env.is_main:
            print(f"already finished: {export_stem.with_suffix('.safetensors')}", flush=True)
        return export_stem.with_suffix(".safetensors")

    images = training_images(cfg)
    global_batch = cfg.batch_size * env.world_size
    steps_per_epoch = len(images) // global_batch
    if steps_per_epoch == 0:
        raise ValueError(f"the subset has {len(images)} images, fewer than one global batch "
                         f"({cfg.batch_size} x {env.world_size} processes)")
    total = cfg.epochs * iterations_per_epoch(method_config(cfg, global_batch), steps_per_epoch)
    total = min(total, cfg.max_steps) if cfg.max_steps else total

    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    photometric = device_augmentation(cfg, env)
    method, transform = build_method(cfg, global_batch, total, photometric=photometric is None,
                                     steps_per_pass=steps_per_epoch)
    if env.is_main:
        for note in schedule_notes(method):
            print(note, flush=True)
    if env.is_main and cfg.algorithm == "dinov2":
        print(f"colour, blur and solarisation: "
              f"{'on ' + env.device.type if photometric else 'in the loader'}", flush=True)
    bf16 = use_bf16(cfg, env.device)
    model = prepare_model(method, cfg.strategy, env, cfg.activation_checkpointing, cfg.compile,
                          bf16)
    opt = torch.optim.AdamW(method.param_groups(), lr=0.0, betas=method.betas,
                            fused=env.device.type == "cuda")
    sampler = ResumableDistributedSampler(len(images), env.world_size, env.rank, cfg.seed)
    dataset = PretrainImages(images, transform, seed=cfg.seed)

    ckpt_path = out / "checkpoints" / "last.pt"
    step = 0
    if ckpt_path.exists():
        state = load_checkpoint(ckpt_path, model, opt, env)
        step = state["step"]
        sampler.load_state_dict(state["sampler"])
        if env.is_main:
            print(f"resuming from step {step} ({ckpt_path})", flush=True)
    log = JsonLog(out / "log.jsonl", step) if env.is_main else None
    monitor = start_monitor(cfg, method, env, bf16)
    if monitor and step == 0:  # the initial weights: the baseline the curve should leave
        _write_monitor(monitor, log, step)

    loader = DataLoader(dataset, batch_size=cfg.batch_size, sampler=sampler,
                        collate_fn=method.collate, num_workers=cfg.num_workers,
                        pin_memory=env.device.type == "cuda", drop_last=True,
                        persistent_workers=cfg.num_workers > 0,
                        # its own generator: making an iterator must not draw from the global
                        # RNG, whose state a resumed run restores from the checkpoint
                        generator=torch.Generator().manual_seed(cfg.seed))
    meter = ThroughputMeter(method.flops_per_sample(), env.world_size, env.device)
    bar = tqdm(total=total, initial=step, disable=not env.is_main, desc=cfg.algorithm,
               mininterval=5.0, dynamic_ncols=False, ncols=100)
    low_std = 0
    while step < total:
        sampler.set_epoch(step // steps_per_epoch)
        for batch in loader:
            lr, wd = method.lr(step), method.weight_decay(step)
            batch = {k: v.to(env.device, non_blocking=True) for k, v in batch.items()}
            if photometric is not None:
                batch = photometric.on_batch(batch, step)
            result, grad_norm = train_step(model, method, opt, batch, step, bf16)
            step += 1
            sampler.advance(cfg.batch_size)
            meter.update(cfg.batch_size)
            bar.update(1)

            loss = all_reduce_mean(result["loss"].detach().float().clone())
            if not torch.isfinite(loss):
                raise TrainingStopped(f"non-finite loss {loss.item()} at step {step}: lower the "
                                      "learning rate or check the data; last checkpoint kept")
            if step % cfg.log_every == 0 or step == total:
                stats = method.collapse_stats(result)
                low_std = low_std + 1 if any(v < COLLAPSE_MIN_STD for k, v in stats.items()
                                             if k.endswith("_std")) else 0
                divergence = replica_divergence(method, cfg.strategy)
                if log:
                    log.write({**_record(step, steps_per_epoch, result, loss, lr, wd, grad_norm,
                                         meter), "replica_divergence": divergence})
                    bar.set_postfix(loss=f"{loss.item():.4f}")
                if low_std >= COLLAPSE_PATIENCE:
                    raise TrainingStopped(f"representation collapse at step {step}: {stats} "
                                          f"(a *_std below {COLLAPSE_MIN_STD} for "
                                          f"{COLLAPSE_PATIENCE} logs); last checkpoint kept")
            if monitor and (step % cfg.monitor_every == 0 or step == total):
                _write_monitor(monitor, log, step)
                meter.reset()  # images/s counts training time only
            if step % cfg.checkpoint_every == 0 or step == total:
                save_checkpoint(ckpt_path, model, opt, env, step=step,
                                sampler=sampler.state_dict(), config=cfg.params)
            if step >= total:
                break
    bar.close()
    return _export(cfg, model, env, export_stem, step, global_batch, len(images))


def start_monitor(cfg: TrainConfig, method: nn.Module, env: DistEnv, bf16: bool
                  ) -> OnlineMonitor | None:
    """The online kNN monitor when ``monitor_every`` asks for one; rank 0 says what it
    costs: its matmul FLOPs against the training's between two evaluations."""
    if not cfg.monitor_every:
        return None
    monitor = OnlineMonitor(method, cfg.monitor, env, bf16, cfg.img_size, cfg.seed)
    if env.is_main:
        share = monitor.flops_share(cfg.batch_size * method.flops_per_sample(),
                                    cfg.monitor_every)
        advice = (f" (above {MONITOR_BUDGET:.0%}: raise monitor_every or lower monitor_samples)"
                  if share > MONITOR_BUDGET else "")
        print(f"online kNN monitor: {', '.join(cfg.monitor['tasks'])}, {monitor.images()} "
              f"images every {cfg.monitor_every} steps (k={cfg.monitor['k']}), "
              f"{share:.1%} of the training FLOPs{advice}", flush=True)
    return monitor


def _write_monitor(monitor: OnlineMonitor, log: JsonLog | None, step: int) -> None:
    record = monitor(step)  # every rank: FSDP gathers the backbone's shards
    if log and record:
        log.write(record)


def replica_divergence(method: nn.Module, strategy: str) -> float | None:
    """Largest difference between ranks' per-tensor weight sums (DDP replicas must agree
    exactly; a non-zero value means a non-deterministic op or an unsynchronised buffer)."""
    if strategy != "ddp" or not dist.is_initialized() or dist.get_world_size() == 1:
        return None
    sums = torch.stack([t.detach().double().sum() for t in method.state_dict().values()
                        if t.is_floating_point()]).cpu()
    gathered = all_gather_objects(sums)
    return max(float((g - gathered[0]).abs().max()) for g in gathered)


def _record(step: int, steps_per_epoch: int, result: dict, loss: torch.Tensor, lr: float,
            wd: float, grad_norm: torch.Tensor, meter: ThroughputMeter) -> dict[str, Any]:
    record = {"step": step, "epoch": step / steps_per_epoch, "loss": loss.item(), "lr": lr,
              "weight_decay": wd, "grad_norm": float(grad_norm), "time": time.time()}
    record.update({k: float(v) for k, v in result.items() if k != "loss" and v.numel() == 1})
    record.update(meter.read())
    return record


def data_subset(cfg: TrainConfig) -> dict[str, Any]:
    """What a checkpoint's sidecar says it trained on: the subset arguments, plus the named
    subsets of curated corpora it drew from, with their definitions (a name alone says
    nothing once the corpus is gone or redefined)."""
    named = {}
    for source in cfg.sources:
        if source.get("kind") == "corpus" and source.get("subset"):
            index = json.loads((Path(source["root"]) / "subsets" / "index.json").read_text())
            named[source["name"]] = {"name": source["subset"], **index[source["subset"]]}
    return {**cfg.subset, **({"corpus_subsets": named} if named else {})}


def _export(cfg: TrainConfig, model: nn.Module, env: DistEnv, stem: Path, step: int,
            global_batch: int, n_images: int) -> Path | None:
    """Export the backbone (DINOv2 teacher / MAE encoder) from a gathered, unsharded copy."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    full = get_model_state_dict(model, options=FULL)
    path = None
    if env.is_main:
        method, _ = build_method(cfg, global_batch, step)
        unwrap(method).load_state_dict(full)
        backbone = method.backbone_for_export()
        path, _ = export_backbone(
            backbone, method.spec, stem, algorithm=cfg.algorithm, recipe=cfg.recipe,
            size=cfg.size,
            params_study_m=study_params_m(cfg.size),  # the study's x for this size
            data_subset=data_subset(cfg), n_train_images=n_images, steps=step,
            images_seen=step * global_batch, sources=[s["name"] for s in cfg.sources],
            run=cfg.dir.name)
        print(f"exported backbone: {path}", flush=True)
    barrier()
    return path
