"""Plate rules of the RxRx1 layout, discovered from metadata rather than pasted in.

Facts (from the real training tables; docs/plates.md): the treatments split into disjoint
groups (4 of 277 in RxRx1); every plate draws its treatments from one group, each at most once;
the plates of an experiment take the groups in a cyclic shift of one canonical order. These
functions find the groups and orders in any labelled table and check the rules; `check`, the
synthetic generator's tests and the submission step all use them.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

from rcic.errors import InputError

PlateKey = tuple[str, int]  # (experiment, plate)


@dataclass
class PlateGroups:
    """siRNA groups and plate orders found in labelled treatment wells.

    Attributes:
        groups: sorted siRNA ids of each group; group k is ``groups[k]``.
        plate_group: group index of every labelled plate.
        canonical: group index of plates 1..n at shift 0 (the first experiment's order).
        cyclic: whether every experiment's order is a cyclic shift of ``canonical``.
        shifts: shift of each labelled experiment (None where its order is not cyclic).
    """

    groups: list[np.ndarray]
    plate_group: dict[PlateKey, int]
    canonical: tuple[int, ...]
    cyclic: bool
    shifts: dict[str, int | None] = field(default_factory=dict)

    @property
    def n_groups(self) -> int:
        return len(self.groups)

    def candidate_orders(self) -> list[tuple[int, ...]]:
        """Orders a new experiment may take: every cyclic shift, or every permutation."""
        if self.cyclic:
            n = len(self.canonical)
            return [shifted(self.canonical, k) for k in range(n)]
        return list(itertools.permutations(range(self.n_groups)))


def shifted(order: tuple[int, ...], shift: int) -> tuple[int, ...]:
    """Plate p takes ``order[(p + shift) % n]``."""
    n = len(order)
    return tuple(order[(p + shift) % n] for p in range(n))


def discover_groups(wells: pd.DataFrame) -> PlateGroups:
    """Find siRNA groups (connected components of co-occurrence on plates) and plate orders.

    Args:
        wells: rows with ``experiment, plate, sirna, well_type``; unlabelled rows (sirna -1)
            and controls are ignored.
    """
    treat = wells[(wells["well_type"] == "treatment") & (wells["sirna"] >= 0)]
    if treat.empty:
        raise InputError("no labelled treatment wells: cannot discover siRNA groups")
    plate_keys = list(zip(treat["experiment"], treat["plate"].astype(int), strict=True))
    plate_index = {k: i for i, k in enumerate(dict.fromkeys(plate_keys))}
    sirnas = np.unique(treat["sirna"].to_numpy())
    sirna_index = np.searchsorted(sirnas, treat["sirna"].to_numpy())
    rows = np.array([plate_index[k] for k in plate_keys])
    n_p, n_s = len(plate_index), len(sirnas)
    # bipartite graph: plates 0..n_p-1, siRNAs n_p..n_p+n_s-1
    graph = coo_matrix(
        (np.ones(len(rows)), (rows, n_p + sirna_index)), shape=(n_p + n_s, n_p + n_s)
    )
    _, comp = connected_components(graph, directed=False)
    sirna_comp = comp[n_p:]
    # siRNAs are sorted, so a component's first occurrence is its smallest siRNA: number groups by it
    comps, first = np.unique(sirna_comp, return_index=True)
    relabel = {int(c): k for k, c in enumerate(comps[np.argsort(first)])}
    group_idx = np.array([relabel[int(c)] for c in sirna_comp])
    groups = [sirnas[group_idx == k] for k in range(len(relabel))]
    plate_group = {key: relabel[int(comp[i])] for key, i in plate_index.items()}
    canonical, cyclic, shifts = _plate_orders(plate_group)
    return PlateGroups(groups, plate_group, canonical, cyclic, shifts)


def _plate_orders(
    plate_group: dict[PlateKey, int],
) -> tuple[tuple[int, ...], bool, dict[str, int | None]]:
    orders = experiment_orders(plate_group)
    complete = {e: o for e, o in orders.items() if len(set(o)) == len(o)}
    if not complete:
        return (), False, {e: None for e in orders}
    canonical = next(iter(complete.values()))
    rotations = {shifted(canonical, k): k for k in range(len(canonical))}
    shifts = {e: rotations.get(o) for e, o in orders.items()}
    cyclic = all(s is not None for s in shifts.values())
    return canonical, cyclic, shifts


def experiment_orders(plate_group: dict[PlateKey, int]) -> dict[str, tuple[int, ...]]:
    """Group index of plates 1..n for every experiment with all its plates labelled."""
    by_exp: dict[str, dict[int, int]] = {}
    for (exp, plate), g in plate_group.items():
        by_exp.setdefault(exp, {})[plate] = g
    n = max(len(p) for p in by_exp.values())
    return {e: tuple(p[k] for k in sorted(p)) for e, p in by_exp.items() if len(p) == n}


# --- checks ----------------------------------------------------------------------------------


@dataclass
class Finding:
    """One rule checked on a dataset."""

    rule: str
    ok: bool
    detail: str

    def __str__(self) -> str:
        return f"[{'ok' if self.ok else 'FAIL'}] {self.rule}: {self.detail}"


def check_rules(wells: pd.DataFrame) -> list[Finding]:
    """Check the plate rules on a table of wells; labelled treatments drive the group rules."""
    findings = [_check_repeats(wells)]
    try:
        pg = discover_groups(wells)
    except ValueError as e:
        return findings + [Finding("siRNA groups", False, str(e))]
    findings += [_check_groups(pg, wells), _check_distinct_groups(pg), _check_cyclic(pg, wells)]
    findings += _check_controls(wells)
    findings.append(_missing_wells(wells, pg))
    return findings


def _check_repeats(wells: pd.DataFrame) -> Finding:
    treat = wells[(wells["well_type"] == "treatment") & (wells["sirna"] >= 0)]
    dup = treat[treat.duplicated(["experiment", "plate", "sirna"], keep=False)]
    if len(dup):
        first = dup.iloc[0]
        return Finding(
            "one well per siRNA per plate",
            False,
            f"{len(dup)} wells repeat an siRNA on their plate, e.g. siRNA {first.sirna} on {first.experiment} plate {first.plate}",
        )
    return Finding(
        "one well per siRNA per plate", True, f"{len(treat)} labelled treatment wells, no repeats"
    )


def _check_groups(pg: PlateGroups, wells: pd.DataFrame) -> Finding:
    n_plates = wells.groupby("experiment")["plate"].nunique().max()
    sizes = [len(g) for g in pg.groups]
    ok = pg.n_groups == n_plates and len(set(sizes)) == 1
    detail = f"{pg.n_groups} disjoint groups of sizes {sizes}; every plate draws from one group"
    if pg.n_groups != n_plates:
        detail += f" (expected {n_plates}, one per plate of an experiment)"
    return Finding("disjoint siRNA groups", ok, detail)


def _check_distinct_groups(pg: PlateGroups) -> Finding:
    orders = experiment_orders(pg.plate_group)
    bad = sorted(e for e, o in orders.items() if len(set(o)) != len(o))
    if bad:
        return Finding(
            "plates of an experiment use different groups", False, f"repeated group in {bad[:5]}"
        )
    return Finding(
        "plates of an experiment use different groups", True, f"{len(orders)} experiments"
    )


def _check_cyclic(pg: PlateGroups, wells: pd.DataFrame) -> Finding:
    seen = sorted({s for s in pg.shifts.values() if s is not None})
    if not pg.cyclic:
        bad = sorted(e for e, s in pg.shifts.items() if s is None)
        return Finding(
            "cyclic plate orders",
            False,
            f"orders of {bad[:5]} are not cyclic shifts of {pg.canonical}",
        )
    n = len(pg.canonical)
    unseen = sorted(set(range(n)) - set(seen))
    detail = f"canonical order {pg.canonical}; shifts seen {seen}"
    if unseen:
        detail += f"; shifts {unseen} never seen in labelled plates (a new experiment may use them)"
    return Finding("cyclic plate orders", True, detail)


def _check_controls(wells: pd.DataFrame) -> list[Finding]:
    controls = wells[wells["well_type"] != "treatment"]
    if controls.empty:
        return [Finding("control wells", False, "no control wells in the metadata")]
    plates = wells.groupby(["experiment", "plate"]).size().index
    neg = controls[(controls["well_type"] == "negative_control") & (controls["well"] == "B02")]
    neg_plates = set(zip(neg["experiment"], neg["plate"], strict=True))
    no_b02 = [p for p in plates if p not in neg_plates]
    pos = (
        controls[controls["well_type"] == "positive_control"]
        .groupby(["experiment", "plate"])["sirna"]
        .nunique()
    )
    no_pos = [p for p in plates if pos.get(p, 0) == 0]
    return [
        Finding(
            "negative control in B02",
            not no_b02,
            f"missing on {len(no_b02)} of {len(plates)} plates {no_b02[:3]}"
            if no_b02
            else f"all {len(plates)} plates",
        ),
        Finding(
            "positive controls on every plate",
            not no_pos,
            f"{pos.min() if len(pos) else 0}..{pos.max() if len(pos) else 0} distinct positive controls per plate"
            + (f"; none on {no_pos[:3]}" if no_pos else ""),
        ),
    ]


def _missing_wells(wells: pd.DataFrame, pg: PlateGroups) -> Finding:
    size = max(len(g) for g in pg.groups)
    counts = wells[wells["well_type"] == "treatment"].groupby(["experiment", "plate"]).size()
    short = counts[counts < size]
    return Finding(
        "missing wells",
        True,
        f"{len(short)} of {len(counts)} plates hold fewer than {size} treatments "
        f"(min {counts.min()}); a plate's wells and its group need not pair one to one",
    )
