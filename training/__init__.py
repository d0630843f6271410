"""Training audio2lp's models; its own command is ``audio2lp-train`` (:mod:`training.cli`, also
``python -m training``). The product (:mod:`audio2lp`) never imports this package.

- :mod:`training.motion`: the audio-to-motion model: ``prepare`` (videos -> shards + manifest,
  :mod:`training.motion.prepare`), the dataset format (:mod:`training.motion.dataset`), the configuration
  (:class:`training.motion.config.MotionTrainConfig`, YAML / TOML) and ``train`` (:mod:`training.motion.trainer`:
  checkpoints, resume, DDP, logs, validation);
- :mod:`training.lipsync`: the built-in lip-sync model: its data (:mod:`training.lipsync.data`) and ``lipsync``
  (:mod:`training.lipsync.train`: training, held-out metrics, model card);
- :mod:`training.common`: what both share (speaker split, Pearson's r, atomic text files).

The final model file ``RUN/motion_model.safetensors`` is written by
:func:`audio2lp.models.motion_model.save_motion_model`. Its metadata, as read by
:func:`audio2lp.models.motion_model.read_motion_model_metadata`:

- ``config`` (:class:`~audio2lp.models.motion_model.MotionModelConfig`): ``whisper_model`` and ``whisper_layers``
  (text, parse with :func:`audio2lp.whisper.features.parse_whisper_layers` and pass to
  ``WhisperEncoder.encode(layers=...)``), ``audio_dim``, ``n_styles``;
- ``stats`` (:class:`~audio2lp.models.motion.MotionStats`): pass as ``stats=`` to ``MotionModel.generate`` to get
  motion in LivePortrait units;
- ``extra``: ``fps`` (25), ``speakers`` (speaker name -> style id), ``default_style`` (0), ``lip_direction``
  (70 numbers), ``dataset`` and ``train`` facts, ``val`` (last validation metrics).

This package imports nothing heavy at import time.
"""
