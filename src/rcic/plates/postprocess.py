"""Plate-aware post-processing: which siRNA group each plate holds, and one siRNA per well.

numpy and scipy only. Every test plate holds one group of siRNAs, each at most once; an
experiment's plates take the groups in one of the orders the training plates allow
(:meth:`rcic.data.rules.PlateGroups.candidate_orders`). Given per-well log-probabilities:

group choice (per experiment, over the candidate orders), by one of
  ``vote``     each plate on its own: the group most argmaxes fall in (the bronze-medal way);
  ``counts``   the order with most argmaxes inside its plates' groups (the winning solution's way);
  ``probsum``  the order maximising the summed per-well probability mass inside each plate's group;
  ``loglik``   the order maximising sum over wells of log P(well's siRNA is in its plate's group);
  ``joint``    the order maximising the likelihood of the best one-per-plate assignment;
  ``marginal`` no single order: every candidate order weighted by its posterior (from ``loglik``'s
               likelihood, :func:`order_posterior`), so that a plate whose group the wells cannot
               tell costs nothing; with a sure posterior it is ``loglik``;
well decision (per plate, within its group; under ``marginal``, the ``sinkhorn`` and ``argmax``
decisions are weighted over the plate's groups, the one-to-one ones take the most likely order),
by one of
  ``argmax``   each well its most likely siRNA of the group;
  ``hungarian`` the maximum-likelihood one-to-one assignment (rectangular if wells are
               missing) -- the winning solution's way;
  ``sinkhorn`` per-well argmax of Sinkhorn-balanced calibrated probabilities (sharpened, see
               :func:`decide_plate`): the marginals under the one-per-plate constraint, which
               maximise expected accuracy, approximately;
  ``sinkhorn_hungarian``  the one-to-one assignment maximising the summed Sinkhorn marginals.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from rcic import layout
from rcic.errors import InputError, SubmissionError
from rcic.inference.calibration import log_softmax, logsumexp

if TYPE_CHECKING:  # the CLI's parser imports this module: keep it light
    import pandas as pd

    from rcic.data.rules import PlateGroups

log = logging.getLogger(__name__)

GROUP_METHODS = ("vote", "counts", "probsum", "loglik", "joint", "marginal")
# the group method rcic submit uses: chosen on TUNE plate maps and reported on others
# (benchmarks/plates_soft.py)
GROUP_DEFAULT = "loglik"
WELL_METHODS = ("argmax", "hungarian", "sinkhorn", "sinkhorn_hungarian")
# the names of 0.1.0, accepted with a warning until 0.3
OLD_WELL_METHODS = {"assign": "hungarian", "sinkhorn_assign": "sinkhorn_hungarian"}
# What each well decision is, in words (stages.json, the terminal summary and the report say it).
WELL_DECISIONS = {
    "argmax": "per-well argmax within the plate's group (may repeat an siRNA on a plate)",
    "hungarian": "one siRNA per well per plate: maximum-likelihood assignment (Hungarian)",
    "sinkhorn": "expected-accuracy decision: per-well argmax of the one-per-plate marginals "
    "(Sinkhorn); may repeat an siRNA on a plate",
    "sinkhorn_hungarian": "one siRNA per well per plate: assignment maximising the summed "
    "one-per-plate marginals",
}


def treatment_log_probs(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Log-softmax over the 1,108 treatment columns of logits / temperature: (N, 1108), float32."""
    return log_softmax(logits[:, : layout.N_TREATMENTS] / np.float32(temperature), axis=1)


def remove_class_bias(lp: np.ndarray, experiments: np.ndarray) -> np.ndarray:
    """Log-probabilities with each experiment's per-class mean removed, then renormalised.

    Every siRNA is the true label of at most one well per plate, so, over an experiment's wells,
    no class should be favoured: a class whose log-probability is raised in every well of an
    experiment (a batch effect the model did not undo) shows as a raised column mean. Subtracting
    the column means within each experiment removes such offsets; without them it only subtracts
    noise of order 1/sqrt(wells) and the true label's share, about signal / wells.
    """
    out = np.array(lp, dtype=np.float32, copy=True)
    for exp in np.unique(experiments):
        on = experiments == exp
        out[on] -= out[on].mean(axis=0, keepdims=True)
    return log_softmax(out, copy=False)


