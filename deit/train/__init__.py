"""Training: settings and recipes (``settings``, ``recipes/``), a run's length (``budget``), the
optimiser (``optim``), one epoch and evaluation (``engine``), a whole run (``run``: set-up,
resume, epochs, checkpoints), its records (``run_log``), DDP (``distributed``), the process's
runtime settings (``runtime``) and filling the teacher cache ahead of a run (``cache_fill``)."""
