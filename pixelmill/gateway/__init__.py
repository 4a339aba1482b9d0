"""The gateway: serve some models from upstream APIs (hosted or another pixelmill).

``config`` (the ``--backends`` file), ``routing`` (pure decisions), ``dispatch`` (the
submit side, behind ``jobs.service.Router``), ``clients`` (Replicate and OpenAI kinds),
``worker`` (the upstream worker: durable jobs, resumable predictions). See docs/gateway.md.
"""
