import itertools
import json
import logging

import numpy as np
import pandas as pd
import pytest

from rcic import layout, metrics
from rcic.data import metadata, rules
from rcic.inference import calibration
from rcic.inference.logitsfile import LogitsError, read_logits, write_logits
from rcic.plates import postprocess as plates
from rcic.plates import submit

from .conftest import shared_or_skip


def _truth(screen):
    wells = metadata.wells_of(metadata.load_metadata(screen))
    test = submit._test_wells(screen, wells)
    labels = (
        pd.read_csv(screen / "test_labels.csv")
        .set_index("id_code")
        .loc[test.id_code, "sirna"]
        .to_numpy()
    )
    return wells, test, labels


def _simulated_logits(labels, signal, seed=0):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 1, (len(labels), layout.N_CLASSES)).astype(np.float32)
    logits[np.arange(len(labels)), labels] += signal
    return logits


def test_group_choice_finds_truth_including_unseen_shift(tiny_screen):
    wells, test, labels = _truth(tiny_screen)
    truth = json.loads((tiny_screen / "synth.json").read_text())
    pg = rules.discover_groups(wells)
    train_shifts = {s for e, s in pg.shifts.items()}
    lp = plates.treatment_log_probs(_simulated_logits(labels, 3.0))
    of = plates.group_index(pg)
    for method in ("counts", "probsum", "loglik", "joint"):
        choices = plates.choose_groups(
            lp, test.experiment.to_numpy(), test.plate.to_numpy(), pg, method
        )
        for exp, choice in choices.items():
            sel = (test.experiment == exp).to_numpy()
            for plate, g in choice.plate_group.items():
                on = sel & (test.plate == plate).to_numpy()
                assert set(of[labels[on]]) == {g}, (method, exp, plate)
    unseen = [
        e for e, s in truth["shifts"].items() if e in set(test.experiment) and s not in train_shifts
    ]
    assert unseen, "the tiny screen has a test experiment with a shift never seen in training"


def test_group_posterior_is_sure_with_signal_and_spread_without(tiny_screen):
    wells, test, labels = _truth(tiny_screen)
    pg = rules.discover_groups(wells)
    exps, pls = test.experiment.to_numpy(), test.plate.to_numpy()
    n_orders = len(pg.candidate_orders())
    # with signal; and without, calibrated (a large temperature: the model knows it knows nothing)
    for signal, sure in ((4.0, True), (0.0, False)):
        t = 1.0 if sure else 50.0
        lp = plates.treatment_log_probs(_simulated_logits(labels, signal, seed=5), temperature=t)
        for choice in plates.choose_groups(lp, exps, pls, pg, "loglik").values():
            assert choice.scores and 0.0 <= choice.posterior <= 1.0
            post = plates.order_posterior(
                {
                    p: plates.group_log_probs(lp[(exps == choice.experiment) & (pls == p)], pg).sum(
                        0
                    )
                    for p in choice.plate_group
                },
                pg,
            )
            assert sum(post.values()) == pytest.approx(1.0)
            assert max(post, key=post.get) == tuple(
                choice.plate_group[p] for p in sorted(choice.plate_group)
            )
            if sure:
                assert choice.posterior > 0.999
                assert min(choice.plate_posterior.values()) > 0.999
            else:  # no signal: every candidate order about equally likely
                assert choice.posterior < 2.0 / n_orders


def test_assignment_is_distinct_and_optimal_by_brute_force():
    rng = np.random.default_rng(0)
    for n, m in [(4, 4), (3, 5), (5, 6), (6, 6)]:
        for _ in range(5):
            lp = np.log(rng.dirichlet(np.ones(m), size=n))
            choice = plates.decide_plate(lp, "hungarian")
            assert len(set(choice)) == n
            best = max(
                sum(lp[i, p[i]] for i in range(n)) for p in itertools.permutations(range(m), n)
            )
            assert lp[np.arange(n), choice].sum() == pytest.approx(best)
            sa = plates.decide_plate(lp, "sinkhorn_hungarian")
            assert len(set(sa)) == n


