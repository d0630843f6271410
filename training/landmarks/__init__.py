"""The default motion model's training side: motion measured on real talking videos from face landmarks, and the
FaceFormer-style landmark motion model (:mod:`audio2lp.models.landmark_motion`) trained and measured on it.

- :mod:`training.landmarks.measure`: per 25 fps frame lip/eye ratios, head pose (two-solve PnP, LivePortrait's
  Euler convention), head translation and scale, smoothed and normalised per clip; works on any talking video;
- :mod:`training.landmarks.dataset`: the clips of the data folder, speakers (``SPEAKERS.tsv``), the held-out
  speakers, streaming Whisper features, per-clip audio offsets;
- :mod:`training.landmarks.metrics`: every figure of the model card (head std/speed/jitter, blinks, lips);
- :mod:`training.landmarks.train`: fits (read-out, transformer, blink and head processes, lip blend and pause
  closure by cross-validation on the training speakers) and the one command ``audio2lp-train default-motion``;
- :mod:`training.landmarks.evaluate`: the held-out table (model, today's lip model + sway, loudness baseline);
- :mod:`training.landmarks.card`: the model card.
"""
