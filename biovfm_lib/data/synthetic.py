"""Synthetic MedMNIST-format data, so the workbook's demo and tests run with no network.

The files copy the real ones' layout (``<flag>.npz`` at 28 px, ``<flag>_<size>.npz`` above),
keys, dtypes, shapes, label formats and split proportions, and load unchanged through the
``medmnist`` classes and ``medmnist.Evaluator``. One caveat: ``len()`` of a ``medmnist``
dataset asserts the official sample count, so it only holds at ``scale=1``; read ``.imgs`` and
``.labels`` instead.

The pictures are built so that the probing and task-property analyses have something real to
measure. Each task has a fixed, modality-like style (H&E-like textures for PathMNIST, cells for
BloodMNIST, CT-like organs, chest X-rays, OCT layers, ultrasound speckle, a fundus with
lesions) and a difficulty set by how strongly its class signal stands out against pose
jitter, noise and a wrong class's signal mixed in. The shapes themselves (where, how big, which
colour, which texture frequency) are drawn from a seeded RNG per task. Shapes are functions of
continuous image coordinates, and every random choice except pixel noise is drawn before
rendering, so sample ``i`` is the same picture at 28, 64, 128 and 224 px.

A folder of synthetic files carries the :data:`SYNTHETIC_MARKER` JSON file;
:func:`synthetic_info` reads it so that reports can say the numbers come from synthetic data.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
from medmnist import INFO
from tqdm.auto import tqdm

SYNTHETIC_MARKER = "biovfm_synthetic.json"
GENERATOR_VERSION = 1
TASKS = ("pathmnist", "chestmnist", "dermamnist", "octmnist", "pneumoniamnist", "retinamnist",
         "breastmnist", "bloodmnist", "tissuemnist", "organamnist", "organcmnist", "organsmnist")
SIZES = (28, 64, 128, 224)
SPLITS = ("train", "val", "test")
MIN_PER_CLASS = 5  # a split never has fewer than this many samples per class (or label)
_CHUNK_PIXELS = 1 << 16  # pixels rendered at once: cache-sized chunks are fastest, memory bounded
_MULTI_LABEL = "multi-label, binary-class"
_ORDINAL = "ordinal-regression"
_F32 = np.float32


@dataclass(frozen=True)
class _Style:
    """How a task looks and how hard it is. Fixed per task, so tasks differ on purpose."""

    recipe: str  # which shape family builds the task (see _RECIPES)
    background: tuple[float, ...]  # tissue / body colour, one value per channel
    palette: tuple[tuple[float, ...], ...]  # colours the shapes are drawn in
    separation: float  # gain of the class signal: the main difficulty knob
    confusion: float  # up to this share of the class signal is a wrong class's (ordinal: level sd)
    noise: float  # additive per-pixel noise sd
    light: float = 0.05  # amplitude of low-frequency illumination waves
    speckle: float = 0.0  # multiplicative per-pixel noise sd (ultrasound, OCT)
    rotation: float = 10.0  # maximum rotation in degrees
    shift: float = 0.05  # translation sd, in image half-widths


_H_E = ((0.35, 0.22, 0.55), (0.85, 0.40, 0.62), (0.98, 0.95, 0.97))
_SKIN = ((0.45, 0.28, 0.18), (0.25, 0.14, 0.12), (0.78, 0.38, 0.38))
_BLOOD = ((0.42, 0.22, 0.60), (0.85, 0.55, 0.55), (0.62, 0.40, 0.78))
_FUNDUS = ((0.96, 0.82, 0.42), (0.42, 0.07, 0.05), (0.98, 0.86, 0.62))
_CT = ((0.15,), (0.70,), (0.92,))
_STYLES = {
    "pathmnist": _Style("texture", (0.92, 0.78, 0.86), _H_E, 0.7, 0.4, 0.05, rotation=20,
                        shift=0.1),
    "chestmnist": _Style("xray", (0.62,), ((0.12,), (0.95,)), 0.35, 0.0, 0.04, light=0.06,
                         rotation=6),
    "dermamnist": _Style("cells", (0.86, 0.64, 0.55), _SKIN, 0.45, 0.6, 0.03, light=0.08,
                         rotation=30, shift=0.08),
    "octmnist": _Style("layers", (0.06,), ((0.90,), (0.55,), (0.0,)), 0.8, 0.3, 0.05,
                       light=0.02, speckle=0.35, rotation=5, shift=0.08),
    "pneumoniamnist": _Style("xray", (0.60,), ((0.12,), (0.90,)), 0.6, 0.4, 0.04, light=0.06,
                             rotation=6),
    "retinamnist": _Style("fundus", (0.72, 0.33, 0.14), _FUNDUS, 1.3, 0.6, 0.03, light=0.06,
                          rotation=15),
    "breastmnist": _Style("ultrasound", (0.28,), ((0.03,), (0.65,)), 0.6, 0.4, 0.03,
                          speckle=0.4, rotation=8, shift=0.08),
    "bloodmnist": _Style("cells", (0.93, 0.85, 0.80), _BLOOD, 0.7, 0.5, 0.03, light=0.03,
                         rotation=180),
    "tissuemnist": _Style("texture", (0.50,), ((0.15,), (0.85,)), 1.0, 0.4, 0.05,
                          rotation=180, shift=0.1),
    "organamnist": _Style("ct", (0.45,), _CT, 0.6, 0.5, 0.03, light=0.04, rotation=8),
    "organcmnist": _Style("ct", (0.45,), _CT, 0.55, 0.55, 0.03, light=0.04, rotation=8),
    "organsmnist": _Style("ct", (0.45,), _CT, 0.5, 0.6, 0.03, light=0.04, rotation=8),
}


@dataclass(frozen=True)
class _Shape:
    """One shape slot with a parameter set per variant (a class, a Chest label, or shared)."""

    kind: str  # "blob" (Gaussian), "disc" (soft-edged ellipse), "ring" or "grating"
    params: dict[str, np.ndarray]  # cx, cy, sx, sy, angle, freq, width: each (variants,)
    colour: np.ndarray  # (variants, channels): added to the background at full strength
    jitter: float  # per-sample position jitter, so a class is not one fixed picture


@dataclass(frozen=True)
class _Recipe:
    base: tuple[_Shape, ...]  # shared by all samples of the task
    signal: tuple[_Shape, ...]  # what differs between classes (Chest: labels; Retina: lesions)
    mask: _Shape | None = None  # body / fundus outline; outside it the image is black


@dataclass(frozen=True)
class _Task:
    flag: str
    kind: str  # medmnist.INFO task type
    n_classes: int  # classes, or labels for ChestMNIST
    style: _Style
    recipe: _Recipe
    freq: np.ndarray  # class frequencies, or label prevalences for ChestMNIST


@dataclass(frozen=True)
class _Samples:
    """Everything random about a split's images except pixel noise, drawn before rendering so
    that a sample is the same picture at every size and chunking never changes a draw."""

    variant: np.ndarray  # (terms, n): which class / label signal each term shows
    gain: np.ndarray  # (terms, n): how strongly
    pose: np.ndarray  # (n, 6): rotation, shift x, shift y, zoom, contrast, brightness
    slot: np.ndarray  # (n, shape slots, 4): phase, position jitter x/y, amplitude jitter
    light: np.ndarray  # (n, waves, 4): illumination wave fx, fy, phase, amplitude

    def __getitem__(self, rows: slice) -> _Samples:
        return _Samples(self.variant[:, rows], self.gain[:, rows], self.pose[rows],
                        self.slot[rows], self.light[rows])


def _rng(seed: int, flag: str, *stream: int) -> np.random.Generator:
    """Independent streams per task and purpose, stable across Python runs (crc32, not hash)."""
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(flag.encode()),
                                                         *stream]))


def _colour(rng: np.random.Generator, style: _Style, n: int,
            strength: tuple[float, float] = (0.5, 1.0)) -> np.ndarray:
    anchors = np.asarray(style.palette, _F32)[rng.integers(len(style.palette), size=n)]
    return ((anchors - np.asarray(style.background, _F32))
            * rng.uniform(*strength, (n, 1))).astype(_F32)


def _draw(rng: np.random.Generator, kind: str, colour: np.ndarray, jitter: float = 0.0,
          **ranges: float | tuple[float, float]) -> _Shape:
    """A shape slot whose parameters are drawn per variant; a float fixes a parameter, a
    (low, high) pair draws it uniformly; sy defaults to sx (round shapes)."""
    n = len(colour)
    spec = {"cx": 0.0, "cy": 0.0, "sx": 0.3, "angle": (0.0, np.pi), "freq": 0.0, "width": 0.1}
    spec.update(ranges)
    params = {k: (rng.uniform(*v, n) if isinstance(v, tuple) else np.full(n, v)).astype(_F32)
              for k, v in spec.items()}
    params.setdefault("sy", params["sx"])
    return _Shape(kind, params, colour, jitter)


def _texture(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """Histology: stroma-like waves and blotches; classes differ in fine oriented texture
    (random phase, so it is not linear in pixels) and in nucleus-cluster colour and place."""
    return _Recipe(
        base=(_draw(rng, "grating", _colour(rng, st, 1, (0.2, 0.4)), sx=2.0, freq=(0.8, 1.5)),
              *(_draw(rng, "blob", _colour(rng, st, 1), 0.2, cx=(-0.8, 0.8), cy=(-0.8, 0.8),
                      sx=(0.3, 0.7), sy=(0.3, 0.7)) for _ in range(3))),
        signal=(*(_draw(rng, "grating", _colour(rng, st, n, (0.2, 0.5)), sx=2.0,
                        freq=(1.5, 4.0))
                  for _ in range(2)),
                *(_draw(rng, "blob", _colour(rng, st, n), 0.15, cx=(-0.6, 0.6), cy=(-0.6, 0.6),
                        sx=(0.08, 0.25), sy=(0.08, 0.25)) for _ in range(2))))


def _cells(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """A centred cell or lesion; classes differ in its outline, inner lobes and texture."""
    return _Recipe(
        base=(_draw(rng, "blob", _colour(rng, st, 1, (0.3, 0.5)), 0.05, sx=0.55),),
        signal=(_draw(rng, "ring", _colour(rng, st, n), 0.05, cx=(-0.1, 0.1), cy=(-0.1, 0.1),
                      sx=(0.35, 0.65), sy=(0.35, 0.65), width=(0.08, 0.25)),
                *(_draw(rng, "blob", _colour(rng, st, n), 0.08, cx=(-0.3, 0.3), cy=(-0.3, 0.3),
                        sx=(0.08, 0.3), sy=(0.08, 0.3)) for _ in range(3)),
                _draw(rng, "grating", _colour(rng, st, n, (0.1, 0.3)), sx=0.5,
                      freq=(2.0, 4.0))))


def _ct(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """An abdominal CT crop: sharp-edged organs in a body outline; classes differ in the
    shape, density and place of two organs."""
    return _Recipe(
        mask=_draw(rng, "disc", np.ones((1, 1), _F32), sx=1.15, sy=0.95, angle=0.0, width=0.03),
        base=(*(_draw(rng, "disc", _colour(rng, st, 1), 0.05, cx=(-0.8, 0.8), cy=(-0.8, 0.8),
                      sx=(0.2, 0.5), sy=(0.2, 0.5), width=(0.03, 0.1)) for _ in range(3)),
              *(_draw(rng, "blob", _colour(rng, st, 1, (0.2, 0.4)), 0.1, cx=(-0.8, 0.8),
                      cy=(-0.8, 0.8), sx=(0.3, 0.6)) for _ in range(2))),
        signal=tuple(_draw(rng, "disc", _colour(rng, st, n), 0.05, cx=(-0.5, 0.5),
                           cy=(-0.5, 0.5), sx=(0.15, 0.5), sy=(0.15, 0.5), width=(0.03, 0.15))
                     for _ in range(2)))


def _either_side(shape: _Shape, rng: np.random.Generator) -> _Shape:
    """Mirror each variant to a random side, for paired anatomy (lungs, optic disc)."""
    shape.params["cx"] *= rng.choice(np.array([-1.0, 1.0], _F32), len(shape.colour))
    return shape


def _xray(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """A frontal chest X-ray: dark lungs beside a bright spine; classes (Chest: labels) are
    soft opacities or lucencies at their own place in a lung field, plus a faint interstitial
    texture."""
    lung = np.full((1, 1), 0.8 * (st.palette[0][0] - st.background[0]), _F32)
    return _Recipe(
        mask=_draw(rng, "disc", np.ones((1, 1), _F32), sx=0.95, sy=1.3, angle=0.0, width=0.08),
        base=(*(_draw(rng, "disc", lung, 0.03, cx=x, cy=(-0.1, 0.0), sx=(0.28, 0.33),
                      sy=(0.5, 0.6), angle=(-0.1, 0.1), width=0.12) for x in (-0.42, 0.42)),
              _draw(rng, "blob", np.full((1, 1), 0.25, _F32), sx=0.09, sy=2.0, angle=0.0)),
        signal=(*(_either_side(_draw(rng, "blob", _colour(rng, st, n), 0.06, cx=(0.2, 0.6),
                                     cy=(-0.45, 0.35), sx=(0.1, 0.35), sy=(0.1, 0.4)), rng)
                  for _ in range(2)),
                _draw(rng, "grating", _colour(rng, st, n, (0.1, 0.3)), sx=0.6,
                      freq=(2.0, 4.5))))


def _ultrasound(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """A breast ultrasound: speckled tissue layers; classes differ in the lesion's shape, edge
    sharpness, halo, posterior shadow and internal echo texture."""
    return _Recipe(
        base=tuple(_draw(rng, "blob", _colour(rng, st, 1, (0.2, 0.5)), 0.05, cy=cy, sx=3.0,
                         sy=(0.08, 0.25), angle=(-0.15, 0.15))
                   for cy in ((-0.8, -0.3), (0.3, 0.8))),
        signal=(_draw(rng, "disc", _colour(rng, st, n), 0.08, cx=(-0.2, 0.2), cy=(-0.2, 0.2),
                      sx=(0.2, 0.45), sy=(0.15, 0.35), width=(0.03, 0.2)),
                _draw(rng, "ring", _colour(rng, st, n, (0.2, 0.5)), 0.08, cx=(-0.2, 0.2),
                      cy=(-0.2, 0.2), sx=(0.25, 0.5), sy=(0.2, 0.4), width=(0.1, 0.3)),
                _draw(rng, "blob", _colour(rng, st, n, (0.2, 0.5)), 0.08, cy=(0.4, 0.8),
                      sx=(0.15, 0.3), sy=0.3, angle=0.0),
                _draw(rng, "grating", _colour(rng, st, n, (0.1, 0.3)), sx=0.4,
                      freq=(1.5, 4.0))))


def _layers(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """A retinal OCT B-scan: bright horizontal layers on dark; classes add bumps, cysts or
    deposits of their own size and place, and a faint reflectivity texture."""
    return _Recipe(
        base=tuple(_draw(rng, "blob", np.full((1, 1), rng.uniform(0.4, 0.8), _F32), 0.05,
                         cy=(cy - 0.05, cy + 0.05), sx=4.0, sy=(0.03, 0.1), angle=(-0.08, 0.08))
                   for cy in (-0.3, 0.0, 0.25)),
        signal=(*(_draw(rng, "blob", _colour(rng, st, n), 0.1, cx=(-0.5, 0.5), cy=(-0.3, 0.3),
                        sx=(0.1, 0.35), sy=(0.05, 0.2), angle=(-0.3, 0.3)) for _ in range(2)),
                _draw(rng, "disc", _colour(rng, st, n), 0.1, cx=(-0.5, 0.5), cy=(-0.2, 0.3),
                      sx=(0.05, 0.2), width=0.2),
                _draw(rng, "grating", _colour(rng, st, n, (0.1, 0.3)), sx=0.5,
                      freq=(2.0, 4.5))))


def _fundus(rng: np.random.Generator, st: _Style, n: int) -> _Recipe:
    """A fundus photograph: optic disc, macula and a vessel arc; the one signal variant is a
    set of small exudates and haemorrhages anywhere, scaled by the disease level."""
    disc = _either_side(_draw(rng, "blob", np.array([[0.3, 0.18, 0.15]], _F32), 0.03,
                              cx=(0.35, 0.55), cy=(-0.1, 0.1), sx=0.13), rng)
    return _Recipe(
        mask=_draw(rng, "disc", np.ones((1, 1), _F32), sx=0.92, angle=0.0, width=0.02),
        base=(disc,
              _draw(rng, "blob", np.array([[-0.15, -0.1, -0.05]], _F32), 0.03, sx=0.2),
              _draw(rng, "ring", np.array([[-0.25, -0.15, -0.05]], _F32), 0.03,
                    cx=float(disc.params["cx"][0]), sx=(0.5, 0.7), sy=(0.6, 0.8),
                    width=0.05)),
        signal=tuple(_draw(rng, "blob", _colour(rng, st, n), 0.3, cx=(-0.6, 0.6),
                           cy=(-0.6, 0.6), sx=(0.04, 0.1)) for _ in range(5)))


_RECIPES = {"texture": _texture, "cells": _cells, "ct": _ct, "xray": _xray,
            "ultrasound": _ultrasound, "layers": _layers, "fundus": _fundus}


def _build_task(flag: str, seed: int) -> _Task:
    info, style = INFO[flag], _STYLES[flag]
    n = len(info["label"])
    rng = _rng(seed, flag, 0)
    variants = 1 if info["task"] == _ORDINAL else n
    recipe = _RECIPES[style.recipe](rng, style, variants)
    freq = (rng.uniform(0.03, 0.15, n) if info["task"] == _MULTI_LABEL
            else rng.dirichlet(np.full(n, 8.0)))  # mildly imbalanced classes
    return _Task(flag, info["task"], n, style, recipe, freq)


def _labels(task: _Task, n: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels in the file's format, plus which signal each sample shows and how strongly."""
    sep, c = task.style.separation, task.n_classes
    if task.kind == _MULTI_LABEL:
        present = rng.random((n, c)) < task.freq
        forced = rng.permutation(n)[:c + 1]
        present[forced[:c], np.arange(c)] = True  # every label positive somewhere...
        present[forced[c]] = False  # ...and negative somewhere
        gain = sep * present.T * rng.uniform(0.6, 1.4, (c, n))
        return present.astype(np.uint8), np.repeat(np.arange(c)[:, None], n, 1), gain
    y = rng.permutation(np.concatenate([np.arange(c), rng.choice(c, n - c, p=task.freq)]))
    labels = y[:, None].astype(np.uint8)
    if task.kind == _ORDINAL:  # lesion load grows with the level; neighbours overlap
        level = np.clip(y + rng.normal(0.0, task.style.confusion, n), 0.0, None) / (c - 1)
        return labels, np.zeros((1, n), np.int64), sep * level[None]
    other = (y + rng.integers(1, c, n)) % c  # a wrong class whose signal is mixed in
    mix = task.style.confusion * rng.random(n)
    gain = sep * np.stack([(1 - mix) * rng.uniform(0.8, 1.2, n), mix])
    return labels, np.stack([y, other]), gain