def test_sinkhorn_balances_rows_and_columns():
    rng = np.random.default_rng(1)
    lp = np.log(rng.dirichlet(np.ones(7), size=7))
    marg = np.exp(plates.sinkhorn(lp, iterations=500))
    np.testing.assert_allclose(marg.sum(1), 1, atol=1e-6)
    np.testing.assert_allclose(marg.sum(0), 1, atol=1e-4)
    # fewer wells than siRNAs: the absent wells are uniform rows, so the columns of the wells sum
    # to at most 1 and together to the number of wells
    marg = np.exp(plates.sinkhorn(lp[:5], iterations=500))
    np.testing.assert_allclose(marg.sum(1), 1, atol=1e-6)
    assert marg.sum(0).max() <= 1 + 1e-6
    np.testing.assert_allclose(marg.sum(), 5, atol=1e-6)


def _exact_marginals(p: np.ndarray) -> np.ndarray:
    """Each well's marginal of each siRNA under one siRNA per well, each at most once (by
    enumerating every assignment: small plates only)."""
    n, m = p.shape
    marg, total = np.zeros_like(p), 0.0
    for cols in itertools.permutations(range(m), n):
        w = np.prod(p[np.arange(n), cols])
        marg[np.arange(n), cols] += w
        total += w
    return marg / total


def test_sinkhorn_with_missing_wells_tracks_the_exact_marginals():
    """Fewer wells than siRNAs: a sure well keeps (nearly) its whole siRNA, above the n/m cap
    that balancing every column to n/m imposed, and the per-well argmax agrees with that of the
    exact marginals on at least 90% of wells of random small plates (the former n/m balancing
    fails both)."""
    p = np.array([[0.97, 0.01, 0.01, 0.01], [0.01, 0.97, 0.01, 0.01], [0.01, 0.55, 0.01, 0.43]])
    marg = np.exp(plates.sinkhorn(np.log(p), iterations=2000, tol=1e-12))
    assert marg[0, 0] > 3 / 4 + 0.05 and marg[1, 1] > 3 / 4
    rng = np.random.default_rng(0)
    agree = 0
    for _ in range(100):
        lp = calibration.log_softmax(rng.normal(0, 2.0, (4, 6)), dtype=np.float64)
        approx = plates.sinkhorn(lp, iterations=2000, tol=1e-12)
        agree += (approx.argmax(1) == _exact_marginals(np.exp(lp)).argmax(1)).sum()
    assert agree >= 0.9 * 400, agree


def test_more_wells_than_siRNAs_falls_back_with_warning(caplog):
    lp = np.log(np.random.default_rng(2).dirichlet(np.ones(3), size=5))
    with caplog.at_level(logging.WARNING):
        choice = plates.decide_plate(lp, "hungarian")
    assert "surplus wells" in caplog.text
    assert len(choice) == 5 and len(set(choice)) == 3


def _write_test_logits(path, test, logits, **kw):
    return write_logits(path, test.id_code.to_numpy(), logits, **kw)


def test_submission_and_stage_scores(tiny_screen, tmp_path):
    wells, test, labels = _truth(tiny_screen)
    _write_test_logits(tmp_path / "a.npz", test, _simulated_logits(labels, 1.5, seed=1))
    _write_test_logits(tmp_path / "b.npz", test, _simulated_logits(labels, 1.5, seed=2))
    res = submit.run_submit(
        [tmp_path / "a.npz", tmp_path / "b.npz"],
        tiny_screen,
        tmp_path / "sub.csv",
        labels=tiny_screen / "test_labels.csv",
        options=submit.SubmitOptions(well_method="hungarian"),
    )
    sub = pd.read_csv(tmp_path / "sub.csv")
    assert sub.id_code.tolist() == pd.read_csv(tiny_screen / "test.csv").id_code.tolist()
    assert (
        sub.groupby(sub.id_code.str.rsplit("_", n=1).str[0])
        .sirna.apply(lambda s: s.is_unique)
        .all()
    )
    s = {k: v["overall"] for k, v in res.scores.items()}
    assert s["ensemble"] < s["groups"] <= s["wells"]
    report = json.loads((tmp_path / "stages.json").read_text())
    assert set(report["stages"]) == {"ensemble", "groups", "wells"}
    single = submit.run_submit(
        [tmp_path / "a.npz"],
        tiny_screen,
        tmp_path / "one.csv",
        labels=tiny_screen / "test_labels.csv",
        options=submit.SubmitOptions(stages=("ensemble",)),
    )
    assert (
        single.scores["ensemble"]["overall"] < s["ensemble"] + 0.2
    )  # the ensemble of two is not worse by much
    assert set(single.scores) == {"ensemble"}
    table = metrics.evaluate(tmp_path / "sub.csv", tiny_screen / "test_labels.csv")
    assert table["overall"] == pytest.approx(s["wells"])
    assert set(table["plate"]) == {
        f"{e}_{p}"
        for e, p in test[["experiment", "plate"]].drop_duplicates().itertuples(index=False)
    }


