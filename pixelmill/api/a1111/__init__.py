"""The AUTOMATIC1111 web UI dialect: ``/sdapi/v1/*``, ``/internal/progress`` and ``/controlnet/*``.

Clients of A1111's API (webuiapi, SillyTavern, Open WebUI, LibreChat, …) talk to pixelmill
unchanged. Every generation is a pixelmill job (durable, batched, in the ledger): the wire
models (:mod:`.protocol`) translate into the one :class:`~pixelmill.core.types.GenerationRequest`
and the routes (:mod:`.router`, :mod:`.listing`) only call the job service and render
A1111's answers (:mod:`.render`). See ``docs/a1111.md``.
"""
