"""Which blocks a probe reads, and their features from the cache (one forward pass for all).

Blocks are numbered from 0; the last, ``n_blocks - 1``, is the one the study probes, and the
``layer`` of every results row. ``layers: last`` probes it alone (today's probe); ``all`` and a
list of indices add a probe per block, and the last block is always among them, so the figure
of metric by block ends at the study's point.

Cache keys carry the block and the pooling (``features``). The last block keeps the key it had
before blocks were named, so an existing cache stays valid and a layer sweep shares the main
probe's entry; any other block's key adds ``layer``. Likewise a probe whose encoder sees
another side than the file's (``input_size``) adds that side and how it was reached.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from biovfm_lib.data.medmnist import TaskData
from biovfm_lib.models.checkpoints import LoadedEncoder
from biovfm_lib.params import ProbeParams
from biovfm_lib.probe.features import (
    FeatureCache,
    block_count,
    blocks_read,
    extract_layer_features,
    feature_precision,
    file_identity,
)


def probed_layers(layers: str | list[int], n_blocks: int) -> list[int]:
    """The blocks a run probes, ascending: the last block and those ``layers`` adds."""
    if layers == "all":
        return list(range(n_blocks))
    extra = [] if layers == "last" else list(layers)
    missing = [i for i in extra if i >= n_blocks]
    if missing:
        raise ValueError(f"layers: block(s) {missing} do not exist; the encoder has {n_blocks} "
                         f"blocks (0-{n_blocks - 1})")
    return sorted({*extra, n_blocks - 1})


def check_feature_blocks(model: torch.nn.Module, p: ProbeParams) -> None:
    """Refuse, before any compute, a feature the encoder has too few blocks for."""
    try:
        blocks_read(block_count(model) - 1, p.features)
    except ValueError as err:
        raise ValueError(f"features: {err}") from None


def layer_features(enc: LoadedEncoder, identity: dict[str, Any], data: TaskData, split: str,
                   p: ProbeParams, device: torch.device, cache: FeatureCache,
                   layers: list[int]) -> dict[int, np.ndarray]:
    """Per block of ``layers``, the ``p.features`` features of one split, from the cache where
    there, the missing blocks from one forward pass over the split (then cached)."""
    last = block_count(enc.model) - 1
    made_from = {
        layer: {"encoder": identity, "data": file_identity(data.file), "flag": data.flag,
                "split": split, "size": p.size, "features": p.features,
                "precision": feature_precision(p.precision, device),
                **({"input_size": p.encoder_input, "input_fit": p.input_fit}
                   if p.fits_input else {}),
                **({} if layer == last else {"layer": layer})}
        for layer in layers}
    keys = {layer: cache.key(**made_from[layer]) for layer in layers}
    rows = len(data.images[split])
    found = {layer: cache.get(keys[layer], rows=rows) for layer in layers}
    missing = [layer for layer, feats in found.items() if feats is None]
    if missing:
        extracted = extract_layer_features(
            enc.model, data.images[split], device, missing, p.features, p.extract_batch_size,
            desc=f"{data.flag} {split}", precision=p.precision, input_size=p.encoder_input,
            input_fit=p.input_fit)
        for layer, feats in extracted.items():
            cache.put(keys[layer], feats, **made_from[layer])  # the sidecar: what was hashed
            found[layer] = feats
    return {layer: found[layer] for layer in layers}
