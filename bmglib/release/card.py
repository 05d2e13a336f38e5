"""The dataset card (a datasheet) and the model card of a release, rendered from its evidence.

Both are Markdown with the YAML header the Hugging Face Hub reads, rendered by jinja2 from
``templates/*.md.jinja``. Every number comes in through :class:`Evidence` (stored artifacts
and the released metadata, :mod:`bmglib.release.evidence`); the templates hold only prose.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import jinja2
import pandas as pd

from bmglib import report
from bmglib.data import schema
from bmglib.release import evidence

TEMPLATES = Path(__file__).with_name("templates")
ROWS = [schema.FST_ROMAN[f] for f in schema.FST_LEVELS] + list(schema.FST_GROUPS) + ["overall"]
SIZE_CATEGORIES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"),
                   (1_000_000, "100K<n<1M"), (10_000_000, "1M<n<10M"))
#: 04 columns added by later work (precision/recall-style fidelity), shown when present
EXTRA_FIDELITY = ("precision", "recall", "density", "coverage")


@dataclass
class Evidence:
    """What the cards state. Tables are :mod:`bmglib.release.evidence` outputs (None = not
    computed); ``fst_adherence`` is None for a generator not conditioned on FST."""

    fidelity: pd.DataFrame | None
    fst_adherence: pd.DataFrame | None
    lesion_adherence: pd.DataFrame
    memorisation: pd.DataFrame | None
    light_share: dict | None
    near_copy: float  # the memorisation threshold (the profile's ``metrics.near_copy``)
    fst_distribution: pd.DataFrame | None = None  # ITA-estimated FST when not conditioned
    notes: list[str] = field(default_factory=list)


def _ok(x) -> bool:
    return x is not None and not (isinstance(x, float) and math.isnan(x))


def _with_ceiling(value, ceiling) -> str:
    if not _ok(value):
        return "—"
    return f"{value:.2f}" + (f" ({ceiling:.2f})" if _ok(ceiling) else "")


def _row_key(row: str):
    """``"III"`` → 3 (the adherence tables' index), groups and ``overall`` unchanged."""
    return next((f for f in schema.FST_LEVELS if schema.FST_ROMAN[f] == row), row)


def _fidelity_cells(t: pd.DataFrame) -> dict[str, dict[str, str]]:
    by_group = t.set_index("group")
    out = {}
    for g in ROWS:
        r = by_group.loc[g] if g in by_group.index else None
        if r is None or not r["n_used"] > 0:
            out[g] = {"N for FID": "0", "FID [interval]": "— (too few images)", "KID [95% CI]": "—"}
            continue
        out[g] = {"N for FID": str(int(r["n_used"])),
                  "FID [interval]": f"{r['fid']:.1f} [{r['fid_boot_low']:.1f}, {r['fid_boot_high']:.1f}]",
                  "KID [95% CI]": f"{r['kid']:.3f} [{r['kid_ci_low']:.3f}, {r['kid_ci_high']:.3f}]"}
        out[g] |= {c: f"{r[c]:.3f}" for c in EXTRA_FIDELITY if c in r.index and _ok(r[c])}
    return out


def per_fst(ev: Evidence, test_meta: pd.DataFrame) -> dict:
    """The per-skin-type table of both cards: ``{"text", "table" (Markdown), "notes"}``."""
    n = {schema.FST_ROMAN[f]: int((test_meta["plan_fst"] == f).sum()) for f in schema.FST_LEVELS}
    n |= {g: int(test_meta["plan_fst"].isin(fs).sum()) for g, fs in schema.FST_GROUPS.items()}
    rows = {g: {"images": str(n.get(g, len(test_meta)))} for g in ROWS}
    notes = list(ev.notes)
    if ev.fidelity is not None:
        for g, cells in _fidelity_cells(ev.fidelity).items():
            rows[g] |= cells
        notes.append("FID and KID against the real test images of the same FST (group), at equal N within "
                     "each level (`N for FID`; notebook 04, TF-Inception features). FID: percentile interval "
                     "of bootstrap resamples (it sits above the point estimate: read it as sampling spread); "
                     "KID: bootstrap 95% CI over images. FID is biased upwards at small N: compare rows, "
                     "not published values.")
    else:
        notes.append("FID/KID: not computed: run notebook 04 for this evaluation set.")
    for g in ROWS:
        k = _row_key(g)
        if ev.fst_adherence is not None:
            a = ev.fst_adherence.loc[k] if k in ev.fst_adherence.index else None
            rows[g]["FST by ITA (real)"] = "—" if a is None else _with_ceiling(a["ita"], a["ita_real"])
            rows[g]["FST by auditor (real)"] = "—" if a is None else _with_ceiling(a["auditor"], a["auditor_real"])
        les = ev.lesion_adherence.loc[k] if k in ev.lesion_adherence.index else None
        rows[g]["lesion (real)"] = "—" if les is None else _with_ceiling(les["lesion"], les["lesion_real"])
        if ev.memorisation is not None:
            m = ev.memorisation.loc[g] if g in ev.memorisation.index else None
            rows[g]["near copies"] = "—" if m is None else f"{int(m['n_near_copy'])}/{int(m['n_synth'])}"
    if ev.fst_adherence is not None:
        notes.append("FST by ITA / by auditor: share of images whose estimated FST is the requested one; in "
                     "brackets the same estimator on the real test images against their labels (the "
                     "ceiling: both read neighbouring types as each other on real skin too).")
    else:
        dist = ", ".join(f"{schema.FST_ROMAN[int(f)]} {r['share']:.2f}" for f, r in ev.fst_distribution.iterrows())
        notes.append(f"Not conditioned on FST: rows are the plan cell the image stands in for; the ITA-estimated "
                     f"FST of the images is {dist}.")
    notes.append("Lesion: share of images the lesion CNN (trained on the real training split) reads as the "
                 "requested lesion; in brackets its accuracy on the real test images of that FST.")
    if ev.memorisation is not None:
        rare = ev.memorisation.loc["rare cells"] if "rare cells" in ev.memorisation.index else None
        rare_text = "" if rare is None or rare["n_synth"] == 0 else (
            f"; in the rare training cells: {int(rare['n_near_copy'])}/{int(rare['n_synth'])}")
        notes.append(f"Near copies: images whose nearest real training image (Inception features) is closer "
                     f"than {ev.near_copy:g} × the median real–real nearest-neighbour distance (notebook 04; the "
                     f"threshold is the profile's `metrics.near_copy`){rare_text}. The check flags smooth "
                     "copies (colour, brightness, blur), not noisy ones.")
    else:
        notes.append("Memorisation: not computed: run notebook 04 for this evaluation set.")
    table = pd.DataFrame(rows).T.rename_axis("FST").fillna("—")
    return {"text": f"{len(test_meta)} images of the balanced `test` split; one row per requested FST "
                    "(plan cell), the two FST groups, and all.",
            "table": report.to_markdown(table), "notes": notes}


def light_share_text(share: dict | None) -> str:
    """04's II–III share sentence, or the note that it was not computed."""
    if share is None:
        return "Share of images read as FST II–III where V–VI was asked: not computed: run notebook 04."
    return (f"Share of images the ITA reads as FST II–III, over {share['over']} (the seed paper says >90% "
            f"without FST conditioning): {share['share']:.3f} [{share['ci_low']:.3f}, {share['ci_high']:.3f}] "
            f"(bootstrap 95% CI, n = {int(share['n'])}; notebook 04).")


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` value for ``n`` instances."""
    return next((name for limit, name in SIZE_CATEGORIES if n < limit), "n>10M")


def composition_markdown(meta: pd.DataFrame) -> str:
    return report.to_markdown(evidence.composition(meta))


def render(template: str, **context) -> str:
    """Render ``templates/<template>`` (undefined names are an error, not an empty string)."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=False)
    return env.get_template(template).render(**context)


def limits(sources: tuple[str, ...], image_size: int) -> list[str]:
    """The known limits both cards list."""
    out = []
    if "synthetic" in sources:
        out.append("The generator was trained on bmg's embedded procedural images (rendered lesions on skin "
                   "colours drawn per FST in CIELab), not on photographs of patients: the images say nothing "
                   "about real skin and serve method development only.")
    out += [f"{image_size}×{image_size} px: far below clinical or dermoscopic resolution; fine structure "
            "(pigment network, vessels) is not represented.",
            "The FST and lesion labels are requests to the generator, not annotations; the estimators that "
            "check them read neighbouring skin types (IV/V above all) as each other even on real skin.",
            "FID/KID at small N are noisy and biased; the near-copy check sees smooth copies only."]
    return out