def group_log_probs(lp: np.ndarray, pg: PlateGroups) -> np.ndarray:
    """log P(well's siRNA is in group g): (N, G), float64.

    One pass in float32: exp(lp - row max) times the (siRNA x group) membership matrix (exact to
    ~1e-6). Rows where a group's mass underflows float32 (a group more than ~70 nats below the
    well's best class) are recomputed group by group with a log-sum-exp.
    """
    member = np.zeros((lp.shape[1], pg.n_groups), np.float32)
    for k, g in enumerate(pg.groups):
        member[g, k] = 1.0
    top = lp.max(axis=1, keepdims=True)
    p = np.subtract(lp, top, dtype=np.float32)
    np.exp(p, out=p)
    mass = (p @ member).astype(np.float64)
    out = np.log(np.maximum(mass, 1e-300)) + top
    tiny = (mass < 1e-30).any(axis=1)
    if tiny.any():
        rows = lp[tiny]
        out[tiny] = np.stack([logsumexp(rows[:, g], axis=1) for g in pg.groups], axis=1)
    return out


@dataclass
class GroupChoice:
    """The group chosen for each plate of one experiment."""

    experiment: str
    plate_group: dict[int, int]  # plate -> group index
    margin: float  # best score minus the runner-up's (in the method's units)
    scores: dict[tuple[int, ...], float] = field(default_factory=dict)
    posterior: float = float("nan")  # P(chosen order | wells), see order_posterior
    plate_posterior: dict[int, float] = field(default_factory=dict)  # P(plate holds its group)
    group_posterior: dict[int, np.ndarray] = field(default_factory=dict)  # plate -> P(group), (G,)


def choose_groups(
    lp: np.ndarray,
    experiments: np.ndarray,
    plates: np.ndarray,
    pg: PlateGroups,
    method: str = "loglik",
) -> dict[str, GroupChoice]:
    """Choose each experiment's plate groups from per-well treatment log-probabilities.

    ``marginal`` chooses as ``loglik`` does (the most likely order, which the groups table
    reports); :func:`postprocess` then weights every order by its posterior instead.
    """
    if method not in GROUP_METHODS:
        raise InputError(f"group method {method!r}: expected one of {GROUP_METHODS}")
    if method == "marginal":
        method = "loglik"
    glp = group_log_probs(lp, pg)
    top = group_index(pg)[lp.argmax(1)]
    out = {}
    for exp in np.unique(experiments):
        sel = experiments == exp
        plate_scores, plate_glp = {}, {}
        for p in np.unique(plates[sel]):
            on = sel & (plates == p)
            plate_scores[int(p)] = _plate_scores(lp[on], glp[on], top[on], pg, method)
            plate_glp[int(p)] = glp[on].sum(0)
        if method == "vote":
            choice = {p: int(np.argmax(s)) for p, s in plate_scores.items()}
            margins = [np.sort(s)[-1] - np.sort(s)[-2] for s in plate_scores.values()]
            out[str(exp)] = GroupChoice(str(exp), choice, float(min(margins)))
        else:
            out[str(exp)] = _best_order(str(exp), plate_scores, pg)
        _attach_posterior(out[str(exp)], plate_glp, pg)
    return out


def order_posterior(
    plate_glp: dict[int, np.ndarray], pg: PlateGroups
) -> dict[tuple[int, ...], float]:
    """P(order | wells) over the candidate orders of one experiment, uniform prior.

    ``plate_glp[p][g]`` is the summed log P(well's siRNA in group g) over plate p's wells: the
    log-likelihood of the plate holding group g when wells are independent given the group and the
    probabilities calibrated. Overconfident probabilities (a temperature too small) make this
    posterior overconfident too.
    """
    orders = pg.candidate_orders()
    ll = np.array(
        [sum(s[o[p - 1]] for p, s in plate_glp.items() if p - 1 < len(o)) for o in orders]
    )
    post = np.exp(ll - logsumexp(ll, axis=0))
    return dict(zip(orders, post.tolist(), strict=True))


def _attach_posterior(
    choice: GroupChoice, plate_glp: dict[int, np.ndarray], pg: PlateGroups
) -> None:
    post = order_posterior(plate_glp, pg)
    choice.posterior = float(
        sum(v for o, v in post.items() if all(o[p - 1] == g for p, g in choice.plate_group.items()))
    )
    for p in choice.plate_group:
        q = np.zeros(pg.n_groups)
        for o, v in post.items():
            if p - 1 < len(o):
                q[o[p - 1]] += v
        choice.group_posterior[p] = q
    choice.plate_posterior = {
        p: float(choice.group_posterior[p][g]) for p, g in choice.plate_group.items()
    }


