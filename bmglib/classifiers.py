"""The small CNN classifiers and how they are trained: the bias probe's melanoma CNN, the FST
auditor and the lesion classifier (the downstream ResNets are ``bmglib.downstream``).

All are a :class:`SmallCNN` trained by ``bmglib.trainer.fit`` with one flip/90°-rotation pose per
batch (``bmglib.augment.flip_rot90_per_batch``; colour jitter would move the skin's ITA and so the
FST label). The probe's CNN is trained melanoma-vs-rest with a positive-class weight
(``n_neg / n_pos``) so that the 0.5 threshold is meaningful under a 3–4% melanoma prevalence, and
the validation split (never the test split) chooses the epoch by AUC. The auditor and the lesion
classifier, which score generated images (``bmglib.metrics.adherence``), are trained once on the
real training split and cached under a key of all their inputs (``bmglib.cache.cached_model``).
"""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from bmglib import augment, cache, config, trainer
from bmglib.data import images, schema
from bmglib.metrics import adherence

AUGMENT = "flip_rot90_per_batch"  # bmglib.augment: one random pose per batch
#: the auditor's seed offset from the fairness-loss estimator's seed, and its width (the estimator: 16)
AUDITOR_SEED_OFFSET, AUDITOR_WIDTH = 1000, 32
LESION_WIDTH = 32


