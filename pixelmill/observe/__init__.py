"""Operations: Prometheus metric families and structured logs, free of any framework.

``metrics.py`` defines what pixelmill measures (jobs, HTTP, engine caches, the queue) as
plain objects the jobs layer, the engine and the API record into; ``logs.py`` is the log
context (request id, job ids) and the JSON formatter. Nothing here imports another room
of pixelmill, a web framework or the database (import-linter checks it): the API renders
``/metrics`` (:mod:`pixelmill.api.metrics`), the jobs room reads the store.
"""
