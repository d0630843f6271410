"""Training of the audio-to-motion model (:class:`audio2lp.models.motion_model.MotionModel`) on a prepared dataset.

Longer than 600 lines because :class:`Trainer` is one state machine (resume, DDP ranks, logs, validation,
checkpoints) whose parts share its state; the pure pieces (batch plan, schedule, losses, split) sit at the top.

One optimiser step:

1. The global batch is a pure function of ``(seed, step)``: ``B`` windows of ``data.context + data.window`` frames
   (the longest sequence one generation window of ``speak`` decodes: ``context`` primed frames, then ``window``
   new ones) drawn from the training clips (clip chosen in proportion to its number of window positions, start
   uniform), each with the matching Whisper tokens. Rank ``r`` of ``W`` processes takes the slice
   ``[r * B/W, (r+1) * B/W)``; this is the distributed sampler. Torch's RNG (dropout, scheduled sampling) is
   re-seeded from ``(seed, step, rank)`` every step. So a run killed at any moment and resumed from its last
   checkpoint repeats exactly the steps it lost: the final weights equal those of an uninterrupted run.
2. Motion is relative to each clip's reference and normalised with the dataset's
   :class:`audio2lp.models.motion.MotionStats` (see :mod:`training.motion.dataset`). Scheduled sampling is the
   two-pass variant for parallel decoders (Mihaylova & Liu 2019, "Scheduled Sampling for Transformers"):
   with probability ``p`` (ramped over steps, see :class:`training.motion.config.SamplingSection`) each decoder input
   frame of the second, trained pass is the first pass's prediction instead of the ground truth. The first pass
   is teacher forced and runs without gradient (:func:`scheduled_sampling_inputs`). So the mixed-in frames are
   one-step-ahead predictions made from the true history. The model learns to cope with its own one-step
   errors in its inputs, but it never sees errors that build up over a long rollout. Validation measures those
   with a real autoregressive rollout.
3. Loss per window = weighted MSE over the 70 dims (lip-keypoint dims weighted ``loss.lip_weight``) +
   ``loss.velocity_weight`` * the same on first differences, over its real (unpadded) valid frames (frames
   without a face and their two neighbours each side are masked out, see
   :func:`training.motion.dataset.valid_frames`); the batch loss is the mean over windows, so ``W`` processes with
   ``B/W`` windows each average to the same gradient as one process with ``B``.
4. AdamW, gradient clipping, linear warm-up then cosine / linear decay (per step).

Every ``run.checkpoint_every`` steps (and at the end) rank 0 writes ``RUN/checkpoints/step-XXXXXXXX.pt``
atomically (temp file + rename; model, optimiser, scheduler, step, RNG states, config, stats, speaker map);
``resume=True`` continues from the newest. It may raise ``schedule.steps`` (the learning-rate schedule is
then recomputed over the new length, with a warning). Other changes to the config are refused. Rank 0 also
writes ``RUN/metrics.csv``, TensorBoard events in ``RUN/tensorboard``, ``RUN/curves.png`` and at the end
``RUN/motion_model.safetensors`` (:func:`audio2lp.models.motion_model.save_motion_model`), which
``audio2lp speak --motion-model`` loads.

Several processes: ``RUN`` lives on rank 0's filesystem. Only rank 0 reads or writes it: on resume it loads
the newest checkpoint and sends the state to the other ranks before the model is wrapped in
DistributedDataParallel. Every rank uses rank 0's config. The other ranks (machines) need only the dataset, which
must be the same on every rank: its fingerprint (:meth:`training.motion.dataset.Dataset.fingerprint`) is compared
at the start, and a mismatch ends every rank with an error. Wherever one rank can fail on its own (setting up,
computing a step's loss, rank 0's validation, logs, checkpoints and final model), the ranks then exchange a status
flag (:meth:`Trainer._together`), so an exception on one rank ends every rank at once with an error naming the rank
and its problem, instead of leaving the others waiting in a collective; ``run.ddp_timeout`` is the backstop for
anything else.

Validation (rank 0, every ``run.val_every`` steps and at the end) scores exactly what ``speak`` runs: it rolls the
model out with :meth:`MotionModel.rollout` (the model's own window, overlap and context, noise 0) over segments of
``data.val_window`` frames of held-out speakers, and reports, in ``metrics.csv``, over the valid frames:

* ``val_loss``: the training loss, teacher forced on the first ``context + window`` frames of each segment;
* ``val_motion_l2``: mean per-frame L2 distance over the 70 normalised dims;
* ``val_lip_l2``: mean per-frame L2 distance of the 18 lip-keypoint expression dims, in LivePortrait units;
* ``val_velocity_err``: mean per-frame L2 distance of the first differences (normalised dims);
* ``val_lip_corr``: Pearson correlation of predicted vs. true lip opening, the projection of the lip dims on
  ``lip_direction`` (fitted on training clips to the landmarks' lip-open ratio; see
  :meth:`training.motion.dataset.Dataset.lip_direction`).
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import math
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from audio2lp.media.atomic import atomic_output
from audio2lp.models.motion import EYE_DIMS, LIP_DIMS, MOTION_DIM
from audio2lp.models.motion_model import (
    MotionModel,
    MotionModelConfig,
    save_motion_model,
    scheduled_sampling_inputs,
)
from lp_renderer.errors import InputError
from training.common import pearson, split_by_speaker, write_text_atomic

from .config import MotionTrainConfig, save_config
from .dataset import Dataset

log = logging.getLogger(__name__)

__all__ = ["CKPT_FORMAT", "METRIC_COLUMNS", "PeerFailed", "Trainer", "TrainResult", "train", "split_train_val",
           "batch_plan", "lr_factor", "ss_probability", "latest_checkpoint"]

CKPT_FORMAT = "audio2lp-train-checkpoint-v1"
MODEL_FILE = "motion_model.safetensors"
METRIC_COLUMNS = ["step", "time", "lr", "ss_prob", "loss", "loss_motion", "loss_velocity", "val_loss",
                  "val_motion_l2", "val_lip_l2", "val_velocity_err", "val_lip_corr"]


class PeerFailed(InputError):
    """Another process of a distributed run failed; this one stopped with it (see :meth:`Trainer._together`)."""


@dataclass
class TrainResult:
    model_path: Path
    steps: int
    metrics: dict  # the last validation metrics (empty without validation)


# -- pure functions of the config ---------------------------------------------------------------------


def lr_factor(step: int, cfg: MotionTrainConfig) -> float:
    """Multiplier of ``optim.lr`` for optimiser step ``step`` (0-based)."""
    s = cfg.schedule
    if s.warmup_steps > 0 and step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    if s.kind == "constant":
        return 1.0
    progress = min(1.0, (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps))
    if s.kind == "linear":
        return 1.0 - (1.0 - s.min_lr_ratio) * progress
    return s.min_lr_ratio + (1.0 - s.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def ss_probability(step: int, cfg: MotionTrainConfig) -> float:
    """Scheduled-sampling probability at ``step``: 0 before ``start_step``, then linear up to ``max_prob``."""
    sa = cfg.sampling
    if step < sa.start_step or sa.max_prob <= 0:
        return 0.0
    if sa.ramp_steps == 0:
        return sa.max_prob
    return sa.max_prob * min(1.0, (step - sa.start_step) / sa.ramp_steps)


def _seed_for(*parts: int) -> int:
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(1, np.uint64)[0] % (2 ** 63))


def batch_plan(step: int, seed: int, window: int, frames: list[int], batch: int) -> list[tuple[int, int]]:
    """The global batch of ``step``: ``batch`` pairs ``(position in frames, start frame)``; a pure function."""
    rng = np.random.default_rng([int(seed), int(step), 7919])
    positions = np.array([max(1, t - window + 1) for t in frames], dtype=np.float64)
    clips = rng.choice(len(frames), size=batch, p=positions / positions.sum())
    return [(int(c), int(rng.integers(0, positions[c]))) for c in clips]


def split_train_val(ds: Dataset, cfg: MotionTrainConfig) -> tuple[list[int], list[int], dict[str, int]]:
    """``(train indices, validation indices, speaker -> style id)``, split by speaker.

    Clips without a speaker count as a speaker of their own. ``data.val_speakers`` names the validation
    speakers; otherwise a ``data.val_fraction`` share of the speakers (at least one when there are two or more,
    never all) is drawn with ``run.seed``.
    """
    groups: dict[str, list[int]] = {}
    for i, c in enumerate(ds.clips):
        key = c.get("speaker")
        groups.setdefault(f"speaker:{key}" if key is not None else f"clip:{c['id']}", []).append(i)
    names = sorted(groups)
    d = cfg.data
    if d.val_speakers:
        val_names = [f"speaker:{s}" for s in d.val_speakers]
        unknown = [s for s, n in zip(d.val_speakers, val_names) if n not in groups]
        if unknown:
            raise InputError(f"validation speaker(s) {unknown} are not in the dataset (its speakers: "
                             f"{ds.manifest.get('speakers')}); fix data.val_speakers.")
        if len(set(val_names)) == len(names):
            raise InputError("data.val_speakers names every speaker of the dataset, which leaves nothing to train "
                             "on; hold out fewer speakers.")
    elif d.val_fraction > 0 and len(names) >= 2:
        n_val = min(len(names) - 1, max(1, round(d.val_fraction * len(names))))
        order = np.random.default_rng([cfg.run.seed, 104729]).permutation(len(names))
        val_names = [names[i] for i in order[:n_val]]
    else:
        val_names = []
    group_of = {i: n for n, members in groups.items() for i in members}
    train, val = split_by_speaker(range(len(ds.clips)), val_names, group_of.__getitem__)
    speakers = sorted({ds.speaker(i) for i in train if ds.speaker(i) is not None}) if d.speaker_styles else []
    return train, val, {s: k for k, s in enumerate(speakers)}


def dim_weights(cfg: MotionTrainConfig) -> torch.Tensor:
    """Per-dimension loss weights (70,), normalised to mean 1."""
    lw = cfg.loss
    w = torch.full((MOTION_DIM,), float(lw.other_weight))
    w[63:] = lw.pose_weight
    w[list(EYE_DIMS)] = lw.eye_weight
    w[list(LIP_DIMS)] = lw.lip_weight
    if float(w.sum()) <= 0:
        raise InputError("all loss weights are 0; give at least one positive loss.*_weight.")
    return w * (MOTION_DIM / w.sum())


def window_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, w: torch.Tensor, velocity_weight: float
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(loss, motion part, velocity part)``, each the mean over windows of the per-window mean over real frames.

    pred, gt: (B, T, 70) normalised; mask: (B, T) 1 for real frames; w: (70,) dimension weights (mean 1).
    """
    err = ((pred - gt) ** 2 * w).mean(-1)  # (B, T)
    n = mask.sum(1).clamp(min=1)
    motion = ((err * mask).sum(1) / n).mean()
    vm = mask[:, 1:] * mask[:, :-1]
    verr = (((pred[:, 1:] - pred[:, :-1]) - (gt[:, 1:] - gt[:, :-1])) ** 2 * w).mean(-1)
    vel = ((verr * vm).sum(1) / vm.sum(1).clamp(min=1)).mean()
    return motion + velocity_weight * vel, motion, vel


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest ``RUN/checkpoints/step-*.pt``, or None."""
    files = sorted((Path(run_dir) / "checkpoints").glob("step-*.pt"))
    return files[-1] if files else None


def _torch_save_atomic(obj, path: Path) -> None:
    with atomic_output(path) as tmp:
        torch.save(obj, tmp)


def _rng_state() -> dict:
    st = np.random.get_state()
    return {"torch": torch.get_rng_state(), "numpy": [st[0], torch.from_numpy(st[1].astype(np.int64)), int(st[2]),
                                                        int(st[3]), float(st[4])],
            "python": random.getstate(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def _set_rng_state(st: dict) -> None:
    torch.set_rng_state(st["torch"])
    n = st["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    py = st["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    if st.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def _config_diff(a: dict, b: dict, prefix: str = "") -> list[tuple[str, object, object]]:
    """``(dotted key, value in a, value in b)`` for every leaf that differs."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _config_diff(va, vb, f"{prefix}{k}.")
        elif va != vb:
            out.append((f"{prefix}{k}", va, vb))
    return out


