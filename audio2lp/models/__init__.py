"""The motion models: the 70-number motion layout, statistics and templates (:mod:`.motion`), the audio-to-motion
transformer (:mod:`.motion_model`), the built-in speech-to-mouth model (:mod:`.lipsync`) and blinks and idle head
motion (:mod:`.idle`)."""
