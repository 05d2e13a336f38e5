"""The VAE audit of notebook 07 end to end on a tiny generated dataset: every step's result
object holds its tables with the right rows and Ns, the report has every section, and the
figures are written. Tiny models; a few seconds."""

from __future__ import annotations

import dataclasses
import json

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from bmglib import config, paths  # noqa: E402
from bmglib.data import schema  # noqa: E402
from bmglib.vae import audit, model  # noqa: E402

TINY = {"vae.image_size": 16, "vae.width": 4, "vae.latent_dim": 4, "vae.n_train": 48,
        "vae.epochs": 1, "vae.feature_width": 4, "vae.feature_epochs": 1, "vae.sweep": (0.1, 0.3),
        "vae.laplace_fit": 16, "vae.ggn_probes": 1, "vae.score_probes": 2, "vae.n_boot": 20,
        "vae.n_isic": 6}
N_TEST, N_ISIC = 48, 6


@pytest.fixture(scope="module")
def study(tiny_synthetic, tmp_path_factory):
    """Every step of the audit on the tiny pool (train/val) and balanced test set."""
    pool, test = tiny_synthetic
    torch.set_num_threads(1)
    meta = pd.concat([pool.assign(split=np.where(np.arange(len(pool)) % 4 == 0, "val", "train")),
                      test.assign(split="test")], ignore_index=True)
    cfg = config.get_config("smoke", TINY)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BMG_DATA_ROOT", str(tmp_path_factory.mktemp("data")))
        data = audit.audit_data(meta, cfg.vae.image_size, "synthetic", "smoke")
        mixes = audit.train_models(data, cfg.vae, progress=False)
        rec = audit.reconstruction(mixes, data, cfg.vae)
        unc = audit.uncertainty(mixes, data, rec, cfg.vae, progress=False)
        art = audit.artefacts(mixes, data, unc, cfg.vae)
        isic = audit.isic_study(mixes, unc, cfg.vae, table=test.iloc[::-1])  # any images stand in
    return cfg, data, mixes, audit.AuditResult(rec, unc, art, isic)


def test_data_and_models(study):
    cfg, data, mixes, _ = study
    sizes = data.sizes()
    assert sizes.loc["test", "n"] == N_TEST and (sizes.loc["test", [schema.FST_ROMAN[f] for f in schema.FST_LEVELS]] == 8).all()
    assert data.x_test.shape == (N_TEST, 3, 16, 16) and data.fst_test.shape == (N_TEST,)
    assert list(mixes.runs) == model.mix_names(cfg.vae)
    assert list(mixes.last_epoch().index) == list(mixes.runs) and "mse" in mixes.last_epoch()
    assert mixes.feature_report["n_val"] == (data.metadata["split"] == "val").sum()


def test_reconstruction_tables(study):
    _, _, mixes, result = study
    rec = result.reconstruction
    n_groups = 6 + 2 + 1  # FST I..VI, I-III, IV-VI, overall
    assert len(rec.per_fst) == len(mixes.runs) * len(audit.METRICS) * n_groups
    assert (rec.per_fst.loc[rec.per_fst["group"] == "overall", "n"] == N_TEST).all()
    assert set(rec.compared()["mix"]) == set(audit.COMPARED)
    assert len(rec.gaps) == len(audit.COMPARED) * len(audit.METRICS)
    assert ((rec.gaps["n_a"] == N_TEST / 2) & (rec.gaps["n_b"] == N_TEST / 2)).all()
    read = audit.read_gaps(rec.gaps)
    assert read["reading"].str.match(r"IV-VI (worse|better)").all()
    for metric, curve in rec.curves.items():
        assert metric in curve and len(curve) == len(mixes.runs) * 6
        assert curve.groupby("mix")["share"].sum().round(6).eq(1).all()
    assert rec.shares().shape == (6, len(mixes.runs))
    assert (rec.sweep_change["change"] == "vvi:0.1 - vvi:0.3").all()


def test_uncertainty_artefacts_and_isic(study):
    _, _, _, result = study
    unc, art, isic = result.uncertainty, result.artefacts, result.isic
    assert list(unc.scores) == ["encoder variance", *audit.LAPLACE_FITS]
    assert all(s.shape == (N_TEST,) and np.isfinite(s).all() for s in unc.scores.values())
    assert len(unc.correlations) == len(unc.scores) * len(unc.targets)
    assert (unc.correlations["n"] == N_TEST).all()
    assert len(unc.by_fst) == len(unc.scores) * 9
    summary = unc.posterior_summary()
    assert list(summary.index) == list(audit.LAPLACE_FITS) and (summary["n"] == N_TEST).all()
    assert art.masks["any"].shape == (N_TEST, 16, 16) and art.recon.shape == (N_TEST, 3, 16, 16)
    assert set(art.auroc["map"]) <= {*audit.LAPLACE_FITS, "reconstruction error"}
    assert isic.x.shape == (N_ISIC, 3, 16, 16)
    assert isic.by_ita.loc[isic.by_ita["group"] == "overall", "n"].eq(N_ISIC).all()
    assert (isic.by_ita_present()["n"] > 0).all()
    assert list(isic.ood["score"]) == [*unc.scores, "mse"]
    assert ((isic.ood["n_pos"] == N_ISIC) & (isic.ood["n_neg"] == N_TEST)).all()


def test_parts_without_masks_or_isic_are_skipped(study, monkeypatch, tmp_path):
    cfg, data, mixes, result = study
    other = dataclasses.replace(data, dataset="ddi")
    assert audit.artefacts(mixes, other, result.uncertainty, cfg.vae) is None
    monkeypatch.setattr(paths, "SHARED_REAL", tmp_path)  # no isic2017 folder
    assert audit.isic_study(mixes, result.uncertainty, cfg.vae) is None
    sections = audit.AuditResult(result.reconstruction, result.uncertainty, None, None).sections()
    assert sections["Artefact pixel AUROC (synthetic test images with the artefact)"].empty
    with pytest.raises(ValueError, match="needs train and test rows"):
        audit.audit_data(data.metadata[data.metadata["split"] != "test"], 16, "synthetic")


def test_report_and_figures(study, tmp_path):
    cfg, data, mixes, result = study
    sections = result.sections()
    assert len(sections) == 10 and all(isinstance(t, pd.DataFrame) and len(t) for t in sections.values())
    path = audit.write_report(tmp_path, result, cfg, data, mixes)
    text = path.read_text()
    assert text.startswith("# VAE fairness audit · synthetic · smoke")
    assert all(f"## {name}" in text for name in sections) and f"test n={N_TEST}" in text
    stamp = json.loads((tmp_path / "vae_audit_provenance.json").read_text())
    assert stamp["runs"] == {m: r.key for m, r in mixes.runs.items()}
    assert stamp["config"]["vae"]["n_train"] == cfg.vae.n_train == 48
    figures = {
        "recon": lambda p: audit.plot_recon_per_fst(result.reconstruction, data.tag, save_to=p),
        "curve": lambda p: audit.plot_representation(result.reconstruction, save_to=p),
        "score": lambda p: audit.plot_score_vs_error(result.uncertainty, data.fst_test, data.tag, save_to=p),
        "maps": lambda p: audit.plot_artefact_maps(result.artefacts, data, save_to=p),
        "isic": lambda p: audit.plot_isic_maps(result.isic, mixes.runs["natural"].model, save_to=p),
    }
    for name, plot in figures.items():
        plot(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0, name
