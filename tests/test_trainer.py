"""The one training loop of the small models: callbacks, epoch selection, exact resume, data order."""

import numpy as np
import pytest
import torch
from torch import nn

from bmglib import trainer


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(4, 2))


def _data(n: int = 40) -> trainer.TrainData:
    g = torch.Generator().manual_seed(0)
    y = torch.arange(n) % 2
    x = torch.rand(n, 3, 8, 8, generator=g) * 2 - 1
    x[y == 1, 0] += 0.5  # a learnable cue
    return trainer.shuffled(x, y)


def _ce(model, x, y):
    return nn.functional.cross_entropy(model(x), y)


CFG = trainer.FitConfig(epochs=3, batch_size=16, lr=1e-2, schedule="onecycle",
                        augment="flip_rot90_per_batch", seed=1, progress=False)


def _equal(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_callbacks_see_every_epoch_in_order():
    calls, starts = [], []

    class Hook(trainer.Callback):
        def on_fit_start(self, state):
            starts.append(state.epoch)

        def on_epoch_end(self, state, row):
            calls.append(("hook", state.epoch, row["epoch"]))

    res = trainer.fit(_model(), _data(), CFG, _ce,
                      callbacks=[lambda epoch, row: calls.append(("fn", epoch, row["epoch"])), Hook()])
    assert starts == [0]
    assert calls == [(kind, e, e) for e in (1, 2, 3) for kind in ("fn", "hook")]
    h = res.history
    assert list(h["epoch"]) == [1, 2, 3] and res.best_epoch == 3 and list(h["best"]) == [False, False, True]
    assert {"loss", "lr", "seconds", "images_per_s"} <= set(h.columns) and np.isfinite(h["loss"]).all()
    assert not res.model.training


def test_the_best_validation_epoch_is_kept_and_nan_never_replaces_it():
    scores = iter([0.2, 0.9, 0.5, float("nan")])
    weights = {}

    def keep(epoch, row):
        weights[epoch] = {k: v.clone() for k, v in model.state_dict().items()}

    model = _model()
    cfg = trainer.FitConfig(**{**vars(CFG), "epochs": 4, "select": "val_score"})
    res = trainer.fit(model, _data(), cfg, _ce, validate=lambda m: {"val_score": next(scores)},
                      callbacks=[keep])
    assert res.best_epoch == 2 and list(res.history["best"]) == [False, True, False, False]
    assert list(res.history["val_score"][:3]) == [0.2, 0.9, 0.5]
    assert all(torch.equal(v, weights[2][k]) for k, v in res.model.state_dict().items())
    first_nan = trainer.fit(_model(), _data(), trainer.FitConfig(**{**vars(cfg), "epochs": 2}), _ce,
                            validate=lambda m: {"val_score": float("nan")})
    assert first_nan.best_epoch == 1


class Stop(Exception):
    pass


def test_an_interrupted_fit_resumes_to_the_same_weights(tmp_path):
    straight = trainer.fit(_model(), _data(), CFG, _ce, callbacks=[trainer.Checkpoint(tmp_path / "a", "run")])

    def stop(epoch, row):
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        trainer.fit(_model(), _data(), CFG, _ce, callbacks=[trainer.Checkpoint(tmp_path / "b", "run"), stop])
    resumed = trainer.fit(_model(), _data(), CFG, _ce, callbacks=[trainer.Checkpoint(tmp_path / "b", "run")])
    assert straight.resumed_from == 0 and resumed.resumed_from == 2
    assert _equal(straight.model, resumed.model)
    cols = ["epoch", "loss", "lr"]
    assert straight.history[cols].equals(resumed.history[cols])
    other = trainer.fit(_model(), _data(), CFG, _ce, callbacks=[trainer.Checkpoint(tmp_path / "b", "other")])
    assert other.resumed_from == 0  # a checkpoint of another run is never resumed


def test_seeds_order_and_augmentation_make_the_weights():
    a, b = (trainer.fit(_model(), _data(), CFG, _ce).model for _ in range(2))
    assert _equal(a, b)
    c = trainer.fit(_model(), _data(), trainer.FitConfig(**{**vars(CFG), "seed": 2}), _ce).model
    assert not _equal(a, c)
    per_epoch = trainer.TrainData(**{**vars(_data()), "epoch_generator": lambda e: torch.Generator().manual_seed(e)})
    assert not _equal(a, trainer.fit(_model(), per_epoch, CFG, _ce).model)


def test_class_balanced_draws_rare_classes_as_often_as_common_ones():
    y = torch.tensor([0] * 90 + [1] * 10)
    data = trainer.class_balanced(torch.zeros(100, 1), y, 2)
    draws = torch.cat([data.order(e, torch.Generator().manual_seed(e)) for e in range(50)])
    assert len(draws) == 5000 and 0.45 < (y[draws] == 1).float().mean() < 0.55
    perm = trainer.shuffled(torch.zeros(7, 1)).order(0, torch.Generator())
    assert sorted(perm.tolist()) == list(range(7))


def test_logged_parts_are_averaged_per_batch_or_per_image():
    parts = [(3, {"loss": 1.0, "mse": 2.0}), (1, {"loss": 5.0, "mse": 6.0})]
    assert trainer._epoch_means(parts, "batch") == {"loss": 3.0, "mse": 4.0}
    assert trainer._epoch_means(parts, "image") == {"loss": 2.0, "mse": 3.0}
    res = trainer.fit(_model(), _data(), CFG, lambda m, x, y: (_ce(m, x, y), {"half": _ce(m, x, y) / 2}))
    assert np.allclose(res.history["half"], res.history["loss"] / 2)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="augment"):
        trainer.FitConfig(epochs=1, augment="colour_jitter")
    with pytest.raises(ValueError, match="schedule"):
        trainer.FitConfig(epochs=1, schedule="cosine")
    with pytest.raises(ValueError, match="validate"):
        trainer.fit(_model(), _data(), trainer.FitConfig(epochs=1, select="val_auc", progress=False), _ce)


def test_uint8_images_are_converted_per_batch():
    x = torch.randint(0, 256, (8, 3, 8, 8), dtype=torch.uint8)
    seen = []
    trainer.fit(_model(), trainer.shuffled(x, torch.zeros(8, dtype=torch.long)),
                trainer.FitConfig(epochs=1, batch_size=8, progress=False),
                lambda m, xb, yb: seen.append(xb) or _ce(m, xb, yb))
    assert seen[0].dtype == torch.float32 and -1 <= seen[0].min() and seen[0].max() <= 1
    assert torch.equal(seen[0].flatten().sort().values, trainer.to_float(x).flatten().sort().values)