@pytest.mark.parametrize("stages", ["ensemble,wells", "wells"])
def test_stages_that_skip_one_are_refused_by_name(stages, tiny_screen, tmp_path, capsys):
    """The well decision needs the plate groups: a list that skips them is no prefix and is
    refused, writing nothing (it used to run without the well decision, silently)."""
    from rcic import cli

    _, test, labels = _truth(tiny_screen)
    _write_test_logits(tmp_path / "a.npz", test, _simulated_logits(labels, 1.5))
    args = ["submit", "--logits", str(tmp_path / "a.npz"), "--data", str(tiny_screen)]
    assert cli.main([*args, "--out", str(tmp_path / "s.csv"), "--stages", stages]) == 2
    assert "each stage needs the one before it" in capsys.readouterr().err
    assert not (tmp_path / "s.csv").exists()
    assert cli.main([*args, "--out", str(tmp_path / "s.csv"), "--stages", "groups"]) == 0


def test_pseudo_labels_respect_one_per_plate(tiny_screen, tmp_path):
    _, test, labels = _truth(tiny_screen)
    _write_test_logits(tmp_path / "a.npz", test, _simulated_logits(labels, 2.0))
    submit.run_submit(
        [tmp_path / "a.npz"],
        tiny_screen,
        tmp_path / "sub.csv",
        pseudo_out=tmp_path / "p.csv",
        pseudo_top=0.5,
    )
    p = pd.read_csv(tmp_path / "p.csv")
    assert 0.3 * len(test) <= len(p) <= 0.7 * len(p.index.union(test.index))
    plate = p.id_code.str.rsplit("_", n=1).str[0]
    assert not p.assign(plate=plate).duplicated(["plate", "sirna"]).any()


@pytest.mark.parametrize("fault", ["nan", "classes", "missing", "extra", "duplicate"])
def test_bad_logits_are_rejected(tiny_screen, tmp_path, fault):
    _, test, labels = _truth(tiny_screen)
    ids, logits = test.id_code.to_numpy(), _simulated_logits(labels, 2.0)
    if fault == "nan":
        logits[3, 5] = np.nan
    elif fault == "classes":
        logits = logits[:, :500]
    elif fault == "missing":
        ids, logits = ids[1:], logits[1:]
    elif fault == "extra":
        ids = np.append(ids, "HEPG2-99_1_B03")
        logits = np.vstack([logits, logits[:1]])
    else:
        ids = ids.copy()
        ids[1] = ids[0]
    path = tmp_path / "bad.npz"
    np.savez(path, id_code=ids, logits=logits)  # written by "another tool", not by rcic
    with pytest.raises((LogitsError, submit.SubmissionError)) as err:
        submit.run_submit([path], tiny_screen, tmp_path / "sub.csv")
    assert "bad.npz" in str(err.value)
    assert not (tmp_path / "sub.csv").exists()


def test_ensemble_rejects_files_with_other_wells(tiny_screen, tmp_path):
    _, test, labels = _truth(tiny_screen)
    _write_test_logits(tmp_path / "a.npz", test, _simulated_logits(labels, 2.0))
    write_logits(
        tmp_path / "b.npz", test.id_code.to_numpy()[2:], _simulated_logits(labels, 2.0)[2:]
    )
    with pytest.raises(submit.SubmissionError, match="b.npz: covers other wells.*2 missing"):
        submit.combine_logits([tmp_path / "a.npz", tmp_path / "b.npz"])


def test_validator_rejects_wrong_order_and_values(tiny_screen):
    sub = pd.read_csv(tiny_screen / "sample_submission.csv")
    submit.validate_submission(sub, tiny_screen)
    with pytest.raises(submit.SubmissionError, match="differ"):
        submit.validate_submission(sub.iloc[::-1].reset_index(drop=True), tiny_screen)
    with pytest.raises(submit.SubmissionError, match="integers"):
        submit.validate_submission(sub.assign(sirna=layout.N_TREATMENTS), tiny_screen)


