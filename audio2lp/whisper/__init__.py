"""Whisper encoder features (:mod:`.features`) and the checkpoint plumbing behind them: reading CTranslate2 Whisper
models shipped by Python packages (:mod:`.ct2`) and converting them to openai-whisper checkpoints
(:mod:`.convert`)."""
