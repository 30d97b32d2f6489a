import hashlib
import json

import numpy as np
import pandas as pd
import pytest

from rcic import layout
from rcic.data import metadata, rules
from rcic.synthetic import cellsim, synth

DEMO = synth.PRESETS["demo"]


def _full_wells(screen):
    """All wells with the hidden test labels joined back in (the generator's truth)."""
    wells = metadata.wells_of(metadata.load_metadata(screen))
    labels = pd.read_csv(screen / "test_labels.csv").set_index("id_code")["sirna"]
    hidden = wells.sirna == layout.UNKNOWN
    wells.loc[hidden, "sirna"] = wells.loc[hidden, "id_code"].map(labels)
    return wells


def test_tiny_screen_obeys_the_real_rules(tiny_screen):
    wells = _full_wells(tiny_screen)
    findings = rules.check_rules(wells)
    assert all(f.ok for f in findings), [str(f) for f in findings]
    assert wells.well.map(layout.is_usable_well).all()
    neg = wells[wells.well_type == "negative_control"]
    assert len(neg) > wells.groupby(["experiment", "plate"]).ngroups  # B02 plus a few more
    assert not (pd.read_csv(tiny_screen / "test.csv").columns == "sirna").any()


def test_groups_and_shifts_match_truth(tiny_screen):
    truth = json.loads((tiny_screen / "synth.json").read_text())
    assert truth["generator"] == cellsim.GENERATOR  # which simulator drew the screen
    wells = _full_wells(tiny_screen)
    pg = rules.discover_groups(wells)
    assert sorted(map(tuple, truth["groups"])) == sorted(tuple(g) for g in pg.groups)
    train = rules.discover_groups(wells[wells.split == "train"])
    train_shifts = {
        s for e, s in truth["shifts"].items() if e in set(wells[wells.split == "train"].experiment)
    }
    test_shifts = {
        s
        for e, s in truth["shifts"].items()
        if e not in set(wells[wells.split == "train"].experiment)
    }
    assert test_shifts - train_shifts, "some shift must occur only in test experiments"
    assert train.cyclic and len({s for s in train.shifts.values()}) == len(train_shifts)


@pytest.mark.parametrize("breakage", ["repeat", "non-cyclic", "mixed-groups"])
def test_broken_layout_fails_the_checks(tiny_screen, breakage):
    wells = _full_wells(tiny_screen)
    treat = wells[wells.well_type == "treatment"]
    if breakage == "repeat":  # an siRNA twice on one plate
        i, j = treat.index[:2]
        wells.loc[j, "sirna"] = wells.loc[i, "sirna"]
        failing = "one well per siRNA per plate"
    elif breakage == "non-cyclic":  # swap the groups of two plates of one experiment
        exp = wells.experiment.iloc[0]
        p1, p2 = (
            (wells.experiment == exp) & (wells.plate == 1),
            (wells.experiment == exp) & (wells.plate == 2),
        )
        wells.loc[p1, "plate"], wells.loc[p2, "plate"] = 2, 1
        failing = "cyclic plate orders"
    else:  # one plate draws from two groups: they merge into one
        a = treat.index[0]
        other = treat[
            (treat.experiment == treat.experiment.iloc[0]) & (treat.plate != treat.plate.iloc[0])
        ].sirna.iloc[0]
        wells.loc[a, "sirna"] = other
        failing = "disjoint siRNA groups"
    by_rule = {f.rule: f for f in rules.check_rules(wells)}
    assert not by_rule[failing].ok


def test_same_seed_same_bytes(tmp_path):
    def digest(root):
        h = hashlib.sha256()
        for p in sorted(root.rglob("*")):
            if p.is_file():
                h.update(str(p.relative_to(root)).encode() + p.read_bytes())
        return h.hexdigest()

    small = synth.Preset(
        "t",
        group_size=2,
        n_positive=1,
        train_experiments=(1, 1, 1, 1),
        test_experiments=(1, 0, 0, 0),
        image_size=24,
        cell_radius=5.0,
        missing_wells=1,
    )
    a = synth.generate(tmp_path / "a", small, seed=7, workers=1)
    b = synth.generate(tmp_path / "b", small, seed=7, workers=2)
    c = synth.generate(tmp_path / "c", small, seed=8, workers=1)
    assert digest(a) == digest(b)
    assert digest(a) != digest(c)