def _plate_scores(
    lp: np.ndarray, glp: np.ndarray, top: np.ndarray, pg: PlateGroups, method: str
) -> np.ndarray:
    """Score of each group for one plate's wells: (G,). `top` is the group of each well's argmax."""
    if method in ("vote", "counts"):
        return np.bincount(top[top >= 0], minlength=pg.n_groups).astype(float)
    if method == "probsum":
        return np.exp(glp).sum(0)
    if method == "loglik":
        return glp.sum(0)
    return np.array([_assignment_loglik(lp[:, g]) for g in pg.groups])


def group_index(pg: PlateGroups) -> np.ndarray:
    """Group of every treatment id (-1 for siRNAs in no group)."""
    of = np.full(layout.N_TREATMENTS, -1)
    for k, g in enumerate(pg.groups):
        of[g] = k
    return of


def linear_sum_assignment(score: np.ndarray, maximize: bool = True):
    """scipy's rectangular assignment, imported on first use (scipy.optimize is slow to import)."""
    from scipy.optimize import linear_sum_assignment as lsa

    return lsa(score, maximize=maximize)


def _assignment_loglik(lp_group: np.ndarray) -> float:
    rows, cols = linear_sum_assignment(lp_group, maximize=True)
    return float(lp_group[rows, cols].sum())


def _best_order(exp: str, plate_scores: dict[int, np.ndarray], pg: PlateGroups) -> GroupChoice:
    scores = {}
    for order in pg.candidate_orders():
        scores[order] = float(
            sum(s[order[p - 1]] for p, s in plate_scores.items() if p - 1 < len(order))
        )
    ranked = sorted(scores.items(), key=lambda kv: -kv[1])
    best = ranked[0][0]
    margin = ranked[0][1] - ranked[1][1] if len(ranked) > 1 else float("inf")
    return GroupChoice(exp, {p: best[p - 1] for p in plate_scores}, float(margin), scores)


# --- well decisions -------------------------------------------------------------------------


def sinkhorn(lp: np.ndarray, iterations: int = 100, tol: float = 1e-6) -> np.ndarray:
    """Balance exp(lp) (wells x siRNAs) so each well sums to 1 and each siRNA to at most 1.

    The result approximates each well's marginal probability of each siRNA when every siRNA is
    used at most once on the plate. Returns log-marginals (float64) of the n wells.

    With fewer wells than siRNAs (n < m: missing wells), the m - n absent wells join as uniform
    rows (their siRNAs are unknown, any of the group), and the square matrix is balanced to
    doubly stochastic: an siRNA that one well claims strongly keeps its whole unit there, and the
    absent wells take up the siRNAs no well claims. (Balancing every column to n/m instead spreads
    the deficit over all siRNAs, including the strongly claimed ones.) The same padding is the
    model of the plate calibration (:func:`_log_perm_bethe`). With more wells than siRNAs (a
    fallback RxRx1 plates never need) the columns are still scaled to 1, which the rows cannot all
    meet: the result is each well's normalised share after the last iteration.

    Scaling form: exp(lp) is scaled by row factors u and column factors v (two matrix-vector
    products per iteration, no exponentials); every 10 iterations the factors are folded back into
    the log-matrix, so neither over- nor underflows however sharp the probabilities are.
    """
    n = len(lp)
    x = _with_absent_wells(np.asarray(lp, dtype=np.float64))
    x = x - x.max(axis=1, keepdims=True)
    out = _balance(x, iterations, tol)
    return out[:n] - logsumexp(out[:n], axis=1)[:, None]


def _with_absent_wells(lp: np.ndarray) -> np.ndarray:
    """`lp` (wells x siRNAs) with a uniform row for each absent well, when it has fewer rows."""
    n, m = lp.shape
    if n >= m:
        return lp
    return np.vstack([lp, np.full((m - n, m), -np.log(m), dtype=lp.dtype)])


