"""Distillation: the loss (paper §4, Eq. 2 and 3), teachers by name with their checkpoints and
input statistics (``teachers``), and the teacher's stored outputs (``cache``, ``memo``)."""
