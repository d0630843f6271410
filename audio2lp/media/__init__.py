"""Media input and output: audio (:mod:`.audio`), video probing, reading and writing (:mod:`.probe`, :mod:`.video`),
the one ffmpeg helper (:mod:`.ffmpeg`), the one atomic writer (:mod:`.atomic`) and the one background queue
(:mod:`.queue`)."""
