"""Build versus buy: what an image costs self-hosted, what it would cost on a hosted API.

* :mod:`~pixelmill.cost.model` — the algebra (pure functions): cost curves, the crossover
  volume ``N*``, the dedicated-fleet step curve, the few-step what-if.
* :mod:`~pixelmill.cost.prices` — hosted price tables and the self-hosted configuration.
* :mod:`~pixelmill.cost.ledger` — turns the job store's ledger into a :class:`CostReport`.
* :mod:`~pixelmill.cost.scenario` — what-ifs on a report (the dashboard's sliders), computed
  by the same functions as the report's verdict.
* :mod:`~pixelmill.cost.invoice` — a hosted API's invoice (CSV) on the same curves.
* :mod:`~pixelmill.cost.plot` — the cost curves as a PNG (matplotlib, Agg).
* :mod:`~pixelmill.cost.alerts` — tell people when the trailing volume crosses ``N*``, and
  when a gateway model's flag ("move this model home", "below N*") appears.
* :mod:`~pixelmill.cost.gateway` — the gateway's spend by backend, counterfactuals and flags.

This package reads the ledger through :class:`~pixelmill.jobs.store.JobStore` only and
never imports the engine.
"""
