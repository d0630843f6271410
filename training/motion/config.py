"""The training configuration: nested dataclasses, read from YAML or TOML, saved in the run folder.

A config file holds any subset of the sections below; missing keys keep their defaults, unknown keys
and values of the wrong type raise :class:`lp_renderer.errors.InputError` naming the key::

    model:     {d_model: 128, n_heads: 4, n_layers: 2, ff_mult: 2, dropout: 0.1, period: 25}
    data:      {window: 250, context: 50, overlap: 25, batch_size: 16, val_fraction: 0.1, val_window: 500, ...}
    optim:     {lr: 3.0e-4, weight_decay: 0.01, betas: [0.9, 0.999], grad_clip: 1.0}
    schedule:  {steps: 20000, warmup_steps: 500, kind: cosine, min_lr_ratio: 0.05}
    loss:      {lip_weight: 4.0, eye_weight: 1.0, pose_weight: 1.0, velocity_weight: 0.5}
    sampling:  {max_prob: 0.5, start_step: 1000, ramp_steps: 5000}
    run:       {seed: 0, checkpoint_every: 500, keep_checkpoints: 3, log_every: 50, val_every: 500, ...}

See ``examples/train_config.yaml`` for every key with its meaning.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lp_renderer.errors import InputError

__all__ = [
    "ModelSection", "DataSection", "OptimSection", "ScheduleSection", "LossSection", "SamplingSection",
    "RunSection", "MotionTrainConfig", "load_config", "save_config", "apply_overrides",
]


@dataclass
class ModelSection:
    """Sizes of the :class:`audio2lp.models.motion_model.MotionModel` (its audio width, Whisper model and layers
    and style count come from the dataset)."""

    d_model: int = 128
    n_heads: int = 4
    n_layers: int = 2
    ff_mult: int = 2
    dropout: float = 0.1
    period: int = 25


@dataclass
class DataSection:
    window: int = 250  # frames per generation window of speak (MotionModel.rollout); stored in the model
    context: int = 50  # frames of earlier output priming each generation window after the first
    overlap: int = 25  # frames two generation windows share (cross-faded)
    # training windows are context + window frames (the longest sequence a generation window decodes), each with
    # the matching 2 * (context + window) Whisper tokens
    batch_size: int = 16  # windows per optimiser step, over all processes (must divide by the world size)
    val_fraction: float = 0.1  # share of speakers held out for validation (clips without speaker count alone)
    val_speakers: list[str] = field(default_factory=list)  # explicit validation speakers (overrides the fraction)
    val_window: int = 500  # frames per validation segment, rolled out as speak does (MotionModel.rollout)
    val_max_windows: int = 64  # validation segments at most (deterministic choice)
    speaker_styles: bool = True  # one style embedding per training speaker (else a single style)
    preload: bool | None = None  # keep all shards in memory (None: when they take less than 1 GB)


@dataclass
class OptimSection:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    grad_clip: float = 1.0  # max gradient norm; 0 disables clipping


@dataclass
class ScheduleSection:
    steps: int = 20000  # optimiser steps in all
    warmup_steps: int = 500  # linear warm-up from 0
    kind: str = "cosine"  # after warm-up: cosine | linear | constant
    min_lr_ratio: float = 0.05  # final lr = lr * min_lr_ratio (cosine / linear)


@dataclass
class LossSection:
    lip_weight: float = 4.0  # weight of the 18 lip-keypoint expression dims
    eye_weight: float = 1.0  # weight of the 15 eye-keypoint expression dims
    pose_weight: float = 1.0  # weight of pitch / yaw / roll, translation and scale
    other_weight: float = 1.0  # weight of the remaining expression dims
    velocity_weight: float = 0.5  # weight of the first-difference (velocity) loss against jitter


@dataclass
class SamplingSection:
    """Scheduled sampling, the two-pass variant for parallel (transformer) decoders of Mihaylova & Liu (2019),
    "Scheduled Sampling for Transformers".

    Each training step runs the decoder twice on the same windows. Pass 1 is teacher forced (ground-truth
    previous frames) and runs without gradient. Its predictions replace ground-truth input frames of pass 2
    with probability ``p``, independently per window and frame. Pass 2 is the pass that is trained; its loss
    target is still the ground truth. ``p`` ramps linearly from 0 at ``start_step`` to ``max_prob`` over
    ``ramp_steps`` (0 before ``start_step``; ``max_prob`` 0 turns it off and saves pass 1).

    What this does and does not do: the mixed-in frames are one-step-ahead predictions made from the true
    history, not a free-running rollout. The decoder learns to tolerate its own one-step errors in its inputs,
    but not errors that build up over a long rollout. Validation measures those separately, with a true
    autoregressive rollout (``val_motion_l2`` and friends).
    """

    max_prob: float = 0.5
    start_step: int = 1000
    ramp_steps: int = 5000


@dataclass
class RunSection:
    seed: int = 0
    checkpoint_every: int = 500  # steps between checkpoints (one is always written at the end)
    keep_checkpoints: int = 3  # newest checkpoints kept
    log_every: int = 50  # steps between training-loss rows in metrics.csv / TensorBoard
    val_every: int = 500  # steps between validations (also at the end); 0: only at the end
    num_threads: int = 1  # torch intra-op threads per process (1 is fastest for small models on a busy CPU)
    device: str = "auto"  # auto | cpu | cuda
    ddp_timeout: float = 1800.0  # seconds a process waits in a collective before giving up (backstop)
    tensorboard: bool = True  # also write TensorBoard event files (metrics.csv is always written)
    progress: bool = True


@dataclass
class MotionTrainConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    optim: OptimSection = field(default_factory=OptimSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    loss: LossSection = field(default_factory=LossSection)
    sampling: SamplingSection = field(default_factory=SamplingSection)
    run: RunSection = field(default_factory=RunSection)

    def __post_init__(self):
        self.validate()

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Any, source: str = "the config") -> MotionTrainConfig:
        """Build from nested dicts; unknown keys or wrong types raise InputError naming ``source`` and the key."""
        return _build(cls, d, source, "")

    def validate(self) -> None:
        """Raise InputError for values out of range."""
        def need(ok: bool, key: str, what: str):
            if not ok:
                raise InputError(f"config value {key} = {_get(self, key)!r} is invalid: it {what}; fix the config.")

        m, d, o, s, sa, r = self.model, self.data, self.optim, self.schedule, self.sampling, self.run
        for k in ("d_model", "n_heads", "n_layers", "ff_mult", "period"):
            need(getattr(m, k) >= 1, f"model.{k}", "must be >= 1")
        need(m.d_model % m.n_heads == 0 and (m.d_model // m.n_heads) % 2 == 0, "model.d_model",
             "must be a multiple of 2 * model.n_heads")
        need(0 <= m.dropout < 1, "model.dropout", "must be in [0, 1)")
        need(d.window >= 2, "data.window", "must be >= 2 frames")
        need(0 <= d.overlap < d.window, "data.overlap", "must be >= 0 and smaller than data.window")
        need(d.context >= 0, "data.context", "must be >= 0")
        need(d.batch_size >= 1, "data.batch_size", "must be >= 1")
        need(0 <= d.val_fraction < 1, "data.val_fraction", "must be in [0, 1)")
        need(d.val_window >= 2, "data.val_window", "must be >= 2 frames")
        need(d.val_max_windows >= 1, "data.val_max_windows", "must be >= 1")
        need(o.lr > 0, "optim.lr", "must be > 0")
        need(o.weight_decay >= 0, "optim.weight_decay", "must be >= 0")
        need(len(o.betas) == 2 and all(0 <= b < 1 for b in o.betas), "optim.betas", "must be two numbers in [0, 1)")
        need(o.eps > 0, "optim.eps", "must be > 0")
        need(o.grad_clip >= 0, "optim.grad_clip", "must be >= 0")
        need(s.steps >= 1, "schedule.steps", "must be >= 1")
        need(s.warmup_steps >= 0, "schedule.warmup_steps", "must be >= 0")
        need(s.kind in ("cosine", "linear", "constant"), "schedule.kind", "must be cosine, linear or constant")
        need(0 <= s.min_lr_ratio <= 1, "schedule.min_lr_ratio", "must be in [0, 1]")
        for k in ("lip_weight", "eye_weight", "pose_weight", "other_weight", "velocity_weight"):
            need(getattr(self.loss, k) >= 0, f"loss.{k}", "must be >= 0")
        need(0 <= sa.max_prob <= 1, "sampling.max_prob", "must be in [0, 1]")
        need(sa.start_step >= 0 and sa.ramp_steps >= 0, "sampling.start_step", "and ramp_steps must be >= 0")
        need(r.checkpoint_every >= 1, "run.checkpoint_every", "must be >= 1")
        need(r.keep_checkpoints >= 1, "run.keep_checkpoints", "must be >= 1")
        need(r.log_every >= 1, "run.log_every", "must be >= 1")
        need(r.val_every >= 0, "run.val_every", "must be >= 0")
        need(r.num_threads >= 0, "run.num_threads", "must be >= 0 (0 keeps torch's default)")
        need(r.device in ("auto", "cpu", "cuda"), "run.device", "must be auto, cpu or cuda")
        need(r.ddp_timeout > 0, "run.ddp_timeout", "must be > 0 seconds")


def _get(obj, dotted: str):
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def _type_ok(value, tp) -> bool:
    """Is ``value`` (parsed YAML / TOML / JSON) acceptable for the annotation ``tp``?"""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, (list, tuple)) and all(_type_ok(v, item) for v in value)
    return False


def _type_name(tp) -> str:
    return str(tp).replace("typing.", "").replace("<class '", "").replace("'>", "")


def _build(cls, d, source: str, prefix: str):
    if not isinstance(d, dict):
        where = f"section '{prefix[:-1]}'" if prefix else "the top level"
        raise InputError(f"{source}: {where} must be a mapping of keys to values, got {type(d).__name__}; "
                         f"fix the config.")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            known = ", ".join(fields)
            raise InputError(f"{source}: unknown config key '{prefix}{key}'; known keys here are {known}.")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = _build(tp, value, source, f"{prefix}{key}.")
            continue
        if tp is float and isinstance(value, str):  # PyYAML reads 3e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if not _type_ok(value, tp):
            raise InputError(f"{source}: config key '{prefix}{key}' = {value!r} should be of type "
                             f"{_type_name(tp)}; fix the config.")
        if typing.get_origin(tp) is list:
            value = list(value)
        elif tp is float or (typing.get_origin(tp) in (typing.Union, types.UnionType) and isinstance(value, int)
                             and float in typing.get_args(tp) and int not in typing.get_args(tp)):
            value = float(value)
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except InputError as e:
        raise InputError(f"{source}: {e}") from None


def load_config(path: str | os.PathLike | None) -> MotionTrainConfig:
    """Read a YAML (``.yaml`` / ``.yml``), TOML (``.toml``) or JSON config; None gives the defaults."""
    if path is None:
        return MotionTrainConfig()
    p = Path(path)
    if not p.is_file():
        raise InputError(f"config file {p} does not exist; check the path.")
    text = p.read_text(encoding="utf-8")
    suffix = p.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            data = tomllib.loads(text)
        elif suffix == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # yaml.YAMLError, tomllib.TOMLDecodeError, json.JSONDecodeError
        raise InputError(f"config file {p} cannot be parsed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                         f"fix its syntax.") from None
    return MotionTrainConfig.from_dict({} if data is None else data, source=str(p))


def save_config(config: MotionTrainConfig, path: str | os.PathLike) -> Path:
    """Write ``config`` as YAML, atomically."""
    import yaml

    from training.common import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(config.to_dict(), sort_keys=False))


def apply_overrides(config: MotionTrainConfig, overrides: list[str], source: str = "--set") -> MotionTrainConfig:
    """``["optim.lr=1e-3", "data.window=50"]`` -> a new config. Values are parsed as YAML scalars/lists."""
    import yaml

    d = config.to_dict()
    for item in overrides:
        if "=" not in item:
            raise InputError(f"{source} {item!r} is not KEY=VALUE (e.g. optim.lr=1e-4); fix the option.")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError:
            value = raw
        node = d
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise InputError(f"{source}: unknown config section '{part}' in {key!r}; see "
                                 f"examples/train_config.yaml.")
            node = node[part]
        if parts[-1] not in node or isinstance(node[parts[-1]], dict):
            raise InputError(f"{source}: unknown config key {key!r}; see examples/train_config.yaml.")
        node[parts[-1]] = value
    return MotionTrainConfig.from_dict(d, source=source)
