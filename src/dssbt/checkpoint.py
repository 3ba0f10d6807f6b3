"""Model checkpoints: one torch file holding the model config, the state dict and free-form metadata."""

from __future__ import annotations

import os
from typing import Any

import torch

from .dss import check_ss_params
from .io import atomic_path
from .model import ModelConfig, S4Model

FORMAT = "dssbt-model"


def save_model(path: str | os.PathLike, model: S4Model, meta: dict[str, Any] | None = None) -> None:
    """Write ``model`` (config + state dict) and ``meta`` atomically."""
    payload = {"format": FORMAT, "config": model.cfg.to_dict(), "state_dict": model.state_dict(), "meta": meta or {}}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_model(path: str | os.PathLike, expect: ModelConfig | None = None) -> tuple[S4Model, dict[str, Any]]:
    """Read a model written by ``save_model``; returns (model, meta).

    Raises ValueError naming the file for: not a dssbt model file, an invalid config, a config different from
    ``expect`` (another architecture), weights that do not fit the config, and non-finite or unstable SSM
    parameters (naming layer, direction, channel and mode).
    """
    payload, cfg = _read(path)
    if expect is not None and cfg != expect:
        diff = {k: (v, getattr(expect, k)) for k, v in cfg.to_dict().items() if getattr(expect, k) != v}
        raise ValueError(f"{path}: architecture differs from the one expected (file, expected): {diff}")
    model = S4Model(cfg)
    try:
        model.load_state_dict(payload["state_dict"])
    except RuntimeError as e:
        raise ValueError(f"{path}: weights do not fit the model config: {e}") from None
    check_model(model, where=str(path))
    return model, payload.get("meta", {})


def read_config(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, Any]]:
    """The architecture and the metadata a model file carries, without building the model; ValueError naming the
    file as ``load_model``."""
    payload, cfg = _read(path)
    return cfg, payload.get("meta", {})


def _read(path: str | os.PathLike) -> tuple[dict[str, Any], ModelConfig]:
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated or foreign file
        raise ValueError(f"{path}: not a readable model file ({type(e).__name__}: {e})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path}: not a dssbt model file (missing format tag {FORMAT!r})")
    try:
        cfg = ModelConfig.from_dict(payload["config"])
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None
    return payload, cfg


def check_model(model: S4Model, where: str) -> None:
    """Raise ValueError if any weight is non-finite or any DSS channel is unstable, naming the layer and channel."""
    for i, layer in enumerate(model.dss_layers()):
        check_ss_params(layer.ss_params(), tuple(layer.Lambda_im.shape), f"{where}: layer {i}")
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise ValueError(f"{where}: parameter {name} is not finite")