def test_real_tables_submission_in_seconds(tmp_path):
    root = shared_or_skip() / "kaggle"
    test = pd.read_csv(root / "test.csv")
    logits = np.random.default_rng(0).normal(0, 1, (len(test), layout.N_CLASSES)).astype(np.float32)
    write_logits(tmp_path / "real.npz", test.id_code.to_numpy(), logits)
    res = submit.run_submit([tmp_path / "real.npz"], root, tmp_path / "sub.csv")
    assert len(res.submission) == 19897
    assert json.loads((tmp_path / "stages.json").read_text())["seconds"] < 60
    assert len(res.post.choices) == 18


def test_logits_roundtrip(tmp_path):
    ids = np.array(["A-01_1_B03", "A-01_1_B04"])
    write_logits(
        tmp_path / "x.npz",
        ids,
        np.zeros((2, layout.N_CLASSES)),
        temperature=2.0,
        sirna=np.array([1, -1]),
    )
    f = read_logits(tmp_path / "x.npz")
    assert f["id_code"].tolist() == ids.tolist() and float(f["temperature"]) == 2.0
    assert not list(tmp_path.glob("*.tmp*"))


def test_submit_and_evaluate_do_not_import_torch(tiny_screen, tmp_path):
    """The submission path is numpy/scipy only: `rcic submit` and `rcic evaluate` start fast."""
    import subprocess
    import sys

    _, test, labels = _truth(tiny_screen)
    _write_test_logits(tmp_path / "a.npz", test, _simulated_logits(labels, 2.0))
    sub, lab = tmp_path / "sub.csv", tiny_screen / "test_labels.csv"
    code = (
        "import sys\n"
        "from rcic import cli\n"
        f"assert cli.main(['submit', '--logits', r'{tmp_path / 'a.npz'}', '--metadata', "
        f"r'{tiny_screen}', '--out', r'{sub}', '--labels', r'{lab}']) == 0\n"
        f"assert cli.main(['evaluate', '--submission', r'{sub}', '--labels', r'{lab}']) == 0\n"
        "print('torch imported:', 'torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "torch imported: False" in out.stdout, out.stdout + out.stderr


@pytest.mark.parametrize("method", ["hungarian", "sinkhorn_hungarian"])
def test_one_per_plate_decisions_never_repeat_an_sirna(tiny_screen, method):
    _, test, labels = _truth(tiny_screen)
    wells = metadata.wells_of(metadata.load_metadata(tiny_screen))
    pg = rules.discover_groups(wells)
    for signal in (0.0, 1.0, 3.0):
        lp = plates.treatment_log_probs(_simulated_logits(labels, signal, seed=7))
        post = plates.postprocess(
            lp, test.experiment.to_numpy(), test.plate.to_numpy(), pg, well_method=method
        )
        frame = test[["experiment", "plate"]].assign(sirna=post.stages["wells"])
        assert not frame.duplicated().any(), (method, signal)
    assert "one siRNA per well per plate" in plates.WELL_DECISIONS[method]
    assert "may repeat" in plates.WELL_DECISIONS["sinkhorn"]


def _plates_with_signal(signal, scale, m=80, n=76, seed=0):
    """Two experiments of 4 plates, groups of m siRNAs, n wells a plate: logits scale * (signal *
    one-hot + N(0, 1)), so the calibrated temperature of log_softmax(logits) is scale / signal."""
    rng = np.random.default_rng(seed)
    groups = [np.arange(k * m, (k + 1) * m) for k in range(4)]
    rows, exps, pls, choices = [], [], [], {}
    for e in range(2):
        for p in range(1, 5):
            g = (p - 1 + e) % 4
            lab = rng.permutation(groups[g])[:n]
            z = rng.normal(0, 1, (n, layout.N_TREATMENTS))
            z[np.arange(n), lab] += signal
            rows.append(z * scale)
            exps += [f"E{e}"] * n
            pls += [p] * n
        choices[f"E{e}"] = plates.GroupChoice(
            f"E{e}", {p: (p - 1 + e) % 4 for p in range(1, 5)}, 1.0
        )
    pg = rules.PlateGroups(groups, {}, (0, 1, 2, 3), True, {})
    lp = plates.treatment_log_probs(np.concatenate(rows))
    return lp, np.array(exps), np.array(pls), choices, pg


@pytest.mark.parametrize("scale", [1.0, 4.0])
def test_temperature_from_the_plates_recovers_a_known_one(scale):
    """Real plate size (groups of 277, 272 wells), a strong model: within 20% of the truth."""
    signal = 4.0
    lp, exps, pls, choices, pg = _plates_with_signal(signal, scale, m=277, n=272)
    cal = plates.estimate_temperature(lp, exps, pls, choices, pg, max_plates=4)
    true = scale / signal
    assert cal.temperature == pytest.approx(true, rel=0.2), (cal.temperature, true)


def test_submit_calibrates_from_the_plates_only_when_asked_or_needed(tiny_screen, tmp_path):
    _, test, labels = _truth(tiny_screen)
    logits = _simulated_logits(labels, 4.0)
    _write_test_logits(tmp_path / "bare.npz", test, logits)  # no temperature stored
    kw = {"labels": tiny_screen / "test_labels.csv"}
    off = submit.run_submit(
        [tmp_path / "bare.npz"],
        tiny_screen,
        tmp_path / "a.csv",
        options=submit.SubmitOptions(calibrate="off"),
        **kw,
    )
    assert off.calibration == {"mode": "off"}
    auto = submit.run_submit([tmp_path / "bare.npz"], tiny_screen, tmp_path / "b.csv", **kw)
    assert auto.calibration["mode"] == "auto" and auto.calibration["estimate"] > 0
    assert auto.calibration["used"] == (2e-3 < auto.calibration["estimate"] < 5e2)
    assert "no fitted temperature" in auto.calibration["reason"] or not auto.calibration["used"]
    report = json.loads((tmp_path / "stages.json").read_text())
    assert report["calibration"]["estimate"] == pytest.approx(auto.calibration["estimate"])


def test_class_bias_of_an_experiment_is_removed_and_the_estimate_survives_it():
    """A class raised in every well of an experiment breaks the one-per-plate model; removing each
    experiment's class means restores the temperature estimate (it hit its bound before)."""
    signal, scale = 4.0, 1.0
    lp, exps, pls, choices, pg = _plates_with_signal(signal, scale, m=277, n=272)
    bias = np.zeros_like(lp)
    rng = np.random.default_rng(5)
    for e in np.unique(exps):
        bias[exps == e] = rng.normal(0, 2.0, lp.shape[1])  # 2 logits: a strong batch effect
    biased = calibration.log_softmax(lp + bias)
    cleaned = plates.remove_class_bias(biased, exps)
    assert np.abs(cleaned - plates.remove_class_bias(lp, exps)).max() < 1e-3
    est = plates.estimate_temperature(cleaned, exps, pls, choices, pg, max_plates=4).temperature
    assert est == pytest.approx(scale / signal, rel=0.2)
    raw = plates.estimate_temperature(biased, exps, pls, choices, pg, max_plates=4).temperature
    assert abs(np.log(raw / (scale / signal))) > abs(np.log(est / (scale / signal)))


def test_make_submission_works_in_memory(tiny_screen):
    """The notebook route: arrays and frames in, a submission and stage scores out, no files."""
    wells, test, labels = _truth(tiny_screen)
    lp = plates.treatment_log_probs(_simulated_logits(labels, 4.0), 0.25)
    pg = rules.discover_groups(wells)
    res = submit.make_submission(
        lp, test, pg, submit.SubmitOptions(well_method="hungarian"), truth=labels
    )
    assert list(res.submission.id_code) == list(test.id_code)
    assert res.scores["wells"]["overall"] >= res.scores["ensemble"]["overall"]
    for (_, _), sub in res.submission.assign(
        exp=test.experiment.values, plate=test.plate.values
    ).groupby(["exp", "plate"]):
        assert sub.sirna.is_unique
    with pytest.raises(submit.SubmissionError, match="rows of log-probabilities"):
        submit.make_submission(lp[:-1], test, pg)


@pytest.mark.parametrize("scale", [1.0, 60.0])
def test_group_log_probs_match_an_exact_log_sum_exp(scale):
    """The float32 one-pass form agrees with a float64 log-sum-exp per group, also when whole groups
    sit hundreds of nats below a well's best class (the rows it must recompute)."""
    rng = np.random.default_rng(0)
    groups = [np.sort(g) for g in np.array_split(rng.permutation(layout.N_TREATMENTS), 4)]
    pg = rules.PlateGroups(groups=groups, plate_group={}, canonical=(0, 1, 2, 3), cyclic=True)
    z = rng.normal(0, 1, (50, layout.N_TREATMENTS)) * scale
    z[np.arange(50), groups[0][rng.integers(0, len(groups[0]), 50)]] += 10 * scale
    lp = calibration.log_softmax(z)
    zz = lp.astype(np.float64)
    exact = np.stack(
        [
            np.log(np.exp(zz[:, g] - zz[:, g].max(1, keepdims=True)).sum(1)) + zz[:, g].max(1)
            for g in groups
        ],
        axis=1,
    )
    got = plates.group_log_probs(lp, pg)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, exact, atol=1e-4 * max(1.0, scale))