def _draw_samples(task: _Task, n: int, rng: np.random.Generator) -> tuple[np.ndarray, _Samples]:
    labels, variant, gain = _labels(task, n, rng)
    st = task.style
    pose = np.column_stack([
        np.deg2rad(rng.uniform(-st.rotation, st.rotation, n)),
        rng.normal(0.0, st.shift, (n, 2)),
        np.exp(rng.normal(0.0, 0.07, n)),  # zoom
        np.exp(rng.normal(0.0, 0.15, n)),  # contrast
        rng.normal(0.0, 0.03, n),  # brightness
    ]).astype(_F32)
    slot = rng.random((n, len(task.recipe.base) + len(task.recipe.signal), 4), _F32)
    light = np.concatenate([rng.uniform(-1.0, 1.0, (n, 3, 2)),
                            rng.uniform(0.0, 2 * np.pi, (n, 3, 1)),
                            rng.normal(0.0, st.light, (n, 3, 1))], axis=2).astype(_F32)
    return labels, _Samples(variant, gain.astype(_F32), pose, slot, light)


def _field(kind: str, dx: np.ndarray, dy: np.ndarray, p: dict[str, np.ndarray],
           phase: np.ndarray | float) -> np.ndarray:
    c, s = np.cos(p["angle"]), np.sin(p["angle"])
    if kind == "grating":
        envelope = np.exp((dx * dx + dy * dy) * (-0.5 / p["sx"] ** 2))
        return np.cos(dx * (2 * np.pi * p["freq"] * c) + dy * (2 * np.pi * p["freq"] * s)
                      + phase) * envelope
    u = dx * (c / p["sx"]) + dy * (s / p["sx"])
    v = dy * (c / p["sy"]) - dx * (s / p["sy"])
    r2 = u * u + v * v
    if kind == "blob":
        return np.exp(-0.5 * r2)
    r = np.sqrt(r2)
    if kind == "ring":
        return np.exp(-0.5 * ((r - 1.0) / p["width"]) ** 2)
    return 0.5 - 0.5 * np.tanh((r - 1.0) / p["width"])  # disc