def _balance(x: np.ndarray, iterations: int, tol: float) -> np.ndarray:
    """Sinkhorn scaling of exp(x) (rows max 0) towards rows and columns summing to 1."""
    n, m = x.shape
    done = 0
    while done < iterations:
        k = np.exp(x)
        u, v = np.ones(n), np.ones(m)
        for _ in range(min(10, iterations - done)):
            u = 1.0 / np.maximum(k @ v, 1e-300)
            v = 1.0 / np.maximum(k.T @ u, 1e-300)
            done += 1
        x = x + np.log(u)[:, None] + np.log(v)[None, :]
        if np.abs(np.log(np.maximum(k @ v, 1e-300)) + np.log(u)).max() < tol:
            break
    return x


CALIBRATE = ("off", "on", "auto")  # rcic submit --calibrate, see calibrate_plates
# chosen on held-out experiments disjoint from those reported (benchmarks/plates_real.py)
CALIBRATE_DEFAULT = "auto"
# exponent of the calibrated probabilities before Sinkhorn (decide_plate): chosen with
# CALIBRATE_DEFAULT on held-out experiments disjoint from those reported (plates_real.py)
SHARPEN = 0.35
# the well decision rcic submit uses: chosen with SHARPEN and CALIBRATE_DEFAULT on held-out
# experiments disjoint from those reported (plates_real.py)
WELL_METHOD_DEFAULT = "sinkhorn"
# Sinkhorn's stopping tolerance (on log row sums) for well decisions: an argmax needs less
# precision than the marginals' 1e-6, and fewer iterations make `rcic submit` faster;
# benchmarks/plates_real.py measures the decisions made with it
DECISION_TOL = 1e-3


def well_method_name(method: str) -> str:
    """`method` checked against WELL_METHODS; a name of 0.1.0 (``assign``, ``sinkhorn_assign``)
    is taken with a warning."""
    if method in OLD_WELL_METHODS:
        new = OLD_WELL_METHODS[method]
        log.warning("well method %r is deprecated: use %r (removed in 0.3)", method, new)
        method = OLD_WELL_METHODS[method]
    if method not in WELL_METHODS:
        raise InputError(f"well method {method!r}: expected one of {WELL_METHODS}")
    return method


def decide_plate(
    lp_group: np.ndarray, method: str = WELL_METHOD_DEFAULT, sharpen: float = SHARPEN
) -> np.ndarray:
    """Column (index into the group) chosen for each well of one plate.

    ``sinkhorn`` balances p ** (1 / sharpen) rather than p itself: sharpen = 1 gives the Sinkhorn
    approximation of the marginals (best when the model is weak), sharpen -> 0 gives the
    maximum-likelihood assignment (best when it is strong). :data:`SHARPEN` was chosen on the real
    plate maps with simulated logits, on one set of held-out experiments, and reported on another
    (benchmarks/results/plates_real.txt).
    """
    method = well_method_name(method)
    n, m = lp_group.shape
    if method == "argmax":
        return lp_group.argmax(1)
    score = _decision_marginals(lp_group, sharpen) if method.startswith("sinkhorn") else lp_group
    if method == "sinkhorn":
        return score.argmax(1)
    if n > m:  # more wells than siRNAs: no one-to-one answer exists; documented fallback
        log.warning(
            "plate has %d wells but its group only %d siRNAs: surplus wells take their argmax", n, m
        )
        choice = score.argmax(1)
        rows, cols = linear_sum_assignment(score, maximize=True)
        choice[rows] = cols
        return choice
    rows, cols = linear_sum_assignment(
        np.exp(score) if method == "sinkhorn_hungarian" else score, maximize=True
    )
    choice = np.empty(n, dtype=np.int64)
    choice[rows] = cols
    return choice


def _decision_marginals(lp_group: np.ndarray, sharpen: float) -> np.ndarray:
    """Log one-per-plate marginals of the sharpened probabilities, to the decisions' tolerance."""
    return sinkhorn(lp_group / sharpen, tol=DECISION_TOL)


@dataclass
class PostResult:
    """Predictions after each stage and the group choices made."""

    stages: dict[str, np.ndarray]  # stage name -> siRNA per well
    choices: dict[str, GroupChoice]
    confidence: np.ndarray  # per-well probability of the final answer (Sinkhorn marginal)


