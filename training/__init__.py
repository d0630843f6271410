"""Dataset preparation and training of the audio-to-motion model.

- :mod:`training.prepare`: ``audio2lp prepare`` (videos -> shards + manifest);
- :mod:`training.dataset`: the dataset format, reading windows, writing synthetic datasets;
- :mod:`training.config`: :class:`~training.config.TrainConfig` (YAML / TOML);
- :mod:`training.trainer`: ``audio2lp train`` (checkpoints, resume, DDP, logs, validation);
- :mod:`training.cli`: the two subcommands (``add_prepare_parser`` / ``add_train_parser``) and
  ``run_command``, which runs them for ``audio2lp`` and ``python -m training`` alike.

The final model file ``RUN/motion_model.safetensors`` is written by
:func:`audio2lp.motion_model.save_motion_model`. Its metadata, as read by
:func:`audio2lp.motion_model.read_motion_model_metadata`:

- ``config`` (:class:`~audio2lp.motion_model.MotionModelConfig`): ``whisper_model`` and ``whisper_layers`` (text,
  parse with :func:`training.dataset.parse_whisper_layers` and pass to ``WhisperEncoder.encode(layers=...)``),
  ``audio_dim``, ``n_styles``;
- ``stats`` (:class:`~audio2lp.motion.MotionStats`): pass as ``stats=`` to ``MotionModel.generate`` to get
  motion in LivePortrait units;
- ``extra``: ``fps`` (25), ``speakers`` (speaker name -> style id), ``default_style`` (0), ``lip_direction``
  (70 numbers), ``dataset`` and ``train`` facts, ``val`` (last validation metrics).

This package imports nothing heavy at import time.
"""