def _paint(img: np.ndarray, shape: _Shape, variant: np.ndarray, gain: np.ndarray,
           x: np.ndarray, y: np.ndarray, u: np.ndarray) -> None:
    """Add one shape slot to the channel-first ``img`` for every sample with a non-zero gain
    (Chest labels are mostly off, so skipping them saves most of that task's work)."""
    rows = np.flatnonzero(gain)
    if rows.size == 0:
        return
    whole = rows.size == len(gain)
    if not whole:
        x, y, u, variant, gain = x[rows], y[rows], u[rows], variant[rows], gain[rows]
    p = {k: v[variant][:, None, None] for k, v in shape.params.items()}
    jitter = 2 * shape.jitter * (u[:, 1:3, None, None] - 0.5)
    f = _field(shape.kind, x - (p["cx"] + jitter[:, 0]), y - (p["cy"] + jitter[:, 1]), p,
               2 * np.pi * u[:, 0, None, None])
    amp = shape.colour[variant] * (gain * (0.75 + 0.5 * u[:, 3]))[:, None]
    for ch, a in enumerate(amp.T[:, :, None, None]):
        if whole:
            img[ch] += f * a
        else:
            img[ch, rows] += f * a


def _render(task: _Task, s: _Samples, size: int, rng: np.random.Generator) -> np.ndarray:
    """Images of a chunk of samples as uint8, (n, H, W) grey or (n, H, W, 3) RGB."""
    st, rc, n = task.style, task.recipe, len(s.pose)
    g = (np.arange(size, dtype=_F32) + 0.5) * _F32(2 / size) - 1
    gx, gy = g[None, None, :], g[None, :, None]
    ang, tx, ty, zoom, contrast, brightness = (s.pose[:, i, None, None] for i in range(6))
    c, si = np.cos(ang) / zoom, np.sin(ang) / zoom
    x = c * (gx - tx) + si * (gy - ty)  # sample coordinates: the anatomy's frame
    y = c * (gy - ty) - si * (gx - tx)
    # channel-first while painting: numpy is slow on a trailing axis of 3
    img = np.zeros((len(st.background), n, size, size), _F32)
    zeros, ones = np.zeros(n, np.int64), np.ones(n, _F32)
    for i, shape in enumerate(rc.base):
        _paint(img, shape, zeros, ones, x, y, s.slot[:, i])
    for i, shape in enumerate(rc.signal, len(rc.base)):
        for variant, gain in zip(s.variant, s.gain):
            _paint(img, shape, variant, gain, x, y, s.slot[:, i])
    img *= contrast
    img += np.asarray(st.background, _F32)[:, None, None, None] + brightness
    if st.speckle:
        img *= 1 + st.speckle * rng.standard_normal((n, size, size), _F32)
    noise = st.noise * rng.standard_normal((n, size, size), _F32)
    for w in range(s.light.shape[1]):  # illumination lives in the image frame, not the anatomy's
        fx, fy, phase, amp = (s.light[:, w, i, None, None] for i in range(4))
        noise += amp * np.cos(2 * np.pi * (fx * gx + fy * gy) + phase)
    img += noise
    if rc.mask is not None:
        p = {k: v[0] for k, v in rc.mask.params.items()}
        img *= _field(rc.mask.kind, x - p["cx"], y - p["cy"], p, 0.0)
    img = np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8)
    return img[0] if len(img) == 1 else np.ascontiguousarray(np.moveaxis(img, 0, -1))


