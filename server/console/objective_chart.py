"""The tuning page's chart of the objective over time, laid out on the server for an inline SVG.

Each trial with a final objective value is a dot at its TrainingEndTime; the best-so-far line steps from
dot to dot to the best value reached by then (lowest for Minimize, highest for Maximize). The geometry and
the CSS classes are those of static/chart.js, which draws the job page's metric charts in the browser: the
two kinds of chart look alike, and this one needs no script (the page is the same with scripts off, and a
test reads the points from the HTML).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from server.console.tuning_views import number
from server.console.views import epoch

# static/chart.js's viewBox and margins.
WIDTH, HEIGHT = 640, 220
LEFT, RIGHT, TOP, BOTTOM = 56, 12, 12, 30
EDGE = 0.04


@dataclass(frozen=True)
class Dot:
    trial: str
    x: float
    y: float
    value: str
    at: str
    best: bool


@dataclass(frozen=True)
class Tick:
    x: float
    y: float
    text: str
    anchor: str


@dataclass(frozen=True)
class ObjectiveChart:
    width: int
    height: int
    plot_left: int
    plot_right: int
    dots: list[Dot]
    best_line: str  # polyline points, "" with no dot
    grid: list[float]  # y of each horizontal grid line
    ticks: list[Tick]
    best_so_far: str  # the last best value, for the legend


def fmt(value: float) -> str:
    """chart.js's tick text: exponent form for the very small and very large, else up to 4 decimals."""
    size = abs(value)
    if size != 0 and (size < 0.001 or size >= 1e6):
        return f"{value:.2e}"
    rounded = round(value, 4)
    return str(int(rounded)) if rounded == int(rounded) else str(rounded)


def clock(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds).astimezone().strftime("%H:%M:%S")


def finished(trials: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(end time, final objective value, name) of each trial that has both, in end-time order."""
    found = []
    for trial in trials:
        value = (trial.get("FinalHyperParameterTuningJobObjectiveMetric") or {}).get("Value")
        end = epoch(trial.get("TrainingEndTime"))
        if value is not None and end is not None:
            found.append((end, float(value), trial["TrainingJobName"]))
    return sorted(found)


def objective_chart(trials: list[dict[str, Any]], direction: str, best_name: str | None) -> ObjectiveChart:
    points = finished(trials)
    if not points:
        return ObjectiveChart(WIDTH, HEIGHT, LEFT, WIDTH - RIGHT, [], "", [], [], "")
    t0, t1 = points[0][0], points[-1][0]
    v0, v1 = min(p[1] for p in points), max(p[1] for p in points)
    if t1 == t0:
        t0, t1 = t0 - 1, t1 + 1
    if v1 == v0:
        pad = abs(v0) * 0.1 or 1.0
        v0, v1 = v0 - pad, v1 + pad
    # A little room on every side: unlike chart.js's lines, these dots would otherwise sit on the axes' labels.
    t_pad, v_pad = (t1 - t0) * EDGE, (v1 - v0) * EDGE
    t0, t1, v0, v1 = t0 - t_pad, t1 + t_pad, v0 - v_pad, v1 + v_pad

    def x(t: float) -> float:
        return round(LEFT + (t - t0) / (t1 - t0) * (WIDTH - LEFT - RIGHT), 1)

    def y(v: float) -> float:
        return round(TOP + (v1 - v) / (v1 - v0) * (HEIGHT - TOP - BOTTOM), 1)

    minimize = direction != "Maximize"
    best: float | None = None
    line: list[tuple[float, float]] = []
    for end, value, _ in points:
        if best is None:
            best = value
            line.append((x(end), y(value)))
            continue
        if (value < best) if minimize else (value > best):
            line.append((x(end), y(best)))  # flat until the trial that did better, then down (or up) to it
            best = value
        line.append((x(end), y(best)))
    values = [v0, (v0 + v1) / 2, v1]
    ticks = [Tick(LEFT - 6, y(v) + 4, fmt(v), "end") for v in values]
    # The time axis is labelled where the first and the last trial ended.
    first, last = points[0][0], points[-1][0]
    ticks += [Tick(x(first), HEIGHT - 8, clock(first), "start"), Tick(x(last), HEIGHT - 8, clock(last), "end")]
    dots = [Dot(trial=name, x=x(end), y=y(value), value=number(value), at=clock(end), best=name == best_name)
            for end, value, name in points]
    return ObjectiveChart(WIDTH, HEIGHT, LEFT, WIDTH - RIGHT, dots, " ".join(f"{a},{b}" for a, b in line),
                          [y(v) for v in values], ticks, number(best))