def test_images_are_dark_cells_with_phenotypes(tiny_screen, tiny_sites):
    from rcic.data.images import load_site

    treat = tiny_sites[tiny_sites.site == 1]
    means = np.stack(
        [
            load_site(tiny_screen, r.split, r.experiment, r.plate, r.well, 1).mean(axis=(1, 2))
            for r in treat.itertuples()
        ]
    )
    assert 5 < means.mean() < 45  # dark, like RxRx1 (mean about 10-40 of 255)
    # channels carry different structure: their spatial patterns are not copies of each other
    r = treat.iloc[0]
    site = (
        load_site(tiny_screen, r.split, r.experiment, r.plate, r.well, 1)
        .reshape(6, -1)
        .astype(float)
    )
    corr = np.corrcoef(site)
    assert corr[0, 2] < 0.9 and corr[0, 4] < 0.9


def test_phenotypes_structure():
    ph = cellsim.sirna_phenotypes(DEMO.strength, DEMO.n_pathways, seed=0)
    nt, neg = layout.N_TREATMENTS, layout.NEGATIVE_ID
    assert ph.effect.shape == (len(cellsim.CELL_TYPES), layout.N_CLASSES, cellsim.N_DIMS)
    assert np.all(ph.effect[:, neg] == 0) and ph.penetrance[neg] == 0
    size = np.linalg.norm(ph.effect[..., : cellsim.N_MORPH], axis=-1)  # (cell types, classes)
    assert size[:, nt:neg].mean() > 2 * np.median(size[:, :nt])  # positive controls are strong
    s = ph.strength[:nt]
    assert np.median(s) < s.mean() and (s > 2 * np.median(s)).mean() < 0.15  # most weak, few strong
    assert ph.penetrance[:nt].min() > 0.3 and ph.penetrance[:nt].max() < 1.0  # partial penetrance
    silent = (size[:, :nt] == 0).any(axis=0).mean()
    assert 0.1 < silent < 0.5  # some siRNAs act in only some cell types
    # the effect lives mostly in arrangement dims, not in brightness
    morph = np.abs(ph.effect[..., : cellsim.N_MORPH]).sum(-1)
    intensity = np.abs(ph.effect[..., cellsim.N_MORPH :]).sum(-1) * cellsim.INTENSITY_EFFECT
    assert (intensity[:, :nt] < 0.2 * morph[:, :nt] + 1e-9).mean() > 0.9
    # siRNAs of the same pathway are more alike than siRNAs of different pathways
    e = ph.effect[1, :200, : cellsim.N_MORPH]
    sim = np.corrcoef(e)
    same = sim[np.equal.outer(ph.pathway[:200], ph.pathway[:200]) & ~np.eye(200, dtype=bool)]
    diff = sim[~np.equal.outer(ph.pathway[:200], ph.pathway[:200])]
    assert np.nanmean(same) > np.nanmean(diff) + 0.15


def _render(
    sirna: int, cell_type: str = "HUVEC", well: str = "E10", exp: str = "HUVEC-01", n: int = 6
):
    ph = cellsim.sirna_phenotypes(DEMO.strength, DEMO.n_pathways, seed=0)
    batch = cellsim.plate_batch(0, exp, 1)
    cond = cellsim.well_conditions(0, exp, 1, well, sirna, cell_type, ph, batch)
    return np.stack(
        [cellsim.render_site(cellsim.seeded(0, "t", k), 64, 15.0, cond, batch) for k in range(n)]
    )