def postprocess(
    lp: np.ndarray,
    experiments: np.ndarray,
    plates: np.ndarray,
    pg: PlateGroups,
    group_method: str = "loglik",
    well_method: str = WELL_METHOD_DEFAULT,
    stages=("groups", "wells"),
    sharpen: float = SHARPEN,
    marginals: bool = False,
) -> PostResult:
    """Run the plate stages on per-well treatment log-probabilities (N, 1108).

    Returns the prediction after ``ensemble`` (plain argmax), ``groups`` (argmax within each
    plate's chosen group) and ``wells`` (the well decision), as far as `stages` go. With
    `marginals`, ``confidence`` holds each final answer's one-per-plate marginal probability
    (what pseudo-labels rank by); otherwise the well's top probability.

    Under ``marginal`` group choice, a plate's groups are weighted by their posterior q(g): the
    ``groups`` stage takes each well's argmax of q(g) P(siRNA | well, g), the Bayes decision when
    the plate's group is uncertain (P(siRNA | well, g) is the well's distribution renormalised
    within g); ``sinkhorn`` weights each group's one-per-plate marginals by q(g) the same way.
    """
    out = {"ensemble": lp.argmax(1)}
    confidence = np.exp(lp.max(1))
    choices: dict[str, GroupChoice] = {}
    if "groups" not in stages:
        return PostResult(out, choices, confidence)
    choices = choose_groups(lp, experiments, plates, pg, group_method)
    masked = out["ensemble"].copy()
    final = masked.copy()
    soft, wells = group_method == "marginal", "wells" in stages
    for exp, choice in choices.items():
        for plate, g in choice.plate_group.items():
            sel = np.flatnonzero((experiments == exp) & (plates == plate))
            weights = _group_weights(choice, plate, g, soft)
            decided = _decide_over_groups(
                lp[sel], pg, weights, well_method if wells else None, sharpen, marginals and wells
            )
            masked[sel] = decided.groups
            if wells:
                final[sel] = decided.wells
                if marginals:
                    confidence[sel] = decided.confidence
    out["groups"] = masked
    if wells:
        out["wells"] = final
    return PostResult(out, choices, confidence)


# groups whose posterior weight is below this share of the plate's best are not scored
MIN_GROUP_WEIGHT = 1e-4


def _group_weights(choice: GroupChoice, plate: int, g: int, soft: bool) -> dict[int, float]:
    """Group -> weight for one plate: the chosen group alone, or (soft) every group with a
    posterior of at least MIN_GROUP_WEIGHT of the best."""
    q = choice.group_posterior.get(plate) if soft else None
    if q is None or not np.isfinite(q).all() or q.max() <= 0:
        return {g: 1.0}
    return {int(k): float(w) for k, w in enumerate(q) if w >= MIN_GROUP_WEIGHT * q.max()}


@dataclass
class _PlateDecision:
    groups: np.ndarray  # siRNA per well after the groups stage
    wells: np.ndarray | None  # after the well decision
    confidence: np.ndarray | None  # the final answer's one-per-plate marginal


def _decide_over_groups(
    lp: np.ndarray,
    pg: PlateGroups,
    weights: dict[int, float],
    well_method: str | None,
    sharpen: float,
    marginals: bool,
) -> _PlateDecision:
    """One plate's stages, each group g scored with its weight: (wells x the weighted groups'
    siRNAs) scores log w(g) + log P(siRNA | well, g) for the groups stage, and log w(g) +
    log(one-per-plate marginal) for ``sinkhorn``; one-to-one decisions use the heaviest group."""
    cols = np.concatenate([pg.groups[k] for k in weights])
    start = np.cumsum([0] + [len(pg.groups[k]) for k in weights])
    group_score = np.empty((len(lp), len(cols)))
    well_score = np.empty_like(group_score) if well_method == "sinkhorn" else None
    marginal = np.empty_like(group_score) if marginals else None
    for i, (k, w) in enumerate(weights.items()):
        span = slice(start[i], start[i + 1])
        sub = lp[:, pg.groups[k]].astype(np.float64)
        group_score[:, span] = np.log(w) + sub - logsumexp(sub, axis=1)[:, None]
        if well_score is not None:
            well_score[:, span] = np.log(w) + _decision_marginals(sub, sharpen)
        if marginal is not None:
            marginal[:, span] = np.log(w) + sinkhorn(sub)
    pick = group_score.argmax(1)
    groups = cols[pick]
    if well_method == "sinkhorn":
        pick = well_score.argmax(1)
    elif well_method not in (None, "argmax"):
        i = int(np.argmax(list(weights.values())))  # the heaviest group
        members = pg.groups[list(weights)[i]]
        pick = start[i] + decide_plate(lp[:, members], well_method, sharpen)
    wells = None if well_method is None else cols[pick]
    confidence = np.exp(marginal[np.arange(len(lp)), pick]) if marginals else None
    return _PlateDecision(groups, wells, confidence)


