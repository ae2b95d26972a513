"""Table interpolation in log space, with documented behaviour outside the measured grid.

A measured table is a set of points ``(g, x, w, t)``: ``t`` is a kernel's time, ``w`` its work (FLOPs,
causal query-key pairs, KV tokens or bytes, anything time grows with), ``x`` the variable its efficiency
depends on (GEMM rows ``m``, mean keys per query, KV length per request, bytes) and ``g`` an optional
group (the batch size of attention tables). Within a group the time per unit of work, ``t / w``, is
interpolated linearly in ``log x`` (for a fixed GEMM shape ``w`` is proportional to ``x``, so this is
plain log-log interpolation of time over ``m``). Between groups the log time is interpolated linearly in
``log g``.

Outside the grid (nearest-grid behaviour):

- above the largest ``x`` of a group the nearest grid point's efficiency is held: ``t = w * (t/w)_last``
  (big kernels are throughput-bound, so time grows with work);
- below the smallest ``x`` the smallest point's time is a floor and its efficiency a ceiling:
  ``t = max(t_first, w * (t/w)_first)`` (small kernels are latency-bound: a GEMM with fewer rows than
  the smallest measured one takes as long as it);
- outside the measured groups the nearest group is used.

At a grid point (same ``g``, ``x`` and ``w``) the table's own value is returned exactly.

**Model-guided tables.** A sparse table (the H200's four prefill-attention rows, 4x apart in sequence
length) interpolates poorly on its own. Given a *guide* (the family's fitted model, evaluated at every
row and at the query), a table interpolates the ratio ``t / guide`` instead of ``t / w`` and returns
``guide(query) * ratio``: the model supplies the curve's shape, the rows pin its level. At a grid point
this is still the table's value exactly; outside the grid the nearest point's ratio is held.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import defaultdict
from collections.abc import Iterable, Sequence


class LogCurve:
    """Times over one variable ``x``, interpolated as log(t / base) over log x (``base``: work or a guide)."""

    __slots__ = ("_b", "_guided", "_log_r", "_log_x", "_t", "_x")

    def __init__(self, points: Iterable[tuple[float, float, float]], guided: bool = False) -> None:
        merged: dict[float, list[tuple[float, float]]] = defaultdict(list)
        for x, base, t in points:
            if x <= 0 or base <= 0 or t <= 0:
                raise ValueError(f"table point x={x}, base={base}, t={t}: all must be > 0")
            merged[float(x)].append((float(base), float(t)))
        if not merged:
            raise ValueError("a curve needs at least one point")
        xs = sorted(merged)
        self._x: list[float] = xs
        self._guided = guided
        self._b: list[float] = []
        self._t: list[float] = []
        for x in xs:
            group = merged[x]
            if len(group) == 1:  # keep single measurements bit-exact (no log/exp round trip)
                base, t = group[0]
            else:  # repeated measurements of one x: geometric means
                base = math.exp(sum(math.log(b) for b, _ in group) / len(group))
                t = math.exp(sum(math.log(v) for _, v in group) / len(group))
            self._b.append(base)
            self._t.append(t)
        self._log_x = [math.log(x) for x in xs]
        self._log_r = [math.log(t / b) for t, b in zip(self._t, self._b, strict=True)]

    @property
    def xs(self) -> list[float]:
        """The grid of ``x`` values, ascending."""
        return list(self._x)

    def __call__(self, x: float, base: float) -> float:
        """Time at efficiency variable ``x`` with work (or guide time) ``base`` (see the module rules)."""
        xs = self._x
        i = bisect_left(xs, x)
        if i < len(xs) and xs[i] == x:
            return self._t[i] if base == self._b[i] else base * (self._t[i] / self._b[i])
        if i == 0:
            held = base * (self._t[0] / self._b[0])
            return held if self._guided else max(self._t[0], held)
        if i == len(xs):
            return base * (self._t[-1] / self._b[-1])
        lx = math.log(x)
        x0, x1 = self._log_x[i - 1], self._log_x[i]
        frac = (lx - x0) / (x1 - x0)
        return base * math.exp(self._log_r[i - 1] + frac * (self._log_r[i] - self._log_r[i - 1]))


class GroupedTable:
    """:class:`LogCurve` per group ``g``; log time interpolated over log g between groups.

    Points are ``(g, x, w, t)``, or ``(g, x, w, t, guide)`` for a model-guided table (all points alike).
    """

    __slots__ = ("_curves", "_groups", "_guided", "_log_groups")

    def __init__(self, points: Iterable[tuple[float, ...]]) -> None:
        by_group: dict[float, list[tuple[float, float, float]]] = defaultdict(list)
        kinds = set()
        for point in points:
            kinds.add(len(point))
            g, x, w, t = point[:4]
            base = point[4] if len(point) == 5 else w
            by_group[float(g)].append((x, base, t))
        if not by_group:
            raise ValueError("a table needs at least one point")
        if len(kinds) != 1:
            raise ValueError("a table's points must all be guided or all unguided")
        self._guided = kinds == {5}
        self._groups = sorted(by_group)
        self._log_groups = [math.log(g) for g in self._groups]
        self._curves = [LogCurve(by_group[g], self._guided) for g in self._groups]

    @property
    def groups(self) -> list[float]:
        """The measured groups, ascending."""
        return list(self._groups)

    @property
    def guided(self) -> bool:
        """Whether the table interpolates ratios to a guide model."""
        return self._guided

    def __call__(self, g: float, x: float, w: float, guide: float | None = None) -> float:
        """Time at group ``g``, efficiency variable ``x``, work ``w`` (and the guide's time there)."""
        if self._guided:
            if guide is None:
                raise ValueError("a guided table needs the guide's time at the query")
            base = guide
        else:
            base = w
        groups = self._groups
        i = bisect_left(groups, g)
        if i < len(groups) and groups[i] == g:
            return self._curves[i](x, base)
        if i == 0:
            return self._curves[0](x, base)
        if i == len(groups):
            return self._curves[-1](x, base)
        t0, t1 = self._curves[i - 1](x, base), self._curves[i](x, base)
        frac = (math.log(g) - self._log_groups[i - 1]) / (self._log_groups[i] - self._log_groups[i - 1])
        return math.exp(math.log(t0) + frac * (math.log(t1) - math.log(t0)))


def leave_one_out(points: Sequence[tuple[float, ...]]) -> list[float | None]:
    """Relative error of each point predicted by a :class:`GroupedTable` of all the other points.

    ``None`` where no other point is left to predict from. For guided points the guide is taken as given
    (refit it without the row first for a strictly held-out error).
    """
    errors: list[float | None] = []
    for index, point in enumerate(points):
        rest = [p for j, p in enumerate(points) if j != index]
        if not rest:
            errors.append(None)
            continue
        g, x, w, t = point[:4]
        guide = point[4] if len(point) == 5 else None
        predicted = GroupedTable(rest)(g, x, w, guide)
        errors.append(predicted / t - 1.0)
    return errors


__all__ = ["GroupedTable", "LogCurve", "leave_one_out"]