def test_golden_section_finds_the_minimum_within_its_tolerance():
    for target in (-5.0, 0.3, 6.0):
        got = plates.golden_section(lambda x, t=target: (x - t) ** 2 + 1.0, -6.9, 6.9, tol=0.02)
        assert abs(got - target) < 0.02
    # at a bound when the minimum lies outside the range
    assert plates.golden_section(lambda x: x, -2.0, 2.0, tol=0.01) < -1.99


def _marginal_by_brute_force(lp, exps, pls, pg):
    """Each well's argmax over siRNAs of sum_o P(o | wells) P(siRNA | well, o's group of its plate),
    P(o | wells) from each well's probability of o's group, written out order by order."""
    p = np.exp(lp.astype(np.float64))
    out = np.empty(len(lp), dtype=int)
    orders = pg.candidate_orders()
    for e in np.unique(exps):
        on = exps == e
        ll = np.array(
            [
                sum(
                    np.log(p[on & (pls == k)][:, pg.groups[o[k - 1]]].sum(1)).sum()
                    for k in np.unique(pls[on])
                )
                for o in orders
            ]
        )
        weight = np.exp(ll - ll.max())
        weight /= weight.sum()
        for i in np.flatnonzero(on):
            score = np.zeros(p.shape[1])
            for o, w in zip(orders, weight, strict=True):
                g = pg.groups[o[pls[i] - 1]]
                score[g] += w * p[i, g] / p[i, g].sum()
            out[i] = score.argmax()
    return out


