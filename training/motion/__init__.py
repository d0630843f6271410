"""The audio-to-motion trainer: dataset preparation (:mod:`.prepare`: talking-head videos -> shards), the dataset
format (:mod:`.dataset`), the training configuration (:mod:`.config`, :class:`~.config.MotionTrainConfig`) and the
trainer (:mod:`.trainer`: checkpoints, resume, DDP, logs, validation)."""
