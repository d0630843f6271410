"""The front doors: the ``audio2lp`` command (:mod:`.cli`), the HTTP service (:mod:`.server`), the web app
(:mod:`.webapp`), the installation check (:mod:`.doctor`) and the weights commands (:mod:`.weights_cmd`).

Only this package parses arguments, prints, exits, configures logging or sets process state (threads, environment,
allocator); everything else is a library that raises :class:`lp_renderer.errors.InputError`."""