# --- calibration from the plate structure -----------------------------------------------------


@dataclass
class Calibration:
    """A temperature estimated from the test plates themselves (:func:`estimate_temperature`)."""

    temperature: float  # divide the log-probabilities by this
    plates: int  # plates it was estimated on
    wells: int


def _log_perm_bethe(lp: np.ndarray, iterations: int = 60) -> float:
    """Bethe approximation of log perm(P), P = exp(lp) (rows: wells, columns: siRNAs, n <= m).

    Rows are padded with uniform wells to a square matrix; S is the doubly stochastic Sinkhorn
    scaling of P, and log perm ~ sum S log P - sum S log S + sum (1 - S) log(1 - S) (the Bethe free
    energy of the permanent, evaluated at the Sinkhorn point).
    """
    lp = _with_absent_wells(lp)
    s = np.clip(np.exp(sinkhorn(lp, iterations, tol=1e-9)), 1e-300, 1 - 1e-12)
    return float((s * lp).sum() - (s * np.log(s)).sum() + ((1 - s) * np.log1p(-s)).sum())


def _plate_blocks(lp, experiments, plates, choices, pg, max_plates: int) -> list[np.ndarray]:
    """(wells x group) log-probabilities of up to `max_plates` plates spread over the list, each
    with more than one well and no more wells than its group has siRNAs."""
    blocks = []
    for exp, choice in choices.items():
        for plate, g in sorted(choice.plate_group.items()):
            sel = np.flatnonzero((experiments == exp) & (plates == plate))
            if 1 < len(sel) <= len(pg.groups[g]):
                blocks.append(lp[np.ix_(sel, pg.groups[g])])
    if not blocks:
        raise InputError("estimate_temperature: no plate with fewer wells than its group's siRNAs")
    pick = np.unique(
        np.linspace(0, len(blocks) - 1, min(max_plates, len(blocks))).round().astype(int)
    )
    return [blocks[i] for i in pick]


def estimate_temperature(
    lp: np.ndarray,
    experiments: np.ndarray,
    plates: np.ndarray,
    choices: dict[str, GroupChoice],
    pg: PlateGroups,
    max_plates: int = 4,
) -> Calibration:
    """The temperature under which the per-well distributions best explain one siRNA per well per
    plate: the maximum-likelihood temperature of the plate model.

    Derivation. Let p_T(s | z_w) = softmax(l_w / T) over a plate's group be a well's posterior when
    its label is uniform over the group, independently of the other wells. Bayes gives the
    class-conditional density it implies: P_T(z_w | s) = m p_T(s | z_w) P(z_w), with the marginal
    P(z_w) the same for every T; it is a proper density for every T since, the siRNAs being
    exchangeable, E[p_T(s | z)] = 1/m. Under the real plate model, the labels are a uniformly drawn
    one-to-one map sigma from wells to the group, so the plate's likelihood is
        P_T(Z) = E_sigma[prod_w P_T(z_w | sigma(w))]
               = prod_w P(z_w) * m^n (m - n)! / m! * perm(P_T),
    with P_T the (wells x group) matrix of p_T. Only perm(P_T) depends on T: the maximum-likelihood
    temperature maximises the sum over plates of log perm(P_T), and is consistent when the
    model's probabilities are calibrated at some T. (Under independent labels the same likelihood
    does not depend on T at all: the one-per-plate structure is what identifies it.) The permanent
    is approximated by its Bethe free energy at the Sinkhorn point (:func:`_log_perm_bethe`), and
    the one-dimensional maximum found by golden-section search on log T.

    Args:
        lp: per-well log-probabilities over the treatments, at any scale.
        choices: each plate's group (from :func:`choose_groups`).
        max_plates: plates to estimate on, spread over the experiments (one number for all).
    Returns the factor T by which to divide `lp` before a softmax (1.0: calibrated already).
    """
    blocks = _plate_blocks(lp, experiments, plates, choices, pg, max_plates)

    def neg_loglik(log_t: float) -> float:
        t = np.exp(log_t)
        return -sum(_log_perm_bethe(log_softmax(b / t, dtype=np.float64)) for b in blocks)

    best = golden_section(neg_loglik, np.log(1e-3), np.log(1e3), tol=0.02)
    return Calibration(float(np.exp(best)), len(blocks), int(sum(len(b) for b in blocks)))


