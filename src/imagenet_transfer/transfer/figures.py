"""Figure helpers shared by the benchmarks: matplotlib `Figure` objects, never pyplot.

    fig, ax = panel()                       # one 4.5×3.2 in panel, laid out tightly when saved
    fig = figure((15, 11), layout="constrained"); axes = fig.subplots(4, 5)

A `Figure` made directly belongs to no pyplot state: nothing to close, nothing leaks when a grid runs hundreds of
benchmarks in one process, and no GUI backend is touched. The runner saves each one with `mlflow.log_figure`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

PANEL = (4.5, 3.2)  # inches: one small plot of a benchmark's result


def figure(figsize: tuple[float, float] = PANEL, *, layout: str = "tight") -> Figure:
    """An empty pyplot-free Figure of `figsize` inches; `layout` ("tight", "constrained") is applied when drawn."""
    from matplotlib.figure import Figure

    return Figure(figsize=figsize, layout=layout)


def panel(figsize: tuple[float, float] = PANEL, *, layout: str = "tight") -> tuple[Figure, Axes]:
    """A Figure holding one Axes."""
    fig = figure(figsize, layout=layout)
    return fig, fig.add_subplot()
