"""Training: settings and recipes (``settings``, ``recipes/``), a run's length (``budget``), the
optimiser (``optim``), one epoch and evaluation (``engine``), a whole run (``run``: set-up,
resume, epochs, checkpoints), what a Python caller gives a run in place of names
(``python_inputs``: teacher and student modules, torch Datasets), its records (``run_log``),
DDP (``distributed``), the process's runtime settings (``runtime``) and filling the teacher
cache ahead of a run (``cache_fill``)."""