def _diff_text(diff: list[tuple[str, object, object]], n: int = 3) -> str:
    return "; ".join(f"{k}: {a!r} -> {b!r}" for k, a, b in diff[:n])


# Config keys that may change on resume without changing the result (schedule.steps is handled separately).
RESUME_FREE_KEYS = {"run.progress", "run.num_threads", "run.keep_checkpoints"}


def _broadcast(obj, src: int = 0):
    """``obj`` of rank ``src`` on every rank (pickled over the process group: only for our own processes)."""
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# -- the trainer --------------------------------------------------------------------------------------


class Trainer:
    """One training process (of ``world`` under ``torchrun``). See the module docstring.

    Args:
        dataset: a prepared dataset folder (``audio2lp-train prepare``).
        run_dir: the run folder (created). Must not hold checkpoints unless ``resume``.
        config: the training config (default :class:`MotionTrainConfig`). On resume it must equal the one the
            checkpoint was made with, except that ``schedule.steps`` may be raised (and the keys in
            ``RESUME_FREE_KEYS``, which do not change the result, may differ).
        resume: continue from the newest checkpoint in ``run_dir`` (a fresh start when there is none).
        progress: tqdm bar over steps (rank 0 only; also needs ``config.run.progress``).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) the process group is initialised here (NCCL on CUDA, gloo on CPU;
    chosen from each process's own ``run.device``) unless it already is. Every process then uses rank 0's
    config. Only rank 0 touches ``run_dir``: it checks and loads the checkpoint and broadcasts its state. Then the
    model is wrapped in DistributedDataParallel.
    """

    def __init__(self, dataset: str | os.PathLike, run_dir: str | os.PathLike,
                 config: MotionTrainConfig | None = None, *, resume: bool = False, progress: bool = True):
        import datetime

        import torch.distributed as dist

        self.cfg = cfg = config or MotionTrainConfig()
        self.run_dir = Path(run_dir)
        self._owns_group = False
        self._writer = None
        world_env = int(os.environ.get("WORLD_SIZE", "1"))
        use_cuda = cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available())
        if cfg.run.device == "cuda" and not torch.cuda.is_available():
            raise InputError("run.device is cuda but no CUDA device is available; use device auto or cpu.")
        if world_env > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=cfg.run.ddp_timeout))
            self._owns_group = True
        try:
            self._start(dataset, resume, progress, use_cuda)
        except BaseException:
            self.close()
            raise

    def _start(self, dataset, resume: bool, progress: bool, use_cuda: bool) -> None:
        """The rest of ``__init__`` (a failure closes the process group this trainer opened)."""
        import torch.distributed as dist

        cfg = self.cfg
        self.distributed = dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.distributed else 0
        self.world = dist.get_world_size() if self.distributed else 1
        if use_cuda:
            self.device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        if self.distributed:  # rank 0's config for all (RUN/config.yaml may exist only on rank 0's machine)
            ref = _broadcast(cfg.to_dict())
            if ref != cfg.to_dict():
                log.info("rank %d uses rank 0's config (its own differs: %s)", self.rank,
                         _diff_text(_config_diff(cfg.to_dict(), ref)))
                self.cfg = cfg = MotionTrainConfig.from_dict(ref, source="rank 0's config")
        self.is_main = self.rank == 0
        self.progress = progress and cfg.run.progress and self.is_main
        with self._together("while setting up"):
            self._build(dataset, resume)
        if self.distributed:  # every rank must read the same data (the batch plan indexes it)
            prints = [None] * self.world
            dist.all_gather_object(prints, self._fingerprint)
            if len(set(prints)) > 1:
                raise InputError(f"the dataset differs between the processes (fingerprints by rank: "
                                 f"{', '.join(prints)}; this is rank {self.rank}, reading {self.ds.root}); give every "
                                 f"process a copy of the same prepared dataset.")
        self._setup_run_dir(resume)  # loads the checkpoint into model / optimiser before DDP wraps the model
        self.net = self.model
        if self.distributed:
            from torch.nn.parallel import DistributedDataParallel as DDP

            # no buffer broadcast: the only buffer is the constant PPE, and a forward pass without collectives can
            # fail on one rank without leaving the others in a collective (see _together)
            self.net = DDP(self.model, device_ids=[self.device.index] if use_cuda else None, broadcast_buffers=False)

    def _build(self, dataset, resume: bool) -> None:
        """Dataset, split, model, optimiser and counters (no collectives: may fail on one rank alone)."""
        cfg = self.cfg
        if cfg.run.num_threads > 0:  # part of the run's config, settled by rank 0's copy under DDP (see above)
            torch.set_num_threads(cfg.run.num_threads)
        if cfg.data.batch_size % self.world:
            raise InputError(f"data.batch_size {cfg.data.batch_size} is not divisible by the {self.world} processes; "
                             f"use a multiple of {self.world}.")
        self.ds = Dataset(dataset, preload=cfg.data.preload)
        self._fingerprint = self.ds.fingerprint()
        self.stats = self.ds.stats
        self.train_idx, self.val_idx, self.style_map = split_train_val(self.ds, cfg)
        if not self.train_idx:
            raise InputError(f"no training clips are left in {dataset} after the validation split; lower "
                             f"data.val_fraction or add clips.")
        if not self.val_idx:
            log.warning("no validation clips (the dataset has a single speaker/clip group, or val_fraction is 0); "
                        "validation metrics are skipped")
        self.lip_direction = self.ds.lip_direction(self.train_idx)
        d = cfg.data
        self.seq_len = d.context + d.window  # training windows: the longest sequence a generation window decodes
        self.model_config = MotionModelConfig(
            audio_dim=self.ds.audio_dim, whisper_model=self.ds.whisper_model, whisper_layers=self.ds.whisper_layers,
            d_model=cfg.model.d_model, n_heads=cfg.model.n_heads, n_layers=cfg.model.n_layers,
            ff_mult=cfg.model.ff_mult, dropout=cfg.model.dropout, period=cfg.model.period,
            n_styles=max(1, len(self.style_map)), window=d.window, overlap=d.overlap, context=d.context)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.run.seed)
            self.model = MotionModel(self.model_config).to(self.device)
        o = cfg.optim
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=o.lr, betas=tuple(o.betas), eps=o.eps,
                                           weight_decay=o.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: lr_factor(s, self.cfg))
        self.weights = dim_weights(cfg).to(self.device)
        self.step = 0
        self._acc = {"n": 0, "loss": 0.0, "loss_motion": 0.0, "loss_velocity": 0.0}
        self._t0 = time.time()
        self.last_val: dict = {}
        self._resume = resume
        self.start_step = 0  # the step this process started from (the checkpoint's on resume)
        self._frames = [self.ds.frames(i) for i in self.train_idx]
        self._val_windows = self._plan_val_windows()

    # -- failing together -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _together(self, what: str):
        """Run the block, then (under DDP) tell every rank whether it failed on any rank.

        Every rank must enter the same blocks in the same order, and a block must hold no collective. A rank whose
        block raised re-raises its own exception; the others raise :class:`PeerFailed` naming the failed rank, what
        it was doing and its error. So one rank's exception ends every rank at once instead of leaving the others
        waiting in the next collective.
        """
        error: Exception | None = None
        try:
            yield
        except Exception as e:  # re-raised below, after the others know
            error = e
        if self.distributed:
            import torch.distributed as dist

            dev = self.device if self.device.type == "cuda" else torch.device("cpu")
            flag = torch.tensor([0 if error is None else 1], dtype=torch.int32, device=dev)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
            if int(flag.item()) and error is None:
                texts: list = [None] * self.world
                dist.all_gather_object(texts, None)
                rank, text = next((r, t) for r, t in enumerate(texts) if t is not None)
                raise PeerFailed(f"process {rank} failed {what} ({text}); this process (rank {self.rank}) stopped "
                                 f"too. Fix that process's problem and start again (with --resume to continue).")
            if error is not None:
                texts = [None] * self.world
                dist.all_gather_object(texts, f"{type(error).__name__}: {error}")
        if error is not None:
            raise error

    # -- run folder, checkpoints ----------------------------------------------------------------------

    def _setup_run_dir(self, resume: bool) -> None:
        """Rank 0 checks ``run_dir`` and reads the checkpoint to resume from, then writes ``config.yaml`` and
        ``run.json``; every rank gets the verdict (an InputError message) and the checkpoint state from it."""
        state, error, failure = None, None, None
        if self.is_main:
            try:
                state = self._read_resume_state(resume)
                self._write_run_files()
            except InputError as e:
                error = str(e)
            except Exception as e:  # e.g. the run folder cannot be written: the other ranks must not wait for it
                failure = e
                error = f"process 0 failed while preparing the run folder {self.run_dir} ({type(e).__name__}: {e})"
        if self.distributed:
            error, state = _broadcast((error, None if error else state))
        if failure is not None:
            raise failure
        if error is not None:
            raise (PeerFailed if error.startswith("process 0 failed") else InputError)(error)
        if state is not None:
            self._apply_checkpoint(state)
        if self.is_main:
            self._truncate_csv(self.step)

    def _check_resume_config(self, saved: dict, where: str, at_step: int) -> None:
        """InputError unless ``self.cfg`` may continue a run made with ``saved`` (a config dict) at ``at_step``."""
        diff = [d for d in _config_diff(saved, self.cfg.to_dict()) if d[0] not in RESUME_FREE_KEYS]
        other = [d for d in diff if d[0] != "schedule.steps"]
        if other:
            raise InputError(f"the config differs from the one {where} was made with ({_diff_text(other)}); resume "
                             f"with the same config (only schedule.steps may be raised) or start a new run.")
        if diff:
            old, new = diff[0][1], diff[0][2]
            if new < old:
                raise InputError(f"schedule.steps can only be raised on resume ({old} -> {new}); resume with "
                                 f"schedule.steps >= {old} or start a new run.")
            if at_step > 0:
                log.warning("schedule.steps raised from %d to %d on resume: the learning-rate schedule is recomputed "
                            "over %d steps (stretched; at step %d the factor goes from %.4g to %.4g), so the result "
                            "differs from an uninterrupted run of either length", old, new, new, at_step,
                            lr_factor(at_step, MotionTrainConfig.from_dict(saved)), lr_factor(at_step, self.cfg))

    def _read_resume_state(self, resume: bool) -> dict | None:
        """Rank 0: the checkpoint dict to continue from (validated), or None for a fresh start."""
        ckpt = latest_checkpoint(self.run_dir) if self.run_dir.is_dir() else None
        if ckpt is not None and not resume:
            raise InputError(f"the run folder {self.run_dir} already holds checkpoints; pass --resume to continue "
                             f"it, or choose a new folder.")
        if not resume:
            return None
        if ckpt is None:  # killed before its first checkpoint: a fresh start, with the same config
            saved = self.run_dir / "config.yaml"
            if saved.is_file():
                from .config import load_config

                self._check_resume_config(load_config(saved).to_dict(), str(self.run_dir), 0)
            return None
        try:
            ck = torch.load(ckpt, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file (cannot happen with atomic writes unless the disk is broken)
            raise InputError(f"checkpoint {ckpt} is unreadable ({e}); delete it to resume from an older one.") from None
        if not isinstance(ck, dict) or ck.get("format") != CKPT_FORMAT:
            raise InputError(f"{ckpt} is not an audio2lp training checkpoint; delete it or start a new run.")
        if ck["model_config"] != self.model_config.to_dict():
            diff = _config_diff(ck["model_config"], self.model_config.to_dict())
            raise InputError(f"{ckpt} was made for another model or dataset ({_diff_text(diff, 2)}); resume with "
                             f"the same dataset and config.")
        self._check_resume_config(ck["config"], str(ckpt), int(ck["step"]))
        return ck

    def _write_run_files(self) -> None:
        """Rank 0: create ``run_dir`` and write ``config.yaml`` and ``run.json``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        (self.run_dir / "checkpoints").mkdir(exist_ok=True)
        for stale in (self.run_dir / "checkpoints").glob(".step-*.part-*"):  # a kill during a checkpoint write
            stale.unlink(missing_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        info = {"dataset": str(self.ds.root.resolve()),
                "train_clips": [self.ds.clips[i]["id"] for i in self.train_idx],
                "val_clips": [self.ds.clips[i]["id"] for i in self.val_idx], "speakers": self.style_map,
                "world_size": self.world, "model_config": self.model_config.to_dict()}
        write_text_atomic(self.run_dir / "run.json", json.dumps(info, indent=1))

    def _apply_checkpoint(self, ck: dict) -> None:
        """Load a checkpoint dict (validated by rank 0) into this process's model, optimiser and scheduler."""
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.step = self.start_step = int(ck["step"])
        if ck["config"]["schedule"]["steps"] != self.cfg.schedule.steps:  # the lr of this step, on the new schedule
            for group, base in zip(self.optimizer.param_groups, self.scheduler.base_lrs):
                group["lr"] = base * lr_factor(self.step, self.cfg)
            self.scheduler._last_lr = [g["lr"] for g in self.optimizer.param_groups]
        self._acc = dict(ck["log_acc"])
        self.last_val = dict(ck.get("last_val", {}))
        _set_rng_state(ck["rng"])
        log.info("resumed %s at step %d", self.run_dir, self.step)

    def save_checkpoint(self) -> Path | None:
        """Rank 0: write ``checkpoints/step-XXXXXXXX.pt`` atomically and prune old ones. Returns its path."""
        if not self.is_main:
            return None
        ck = {"format": CKPT_FORMAT, "step": self.step, "model": self.model.state_dict(),
              "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
              "rng": _rng_state(), "config": self.cfg.to_dict(), "model_config": self.model_config.to_dict(),
              "stats": self.stats.to_dict(), "speakers": self.style_map, "log_acc": dict(self._acc),
              "last_val": dict(self.last_val)}
        path = self.run_dir / "checkpoints" / f"step-{self.step:08d}.pt"
        _torch_save_atomic(ck, path)
        for old in sorted((self.run_dir / "checkpoints").glob("step-*.pt"))[:-self.cfg.run.keep_checkpoints]:
            old.unlink(missing_ok=True)
        log.debug("wrote checkpoint %s", path)
        return path

    # -- data -------------------------------------------------------------------------------------------

    def style_of(self, i: int) -> int:
        return self.style_map.get(self.ds.speaker(i), 0)

    def _tensors(self, items: list[tuple[int, int]], n: int):
        """Windows ``(clip index, start)`` -> audio (b, 2n, D), normalised relative motion (b, n, 70), mask (b, n):
        1 on valid frames, 0 on masked and padded ones, style (b,)."""
        D = self.ds.audio_dim
        audio = np.zeros((len(items), 2 * n, D), np.float32)
        motion = np.zeros((len(items), n, MOTION_DIM), np.float32)
        mask = np.zeros((len(items), n), np.float32)
        style = np.zeros(len(items), np.int64)
        for k, (i, start) in enumerate(items):
            m, a, valid = self.ds.window(i, start, n)
            t = m.shape[0]
            motion[k, :t] = self.stats.normalize(m)
            audio[k, :a.shape[0]] = a
            if a.shape[0] < 2 * n:  # pad with the last token
                audio[k, a.shape[0]:] = a[-1]
            mask[k, :t] = valid
            style[k] = self.style_of(i)
        dev = self.device
        return (torch.from_numpy(audio).to(dev), torch.from_numpy(motion).to(dev), torch.from_numpy(mask).to(dev),
                torch.from_numpy(style).to(dev))

    def rank_batch(self, step: int) -> list[tuple[int, int]]:
        """This rank's windows ``(dataset clip index, start)`` for ``step``."""
        plan = batch_plan(step, self.cfg.run.seed, self.seq_len, self._frames, self.cfg.data.batch_size)
        per = self.cfg.data.batch_size // self.world
        mine = plan[self.rank * per:(self.rank + 1) * per]
        return [(self.train_idx[p], s) for p, s in mine]

    # -- one step ---------------------------------------------------------------------------------------

    def compute_loss(self, step: int) -> tuple[torch.Tensor, dict]:
        """Seed the RNGs for ``step``, build this rank's batch and return its loss (with graph) and parts."""
        torch.manual_seed(_seed_for(self.cfg.run.seed, step, self.rank))
        audio, gt, mask, style = self._tensors(self.rank_batch(step), self.seq_len)
        p = ss_probability(step, self.cfg)
        inputs = gt
        if p > 0:  # two-pass scheduled sampling (module docstring): pass 1 teacher forced, no gradient
            with torch.no_grad():
                pred0 = self.model(audio, gt, style)
            gen = torch.Generator(device=gt.device).manual_seed(_seed_for(self.cfg.run.seed, step, self.rank, 1))
            inputs = scheduled_sampling_inputs(gt, pred0, p, gen)
        pred = self.net(audio, inputs, style)
        loss, lm, lv = window_loss(pred, gt, mask, self.weights, self.cfg.loss.velocity_weight)
        return loss, {"loss": float(loss.detach()), "loss_motion": float(lm.detach()),
                      "loss_velocity": float(lv.detach()), "ss_prob": p}

    def train_step(self) -> dict:
        """One optimiser step (all ranks); returns this rank's loss parts."""
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self._together(f"in training step {self.step + 1}"):  # the backward pass is a collective under DDP
            loss, parts = self.compute_loss(self.step)
            if not torch.isfinite(loss):
                raise RuntimeError(f"the training loss became {float(loss)} at step {self.step + 1}; lower optim.lr")
        loss.backward()
        if self.cfg.optim.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.optim.grad_clip)
        parts["lr"] = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        return parts

    # -- validation -------------------------------------------------------------------------------------

    def _plan_val_windows(self) -> list[tuple[int, int, int]]:
        """Deterministic validation windows ``(clip, start, length)``, round-robin over the clips."""
        per_clip = []
        W = self.cfg.data.val_window
        for i in self.val_idx:
            T = self.ds.frames(i)
            if T < W:
                per_clip.append([(i, 0, T)])
            else:
                per_clip.append([(i, s, W) for s in range(0, T - W + 1, W)])
        out, k = [], 0
        while len(out) < self.cfg.data.val_max_windows and any(k < len(c) for c in per_clip):
            out += [c[k] for c in per_clip if k < len(c)]
            k += 1
        return out[:self.cfg.data.val_max_windows]

    @torch.no_grad()
    def validate(self) -> dict:
        """Validation metrics (see the module docstring); {} without validation clips. Rank 0 only.

        The predictions are :meth:`MotionModel.rollout`, the call ``speak`` makes (noise 0), on each segment's audio;
        every metric counts the segment's valid frames only."""
        if not self._val_windows:
            return {}
        self.model.eval()
        by_len: dict[int, list[tuple[int, int]]] = {}
        for i, s, n in self._val_windows:
            by_len.setdefault(n, []).append((i, s))
        w = self.weights
        sq, lip, vel, losses, n_frames, n_vel, n_win = 0.0, 0.0, 0.0, 0.0, 0, 0, 0
        open_pred, open_true = [], []
        d = torch.from_numpy(self.lip_direction).to(self.device)
        std = torch.from_numpy(self.stats.std.copy()).to(self.device)
        lip_dims = list(LIP_DIMS)
        L = self.seq_len
        for n, items in sorted(by_len.items()):
            for b in range(0, len(items), 16):
                chunk = items[b:b + 16]
                audio, gt, mask, style = self._tensors(chunk, n)
                tf = self.model(audio[:, :2 * L], gt[:, :L], style)
                losses += float(window_loss(tf, gt[:, :L], mask[:, :L], w, self.cfg.loss.velocity_weight)[0]) \
                    * len(chunk)
                pred = torch.as_tensor(self.model.rollout(audio, style, n_frames=n), device=self.device)
                m = mask.bool()
                sq += float((pred - gt).norm(dim=-1)[m].sum())
                lip += float(((pred - gt)[..., lip_dims] * std[lip_dims]).norm(dim=-1)[m].sum())
                vm = m[:, 1:] & m[:, :-1]
                vel += float(((pred[:, 1:] - pred[:, :-1]) - (gt[:, 1:] - gt[:, :-1])).norm(dim=-1)[vm].sum())
                open_pred.append((pred @ d)[m].cpu().numpy())
                open_true.append((gt @ d)[m].cpu().numpy())
                n_frames += int(m.sum())
                n_vel += int(vm.sum())
                n_win += len(chunk)
        self.model.train()
        n_frames = max(1, n_frames)
        return {"val_loss": losses / n_win, "val_motion_l2": sq / n_frames, "val_lip_l2": lip / n_frames,
                "val_velocity_err": vel / max(1, n_vel),
                "val_lip_corr": pearson(np.concatenate(open_pred), np.concatenate(open_true))}

    # -- logging ----------------------------------------------------------------------------------------

    def _truncate_csv(self, step: int) -> None:
        """Keep only the rows of steps <= ``step`` (rows written after the checkpoint a resume starts from)."""
        path = self.run_dir / "metrics.csv"
        if not path.is_file():
            return
        with open(path, newline="", encoding="utf-8") as f:
            rows = [r for r in csv.DictReader(f) if r.get("step") and int(r["step"]) <= step]
        self._write_csv(path, rows)

    @staticmethod
    def _write_csv(path: Path, rows: list[dict]) -> None:
        with atomic_output(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
            wr = csv.DictWriter(f, METRIC_COLUMNS)
            wr.writeheader()
            wr.writerows(rows)

    def _log_row(self, row: dict) -> None:
        path = self.run_dir / "metrics.csv"
        new = not path.is_file()
        with open(path, "a", newline="", encoding="utf-8") as f:
            wr = csv.DictWriter(f, METRIC_COLUMNS)
            if new:
                wr.writeheader()
            wr.writerow({k: row.get(k, "") for k in METRIC_COLUMNS})
        if self.cfg.run.tensorboard:
            if self._writer is None:
                from torch.utils.tensorboard import SummaryWriter

                # on resume, hide the events a killed run wrote after the checkpoint we continue from
                self._writer = SummaryWriter(str(self.run_dir / "tensorboard"),
                                             purge_step=self.start_step + 1 if self._resume else None)
            for k, v in row.items():
                if k not in ("step", "time") and v != "" and v is not None:
                    tag = f"val/{k[4:]}" if k.startswith("val_") else f"train/{k}"
                    self._writer.add_scalar(tag, float(v), int(row["step"]))
            self._writer.flush()

    def plot_curves(self) -> Path | None:
        """Rank 0: ``RUN/curves.png`` with the training and validation curves from ``metrics.csv``."""
        path = self.run_dir / "metrics.csv"
        if not self.is_main or not path.is_file():
            return None
        import matplotlib

        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))

        def series(key):
            pts = [(int(r["step"]), float(r[key])) for r in rows if r.get(key) not in ("", None)]
            return ([p[0] for p in pts], [p[1] for p in pts])

        fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4))
        for key, label in (("loss", "train loss"), ("val_loss", "val loss (teacher forced)"),
                           ("val_motion_l2", "val motion L2 (rollout)")):
            x, y = series(key)
            if x:
                a1.plot(x, y, label=label, marker="o" if key != "loss" else None, ms=3)
        a1.set_yscale("log")
        a1.set_xlabel("step")
        if a1.lines:
            a1.legend()
        a1.set_title("losses")
        x, y = series("val_lip_corr")
        if x:
            a2.plot(x, y, marker="o", ms=3, label="val lip-opening corr")
        a2.set_xlabel("step")
        a2.set_ylim(-1, 1)
        if a2.lines:
            a2.legend()
        a2.set_title("validation lip-opening correlation")
        fig.tight_layout()
        out = self.run_dir / "curves.png"
        try:
            with atomic_output(out) as tmp:
                fig.savefig(tmp, dpi=80)
        finally:
            plt.close(fig)
        return out

    def _reduce_acc(self) -> dict:
        vals = torch.tensor([self._acc["loss"], self._acc["loss_motion"], self._acc["loss_velocity"],
                             float(self._acc["n"])], dtype=torch.float64)
        if self.distributed:
            import torch.distributed as dist

            t = vals.to(self.device)
            dist.all_reduce(t)
            vals = t.cpu() / self.world
        n = max(vals[3].item(), 1.0)
        return {"loss": vals[0].item() / n, "loss_motion": vals[1].item() / n, "loss_velocity": vals[2].item() / n}

    # -- the loop ---------------------------------------------------------------------------------------

    def extra(self) -> dict:
        """The ``extra`` metadata of the final model file (see ``training/__init__.py``)."""
        return {"fps": 25, "speakers": self.style_map, "default_style": 0,
                "lip_direction": [float(x) for x in self.lip_direction],
                "dataset": {"path": str(self.ds.root.resolve()), "n_clips": len(self.ds),
                            "n_frames": int(self.ds.manifest["n_frames"]),
                            "train_clips": len(self.train_idx), "val_clips": len(self.val_idx),
                            "whisper_model": self.ds.whisper_model, "whisper_layers": self.ds.whisper_layers,
                            "settings": self.ds.manifest.get("settings", {})},
                "train": {"steps": self.step, "world_size": self.world, "config": self.cfg.to_dict()},
                "val": self.last_val}

    def run(self) -> TrainResult:
        """Train up to ``schedule.steps``, with checkpoints, logs and validation; returns the final model path."""
        cfg = self.cfg
        total = cfg.schedule.steps
        bar = tqdm(total=total, initial=self.step, desc="train", unit="step", disable=not self.progress,
                   dynamic_ncols=True)
        try:
            while self.step < total:
                parts = self.train_step()
                for k in ("loss", "loss_motion", "loss_velocity"):
                    self._acc[k] += parts[k]
                self._acc["n"] += 1
                s = self.step
                bar.update(1)
                is_last = s == total
                row = None
                if s % cfg.run.log_every == 0 or is_last:
                    row = {"step": s, "time": round(time.time() - self._t0, 3), "lr": parts["lr"],
                           "ss_prob": parts["ss_prob"], **self._reduce_acc()}
                    self._acc = {"n": 0, "loss": 0.0, "loss_motion": 0.0, "loss_velocity": 0.0}
                    bar.set_postfix(loss=f"{row['loss']:.4f}")
                do_val = (cfg.run.val_every and s % cfg.run.val_every == 0) or is_last
                do_ckpt = s % cfg.run.checkpoint_every == 0 or is_last
                if row is not None or do_val or do_ckpt:  # rank 0's work; every rank learns whether it failed
                    with self._together(f"at step {s} (validation, logs or checkpoint)"):
                        if self.is_main:
                            self._main_work(s, parts, row, do_val, do_ckpt)
        finally:
            bar.close()
            if self._writer is not None:
                self._writer.close()
                self._writer = None
        model_path = self.run_dir / MODEL_FILE
        with self._together("while writing the model"):
            if self.is_main:
                save_motion_model(model_path, self.model, self.stats, self.extra())
                self.plot_curves()
        return TrainResult(model_path, self.step, dict(self.last_val))

    def _main_work(self, s: int, parts: dict, row: dict | None, do_val: bool, do_ckpt: bool) -> None:
        """Rank 0 after step ``s``: validation, the metrics row and curves, the checkpoint."""
        if do_val and self._val_windows:
            self.last_val = self.validate()
            row = row or {"step": s, "time": round(time.time() - self._t0, 3), "lr": parts["lr"],
                          "ss_prob": parts["ss_prob"]}
            row.update(self.last_val)
            log.info("step %d: %s", s, ", ".join(f"{k} {v:.4g}" for k, v in self.last_val.items()))
        if row is not None:
            self._log_row(row)
        if do_val:
            self.plot_curves()
        if do_ckpt:
            self.save_checkpoint()

    def close(self) -> None:
        if self._owns_group:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()
            self._owns_group = False


def train(dataset: str | os.PathLike, run_dir: str | os.PathLike, config: MotionTrainConfig | None = None, *,
          resume: bool = False, progress: bool = True) -> TrainResult:
    """Train a motion model on ``dataset`` into ``run_dir`` (see :class:`Trainer`); returns the result."""
    t = Trainer(dataset, run_dir, config, resume=resume, progress=progress)
    try:
        return t.run()
    finally:
        t.close()