def golden_section(f, lo: float, hi: float, tol: float) -> float:
    """The minimiser of a unimodal `f` on [lo, hi], to within `tol`, by golden-section search.

    Used instead of scipy.optimize.minimize_scalar because importing scipy.optimize is a
    noticeable part of `rcic submit`'s start-up, which benchmarks/plates_speed.py holds to 1.5x a
    plain script; the search needs 16 evaluations for tol = 0.02 on [log 1e-3, log 1e3].
    """
    ratio = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = lo, hi
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = f(c), f(d)
    while b - a > tol:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = f(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = f(d)
    return (a + b) / 2.0


def calibrate_plates(
    lp: np.ndarray, test: pd.DataFrame, pg: PlateGroups, mode: str, group_method: str, stored: bool
) -> tuple[np.ndarray, dict]:
    """Rescale `lp` by a temperature estimated from the test plates (:func:`estimate_temperature`).

    ``off``: keep `lp`. ``on``: always use the estimate. ``auto``: use it when the probabilities
    carry no fitted temperature of their own (a file without one, or an ensemble of several files)
    or when the estimate disagrees with the stored one by more than 2x. An estimate at the edge of
    its search range means the plates carry no information on the temperature; it is not used.
    Returns the log-probabilities to use and what was done (for stages.json).
    """
    if mode not in CALIBRATE:
        raise SubmissionError(f"calibrate {mode!r}: expected one of {CALIBRATE}")
    if mode == "off":
        return lp, {"mode": "off"}
    cal = _estimate_on_plates(lp, test, pg, group_method)
    t = cal.temperature
    informative = 2e-3 < t < 5e2
    if mode == "on":
        use, why = informative, "--calibrate on"
    elif not stored:
        use, why = informative, "no fitted temperature (a file without one, or an ensemble)"
    else:
        use, why = (
            informative and abs(np.log(t)) > np.log(2),
            "the stored temperature is off by more than 2x",
        )
    if not informative:
        why = "the plates carry no information on the temperature (estimate at its bound)"
    report = {
        "mode": mode,
        "estimate": t,
        "used": bool(use),
        "reason": why,
        "plates": cal.plates,
        "wells": cal.wells,
    }
    log.info(
        "temperature from the plates: %.3f (%d plates, %d wells); %s: %s",
        t,
        cal.plates,
        cal.wells,
        "used" if use else "not used",
        why,
    )
    return (log_softmax(lp * np.float32(1 / t), copy=False) if use else lp), report


def _estimate_on_plates(lp, test: pd.DataFrame, pg: PlateGroups, group_method: str, n: int = 4):
    """estimate_temperature on `n` test plates spread over the experiments (those with fewer wells
    than a group has siRNAs), computing only what they need: their experiments' class-bias-free
    log-probabilities and group choices. A class raised across a whole experiment breaks the
    one-per-plate model the estimate rests on (it drove the estimate to its bound), hence the
    bias removal."""
    counts = test.groupby(["experiment", "plate"]).size()
    size = min(len(g) for g in pg.groups)
    candidates = [k for k, c in counts.items() if 1 < c <= size]
    if not candidates:
        raise SubmissionError(
            "no test plate with fewer wells than its group's siRNAs to calibrate on"
        )
    pick = np.unique(np.linspace(0, len(candidates) - 1, min(n, len(candidates))).round())
    picked = {candidates[int(i)] for i in pick}
    exps, plates = test["experiment"].to_numpy(), test["plate"].to_numpy()
    mine = np.isin(exps, [e for e, _ in picked])
    unbiased = remove_class_bias(lp[mine], exps[mine])
    exps, plates = exps[mine], plates[mine]
    choices = choose_groups(unbiased, exps, plates, pg, group_method)
    on = np.array([(e, p) in picked for e, p in zip(exps, plates, strict=True)])
    return estimate_temperature(unbiased[on], exps[on], plates[on], choices, pg, len(picked))