def _split_sizes(flag: str, scale: float) -> dict[str, int]:
    info = INFO[flag]
    floor = MIN_PER_CLASS * len(info["label"])
    return {s: max(round(info["n_samples"][s] * scale), floor) for s in SPLITS}


def _file_name(flag: str, size: int) -> str:
    return f"{flag}.npz" if size == 28 else f"{flag}_{size}.npz"


def _image_chunks(task: _Task, samples: _Samples, size: int, seed: int, split: int,
                  bar: tqdm) -> Iterator[np.ndarray]:
    rng = _rng(seed, task.flag, 2, split, size)  # pixel noise: the only size-specific draw
    step = max(1, _CHUNK_PIXELS // (size * size))
    for start in range(0, len(samples.pose), step):
        chunk = _render(task, samples[start:start + step], size, rng)
        bar.update(len(chunk))
        yield chunk


def _replace_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write through a temporary file in the same folder, so an interrupted run never leaves a
    half-written file under the real name."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _write_npz(tmp: Path, task: _Task, size: int, sizes: dict[str, int], seed: int,
               bar: tqdm) -> None:
    """Stream each split's images into the zip chunk by chunk: memory stays bounded even for
    the full-scale 224 px files, which do not fit in RAM. Members carry a fixed timestamp, so
    the same request gives a byte-identical file (content-keyed caches stay valid)."""
    channels = () if INFO[task.flag]["n_channels"] == 1 else (3,)
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
        for k, split in enumerate(SPLITS):
            labels, samples = _draw_samples(task, sizes[split], _rng(seed, task.flag, 1, k))
            header = {"descr": "|u1", "fortran_order": False,
                      "shape": (sizes[split], size, size, *channels)}
            with zf.open(_member(f"{split}_images"), "w", force_zip64=True) as f:
                np.lib.format.write_array_header_1_0(f, header)
                for chunk in _image_chunks(task, samples, size, seed, k, bar):
                    f.write(chunk.tobytes())
            with zf.open(_member(f"{split}_labels"), "w") as f:
                np.lib.format.write_array(f, labels, allow_pickle=False)


