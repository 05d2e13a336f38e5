"""Melanoma classifiers: the small CNN of the bias probe (ResNets arrive with the downstream issue).

The classifier sees images only; it is trained melanoma-vs-rest with a positive-class weight
(``n_neg / n_pos``) so that the 0.5 threshold is meaningful under a 3–4% melanoma prevalence, and
the validation split (never the test split) chooses the epoch by AUC.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn
from tqdm.auto import tqdm


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


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Flips and 90° rotations only: colour jitter would shift ITA and so the FST label."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(2)
    return torch.rot90(x, int(torch.randint(4, (1,), generator=gen)), dims=(2, 3))


def train_multiclass(x: torch.Tensor, y: torch.Tensor, n_out: int, *, epochs: int = 6,
                     batch_size: int = 64, lr: float = 2e-3, width: int = 16, seed: int = 0,
                     balanced: bool = False, desc: str = "classifier",
                     progress: bool = True) -> SmallCNN:
    """A :class:`SmallCNN` with ``n_out`` classes trained by cross-entropy on images ``x``
    (N, 3, H, W) in [-1, 1] with labels ``y`` (N,) in 0..n_out-1; flips and 90° rotations only.
    ``balanced``: each epoch draws N images with class-balanced weights (rare classes count),
    else a permutation. Returns the model in eval mode (parameters still trainable)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(width, n_out=n_out)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    weights = 1.0 / torch.bincount(y, minlength=n_out).clamp_min(1).double()[y]
    for _ in tqdm(range(epochs), desc=desc, disable=not progress, leave=False):
        model.train()
        order = (torch.multinomial(weights, len(x), replacement=True, generator=gen) if balanced
                 else torch.randperm(len(x), generator=gen))
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            loss = nn.functional.cross_entropy(model(augment(x[idx], gen)), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def predict_proba(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Melanoma probabilities (N,) for images ``x`` (N, 3, H, W) in [-1, 1]."""
    model.eval()
    out = [torch.sigmoid(model(x[i:i + batch_size])) for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy()


@dataclass
class TrainResult:
    model: nn.Module
    history: list[dict]  # per epoch: loss, val_auc
    best_epoch: int


def train_classifier(x_train: torch.Tensor, y_train: torch.Tensor, x_val: torch.Tensor,
                     y_val: torch.Tensor, *, epochs: int = 10, batch_size: int = 64,
                     lr: float = 2e-3, width: int = 32, seed: int = 0,
                     pos_weight: float | None = 1.0, progress: bool = True) -> TrainResult:
    """Train :class:`SmallCNN` melanoma-vs-rest; keep the epoch with the best validation AUC.

    ``x_*``: (N, 3, H, W) float in [-1, 1]; ``y_*``: (N,) {0, 1}.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = SmallCNN(width)
    n_pos = float(y_train.sum())
    if n_pos == 0 or n_pos == len(y_train):
        raise ValueError("training labels are all one class: cannot train a melanoma classifier")
    if pos_weight is None:  # "balanced": n_neg / n_pos
        pos_weight = (len(y_train) - n_pos) / n_pos
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(float(pos_weight)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    steps = epochs * int(np.ceil(len(x_train) / batch_size))
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=max(steps, 1))
    best, best_auc, best_epoch, history = None, -1.0, 0, []
    for epoch in tqdm(range(epochs), desc="probe epochs", disable=not progress):
        model.train()
        order = torch.randperm(len(x_train), generator=gen)
        losses = []
        for i in range(0, len(order), batch_size):
            idx = order[i:i + batch_size]
            logits = model(augment(x_train[idx], gen))
            loss = loss_fn(logits, y_train[idx].float())
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        p_val = predict_proba(model, x_val)
        auc = roc_auc_score(y_val.numpy(), p_val) if 0 < y_val.sum() < len(y_val) else float("nan")
        history.append({"epoch": epoch + 1, "loss": float(np.mean(losses)), "val_auc": float(auc)})
        if best is None or auc > best_auc:
            best, best_auc, best_epoch = copy.deepcopy(model.state_dict()), auc, epoch + 1
    model.load_state_dict(best)
    return TrainResult(model, history, best_epoch)