def test_batch_effects_go_beyond_gain_and_offset():
    a, b = cellsim.plate_batch(0, "HUVEC-01", 1), cellsim.plate_batch(0, "HUVEC-02", 1)
    assert not np.allclose(a.gamma, 1) and not np.allclose(a.gamma, b.gamma)  # non-linear response
    assert a.pheno_scale != b.pheno_scale and not np.allclose(a.pheno_shift, b.pheno_shift)
    c = cellsim.plate_batch(0, "HUVEC-01", 2)  # same experiment, another plate
    assert np.allclose(a.gamma, c.gamma) and not np.allclose(a.field, c.field)
    ph = cellsim.sirna_phenotypes(DEMO.strength, DEMO.n_pathways, seed=0)
    edge = cellsim.well_conditions(0, "HUVEC-01", 1, "B05", 3, "HUVEC", ph, a)
    inner = cellsim.well_conditions(0, "HUVEC-01", 1, "H12", 3, "HUVEC", ph, a)
    assert edge.density / inner.density < 1.0 / a.edge_density * 1.5  # outer wells sparser...
    assert a.edge_density < 1.0 and a.edge_intensity > 1.0  # ...and brighter
    # a z-score per plate cannot undo a power law: it is not affine
    x = np.linspace(5, 120, 50)
    y = 255 * (x / 255) ** a.gamma[0]
    resid = y - np.polyval(np.polyfit(x, y, 1), x)
    assert np.abs(resid).max() > 1.0


def test_phenotype_shows_in_shape_not_in_channel_means():
    """A strong siRNA changes the images, but its channel means stay within the spread that
    nuisance alone gives between wells of the negative control."""
    ph = cellsim.sirna_phenotypes(DEMO.strength, DEMO.n_pathways, seed=0)
    nt = layout.N_TREATMENTS
    strong = int(np.argmax(np.where(np.arange(layout.N_CLASSES) < nt, ph.strength, 0)))
    wells = ("C04", "E10", "G15", "J20", "L06", "N13")
    neg = np.log(
        np.stack([_render(layout.NEGATIVE_ID, well=w).mean(axis=(0, 2, 3)) for w in wells])
    )
    spread = neg.std(0)
    treated = _render(strong).astype(np.float32)
    control = _render(layout.NEGATIVE_ID).astype(np.float32)  # the same well, E10
    assert np.abs(treated - control).mean() > 0.5  # the images differ (same well, same draws)
    shift = np.log(treated.mean(axis=(0, 2, 3))) - np.log(control.mean(axis=(0, 2, 3)))
    assert (np.abs(shift) < 2 * spread).all(), (shift, spread)  # means: within the nuisance


def test_layout_from_real_tables(tmp_path):
    from .conftest import shared_or_skip

    root = shared_or_skip() / "kaggle"
    wells, truth = synth.layout_from(root, seed=0)
    findings = rules.check_rules(wells)
    assert all(f.ok for f in findings), [str(f) for f in findings]
    real = metadata.wells_of(metadata.load_metadata(root))
    assert len(wells) == len(real) and (wells.id_code.to_numpy() == real.id_code.to_numpy()).all()
    test_exps = set(real[real.split == "test"].experiment)
    train_shifts = {s for e, s in truth["shifts"].items() if e not in test_exps}
    assert {s for e, s in truth["shifts"].items() if e in test_exps} - train_shifts


def test_every_cell_shows_its_front():
    """The polarity dims are read against a cell's front, so the front must show: its actin edge
    lies at the opposite end of the cell from where the nucleus is set back, in every frame."""
    zero = np.zeros(cellsim.N_DIMS)
    dy, dx = np.mgrid[-30:31, -30:31].astype(np.float32)
    for seed in range(20):
        rng = np.random.default_rng(seed)
        theta = rng.uniform(0, np.pi)
        f = cellsim._frame(rng, zero, dx, dy, theta, (14.0, 1.8, 7.0, 1.3))
        front = np.array([np.cos(theta), np.sin(theta)])  # the cell's long axis, either end
        edge = cellsim._leading_edge(f)
        at_edge = np.array([(edge * dx).sum(), (edge * dy).sum()]) / edge.sum()
        at_nucleus = np.array([(f.nucleus * dx).sum(), (f.nucleus * dy).sum()]) / f.nucleus.sum()
        # the edge sits well out along the axis, the nucleus a little the other way
        assert abs(at_edge @ front) > 5.0, seed
        assert (at_edge @ front) * (at_nucleus @ front) < 0, seed