def _member(key: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))


def _check_args(size: int, scale: float, seed: int,
                tasks: Sequence[str] | str | None) -> list[str]:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size not in SIZES:
        raise ValueError(f"size {size!r} is not a MedMNIST 2D size; expected one of {SIZES}")
    if not 0 < scale <= 1:
        raise ValueError(f"scale {scale!r} must be in (0, 1]")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed {seed!r} must be a non-negative integer")
    flags = list(TASKS) if tasks is None else [tasks] if isinstance(tasks, str) else list(tasks)
    unknown = [t for t in flags if t not in TASKS]
    if unknown:
        raise ValueError(f"unknown task(s) {unknown}; expected MedMNIST 2D flags {TASKS}")
    return list(dict.fromkeys(flags))


def write_synthetic(root: str | Path, size: int = 28, scale: float = 0.02, seed: int = 0,
                    tasks: Sequence[str] | None = None, progress: bool = False) -> list[Path]:
    """Write synthetic ``<flag>[_<size>].npz`` files into ``root`` and return their paths
    (already present ones included, so callers need not care what was skipped).

    Split sizes are ``round(n_samples * scale)``, at least ``MIN_PER_CLASS`` per class, so that
    every class (every Chest label, both values) is in every split; at ``scale=1`` they equal
    the official counts. A file already written here with the same seed and scale is skipped.
    A folder holds one configuration and never real data: a different seed, scale or generator
    version, or an ``.npz`` this generator did not write, is an error rather than a silent mix.
    """
    flags = _check_args(size, scale, seed, tasks)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    config = {"version": GENERATOR_VERSION, "seed": int(seed), "scale": float(scale)}
    marker = synthetic_info(root) or {
        "synthetic": True, "generator": __name__, **config,
        "note": "Synthetic images, not medical data: results on them only show that the "
                "pipeline runs end to end.",
        "tasks": [], "sizes": [], "files": {}}
    held = {k: marker.get(k) for k in config}
    if held != config:
        raise ValueError(f"{root} holds synthetic data made with {held}, not {config}; "
                         "use another folder or delete this one")
    foreign = sorted(p.name for p in root.glob("*.npz") if p.name not in marker["files"])
    if foreign:
        raise FileExistsError(f"{root} holds .npz files this generator did not write "
                              f"({', '.join(foreign)}); keep synthetic data in its own folder")
    paths = [root / _file_name(flag, size) for flag in flags]
    todo = [(flag, path) for flag, path in zip(flags, paths) if not path.is_file()]
    if not todo:
        return paths
    sizes = {flag: _split_sizes(flag, scale) for flag, _ in todo}
    # Claim the names before writing, so a crash never leaves a file that looks real.
    for flag, path in todo:
        marker["files"][path.name] = {"task": flag, "size": size, "n_samples": sizes[flag]}
    entries = marker["files"].values()
    marker["tasks"] = [t for t in TASKS if any(e["task"] == t for e in entries)]
    marker["sizes"] = sorted({e["size"] for e in entries})
    text = json.dumps(marker, indent=2) + "\n"
    _replace_atomically(root / SYNTHETIC_MARKER, lambda tmp: tmp.write_text(text))
    total = sum(sum(s.values()) for s in sizes.values())
    with tqdm(total=total, unit="img", desc=f"synthetic {size}px", disable=not progress) as bar:
        for flag, path in todo:
            bar.set_postfix_str(flag)
            task = _build_task(flag, seed)
            _replace_atomically(path, partial(_write_npz, task=task, size=size,
                                              sizes=sizes[flag], seed=seed, bar=bar))
    return paths


def synthetic_info(root: str | Path) -> dict | None:
    """The marker of a synthetic folder, or None for real data: what reports use to say which
    kind of data their numbers come from."""
    path = Path(root) / SYNTHETIC_MARKER
    if not path.is_file():
        return None
    try:  # a marker that cannot be read must not pass its folder off as real data
        info = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, ValueError) as err:
        info, problem = None, f"{type(err).__name__}: {err}"
    else:
        problem = "" if isinstance(info, dict) else f"holds a {type(info).__name__}"
    if problem:
        raise ValueError(f"{path}: unreadable synthetic-data marker ({problem}); regenerate the "
                         f"folder with `biovfm data synth --root {Path(root)}`")
    return info


def data_kind(roots: Mapping[str, str | Path]) -> tuple[str, list[str]]:
    """For data drawn from several folders (by name): "synthetic" when all are, "mixed" when
    some are, else "real"; and the names of the synthetic ones, for the report to list."""
    synthetic = [name for name, root in roots.items() if synthetic_info(root) is not None]
    kind = "synthetic" if len(synthetic) == len(roots) else "mixed" if synthetic else "real"
    return kind, synthetic
