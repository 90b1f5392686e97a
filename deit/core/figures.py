"""Figures drawn without pyplot, so a library call never switches a notebook's backend.

``matplotlib.use("Agg")`` in library code changes the process-wide backend of whoever
imported us; a :class:`matplotlib.figure.Figure` attached to its own Agg canvas renders to
PNG and leaves pyplot's state (backend, current figure, open-figure list) untouched —
the way matplotlib's documentation recommends for web servers ("Embedding in a web
application server").
"""
from __future__ import annotations

from typing import Any

__all__ = ["new_figure"]


def new_figure(**kwargs: Any) -> Any:
    """A ``matplotlib.figure.Figure(**kwargs)`` on an Agg canvas; freed with its last reference."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(**kwargs)
    FigureCanvasAgg(figure)
    return figure
