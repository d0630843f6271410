"""The trainer of the built-in lip-sync model (:mod:`audio2lp.models.lipsync`): the data of real talking clips
(:mod:`.data`) and training, evaluation, model card and metrics (:mod:`.train`, :class:`~.train.LipSyncTrainConfig`)."""