def test_marginal_groups_weigh_every_order_by_its_posterior():
    """A weak model on small plates: the orders are uncertain, and `marginal`'s groups stage is the
    Bayes decision over them, which the most likely order alone (`loglik`) is not."""
    lp, exps, pls, _, pg = _plates_with_signal(1.0, 1.0, m=6, n=5, seed=3)
    lp = calibration.log_softmax(
        np.where(np.arange(lp.shape[1]) < 24, lp, -60.0)
    )  # 24 siRNAs in use
    soft = plates.postprocess(lp, exps, pls, pg, group_method="marginal")
    hard = plates.postprocess(lp, exps, pls, pg, group_method="loglik")
    assert min(c.posterior for c in soft.choices.values()) < 0.9  # the orders are uncertain
    np.testing.assert_array_equal(
        soft.stages["groups"], _marginal_by_brute_force(lp, exps, pls, pg)
    )
    assert (soft.stages["groups"] != hard.stages["groups"]).any()
    for choice in soft.choices.values():
        for plate, q in choice.group_posterior.items():
            assert q.sum() == pytest.approx(1.0)
            assert choice.plate_posterior[plate] == pytest.approx(q[choice.plate_group[plate]])


def test_marginal_groups_equal_the_chosen_order_when_it_is_sure():
    lp, exps, pls, _, pg = _plates_with_signal(4.0, 1.0, m=20, n=16, seed=4)
    soft = plates.postprocess(lp, exps, pls, pg, group_method="marginal", marginals=True)
    hard = plates.postprocess(lp, exps, pls, pg, group_method="loglik", marginals=True)
    assert min(c.posterior for c in soft.choices.values()) > 0.999
    for stage in ("groups", "wells"):
        np.testing.assert_array_equal(soft.stages[stage], hard.stages[stage])
    np.testing.assert_allclose(soft.confidence, hard.confidence, rtol=1e-6)