class SmallCNN(nn.Module):
    """Four conv blocks → global pool → ``n_out`` logits. Input (B, 3, H, W) in [-1, 1], H=W ≥ 32."""

    def __init__(self, width: int = 32, n_out: int = 1):
        super().__init__()
        chans = [3, width, width * 2, width * 4, width * 4]
        layers: list[nn.Module] = []
        for cin, cout in zip(chans[:-1], chans[1:], strict=True):
            layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                       nn.ReLU(inplace=True), nn.MaxPool2d(2)]
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(chans[-1], n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Returns logits (B,) when ``n_out == 1``, else (B, n_out)."""
        out = self.head(self.features(x).mean(dim=(2, 3)))
        return out.squeeze(1) if out.shape[1] == 1 else out


def cross_entropy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The multi-class loss of :func:`train_multiclass`: logits (B, K) against labels (B,)."""
    return nn.functional.cross_entropy(model(x), y)


def train_multiclass(x: torch.Tensor, y: torch.Tensor, n_out: int, *, epochs: int = 6,
                     batch_size: int = 64, lr: float = 2e-3, width: int = 16, seed: int = 0,
                     balanced: bool = False, desc: str = "classifier",
                     progress: bool = True) -> SmallCNN:
    """A :class:`SmallCNN` with ``n_out`` classes trained by cross-entropy on images ``x``
    (N, 3, H, W) in [-1, 1] with labels ``y`` (N,) in 0..n_out-1 (AdamW, constant LR).
    ``balanced``: each epoch draws N images with class-balanced weights (rare classes count),
    else a permutation. Returns the model in eval mode (parameters still trainable)."""
    torch.manual_seed(seed)
    model = SmallCNN(width, n_out=n_out)
    data = trainer.class_balanced(x, y, n_out) if balanced else trainer.shuffled(x, y)
    cfg = trainer.FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, augment=AUGMENT, seed=seed,
                            desc=desc, progress=progress)
    return trainer.fit(model, data, cfg, cross_entropy).model


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Melanoma probabilities (N,) for images ``x`` (N, 3, H, W) in [-1, 1]."""
    model.eval()
    out = [torch.sigmoid(model(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


def train_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                     y_val: torch.Tensor, *, epochs: int = 10, batch_size: int = 64,
                     lr: float = 2e-3, width: int = 32, seed: int = 0,
                     pos_weight: float | None = 1.0, progress: bool = True) -> trainer.FitResult:
    """Train :class:`SmallCNN` melanoma-vs-rest (BCE, AdamW with a OneCycle LR); keep the epoch
    with the best validation AUC. ``pos_weight=None``: ``n_neg / n_pos`` ("balanced").

    ``x_*``: (N, 3, H, W) float in [-1, 1]; ``y_*``: (N,) {0, 1}. The result's history has one
    row per epoch: epoch, loss, val_auc, best.
    """
    torch.manual_seed(seed)
    model = SmallCNN(width)
    n_pos = float(y_train.sum())
    if n_pos == 0 or n_pos == len(y_train):
        raise ValueError("training labels are all one class: cannot train a melanoma classifier")
    if pos_weight is None:
        pos_weight = (len(y_train) - n_pos) / n_pos
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))

    def validate(m: nn.Module) -> dict:
        p_val = predict_proba(m, x_val)
        ok = 0 < y_val.sum() < len(y_val)
        return {"val_auc": float(roc_auc_score(y_val.numpy(), p_val) if ok else float("nan"))}

    cfg = trainer.FitConfig(epochs=epochs, batch_size=batch_size, lr=lr, schedule="onecycle",
                            augment=AUGMENT, select="val_auc", seed=seed, desc="probe epochs",
                            progress=progress, leave=True)
    res = trainer.fit(model, trainer.shuffled(x_train, y_train), cfg,
                      lambda m, x, y: bce(m(x), y.float()), validate)
    return dataclasses.replace(res, history=res.history[["epoch", "loss", "val_auc", "best"]])


#: what the cached classifiers' weights depend on besides their inputs (``cache.code_digest``)
TRAINING_CODE = (trainer, augment, train_multiclass, cross_entropy, images.load_tensor, images.load_image)


def get_fst_auditor(train_df: pd.DataFrame, test_df: pd.DataFrame, size: int, epochs: int = 12,
                    seed: int = 0, progress: bool = True) -> tuple[SmallCNN, dict]:
    """The independent FST CNN that scores generated images: a :class:`SmallCNN` of width 32 (the
    fairness loss's estimator: 16), seed ``seed + 1000``, trained class-balanced on the *real*
    training split's FST labels (the estimator: the natural mix), cached under a key of its
    inputs. No generator is trained against it. Rows whose FST is not 1..6 are left out.

    Returns ``(model → logits (B, 6), report)``; report = ``ceiling``:
    :func:`~bmglib.metrics.adherence.adherence_table` of the auditor on the real test split against
    its FST labels (what a perfect generator would score).
    """
    for name, df in (("training", train_df), ("test", test_df)):
        if "fitzpatrick_scale" not in df.columns:
            raise KeyError(f"get_fst_auditor: the {name} table has no 'fitzpatrick_scale' column")
    train_df = train_df[train_df["fitzpatrick_scale"].between(1, 6)]
    test_df = test_df[test_df["fitzpatrick_scale"].between(1, 6)]

    def train() -> tuple[SmallCNN, dict]:
        x = images.load_tensor(train_df, size, progress)
        y = torch.tensor(train_df["fitzpatrick_scale"].to_numpy()).long() - 1
        model = train_multiclass(x, y, 6, epochs=epochs, width=AUDITOR_WIDTH,
                                 seed=seed + AUDITOR_SEED_OFFSET, balanced=True, desc="FST auditor",
                                 progress=progress)
        audited = adherence.audit_fst(model, images.load_tensor(test_df, size, progress))
        return model, {"ceiling": adherence.adherence_table(test_df["fitzpatrick_scale"].to_numpy(), audited)}

    inputs = {"train": config.hash_table(train_df), "test": config.hash_table(test_df), "size": size,
              "epochs": epochs, "seed": seed + AUDITOR_SEED_OFFSET, "width": AUDITOR_WIDTH,
              "balanced": True}
    res = cache.cached_model("fst_auditor", inputs, functools.partial(SmallCNN, AUDITOR_WIDTH, n_out=6),
                             train, code=(*TRAINING_CODE, adherence.audit_fst, adherence.adherence_table))
    return res.model, res.report


def train_lesion_classifier(x: torch.Tensor, lesion: torch.Tensor, epochs: int = 8,
                            batch_size: int = 64, lr: float = 2e-3, width: int = LESION_WIDTH,
                            seed: int = 0, progress: bool = True) -> SmallCNN:
    """A :class:`SmallCNN` over ``schema.LESIONS`` on real images ``x`` (N,3,H,W) in [-1, 1],
    ``lesion`` (N,) indices; draws are lesion-balanced (rare types are not ignored)."""
    return train_multiclass(x, lesion, len(schema.LESIONS), epochs=epochs, batch_size=batch_size,
                            lr=lr, width=width, seed=seed, balanced=True, desc="lesion classifier",
                            progress=progress)


def get_lesion_classifier(train_df: pd.DataFrame, test_df: pd.DataFrame, size: int,
                          epochs: int = 8, seed: int = 0, progress: bool = True) -> tuple[SmallCNN, dict]:
    """The lesion classifier that scores generated images, trained on the *real* training split
    and cached under a key of its inputs. It is the ceiling of lesion adherence: its accuracy on
    the real test split (per FST, in the report) is what a perfect generator would score.

    Returns ``(model → logits (B, 4), report)``: report = ``accuracy``
    (:func:`~bmglib.metrics.adherence.lesion_adherence_table`: per FST + overall, n and accuracy).
    """
    def train() -> tuple[SmallCNN, dict]:
        x = images.load_tensor(train_df, size, progress)
        y = torch.tensor([images.LESION_INDEX[v] for v in train_df["lesion"]])
        model = train_lesion_classifier(x, y, epochs=epochs, seed=seed, progress=progress)
        pred = adherence.predict_lesion(model, images.load_tensor(test_df, size, progress))
        truth = np.array([images.LESION_INDEX[v] for v in test_df["lesion"]])
        return model, {"accuracy": adherence.lesion_adherence_table(
            truth, pred, test_df["fitzpatrick_scale"].to_numpy())}

    inputs = {"train": config.hash_table(train_df), "test": config.hash_table(test_df), "size": size,
              "epochs": epochs, "seed": seed, "width": LESION_WIDTH}
    res = cache.cached_model("lesion_classifier", inputs,
                             functools.partial(SmallCNN, LESION_WIDTH, n_out=len(schema.LESIONS)), train,
                             code=(*TRAINING_CODE, train_lesion_classifier, adherence.predict_lesion,
                                   adherence.lesion_adherence_table))
    return res.model, res.report
