"""The downstream melanoma classifier: does adding synthetic images narrow the FST gap?

Three training *arms* — ``real`` (the real training split), ``real+standard`` and ``real+bmg``
(the same real images plus equally many synthetic images of each generator, see
:func:`build_arms`) — each trained for several seeds. A torchvision ResNet (ResNet-18 with a
CIFAR-style stem at 32 px in ``quick``, ResNet-50 in ``paper``) is trained melanoma-vs-rest (one
logit, BCE); the real validation split chooses the epoch (best AUC), never the test split; the
real, FST-balanced test split is predicted once. Group metrics: :func:`evaluate_arms`.

Class imbalance (melanoma is ~3.5% of the real training split): every epoch holds a fixed share
``pos_fraction`` = q of melanomas, each class drawn without replacement from its own endless
stream of permutations, and melanoma gets ``pos_weight = (1 − q) / q``. In expectation the loss is
the class-balanced loss, so p ≥ 0.5 is the decision that minimises the balanced error (mean of
FNR and FPR) whatever the prevalence of a test set. Why not one of the two pure forms: a
pos_weight of ~28 at the natural prevalence leaves ~2 melanomas per batch of 64 with a weight of
28 (noisy gradients, batch-norm statistics that barely see a melanoma); balanced sampling
(q = 0.5) would repeat each real melanoma ~15× per pass over the negatives. q = 0.25 sits between.

Epochs have a fixed size (``epoch_images``), the same for every arm, so arms get the same compute
and a difference between arms comes from their data, not from more gradient steps. Every epoch
is checkpointed (weights as safetensors, optimizer, LR schedule, RNG, history); an interrupted
run resumes to the same weights as an uninterrupted one (the data order and augmentation of an
epoch are derived from ``(seed, epoch)``). Finished runs are cached under a key of all inputs.
The settings are the ``downstream`` section of the one config (``config.get_config(profile).downstream``,
:class:`bmglib.config.DownstreamConfig`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet

from bmglib import augment, cache, config, paths, trainer
from bmglib.config import DownstreamConfig
from bmglib.data import images
from bmglib.metrics import fairness
from bmglib.metrics import hierarchical as H
from bmglib.trainer import to_float

#: what the bootstrapped tables below depend on (their result cache's code digest)
_TABLE_CODE = ("bmglib.downstream", "bmglib.metrics.fairness", "bmglib.metrics.hierarchical",
               "bmglib.metrics.bootstrap", "bmglib.data.schema")

ARMS = ("real", "real+standard", "real+bmg")
#: torchvision blocks of each ``config.DOWNSTREAM_ARCHS`` entry
ARCHS = {"resnet18": (BasicBlock, [2, 2, 2, 2]), "resnet50": (Bottleneck, [3, 4, 6, 3])}
CELL = ["lesion", "fitzpatrick_scale"]
AUGMENT = "dihedral_per_image"  # bmglib.augment: one of the 8 flip/rotation poses per image
Callback = Callable[[int, dict], None]  # (epoch done, 1-based; its history row)


# --- the arms -----------------------------------------------------------------------------------


def subsample_stratified(df: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """``n`` rows of ``df`` keeping its lesion × FST cell proportions (largest-remainder rounding;
    a cell too small for its share gets what rounding gives it). Seeded, independent of row order.
    """
    if n >= len(df):
        return df
    df = df.sort_values([*CELL, "md5hash"])
    sizes = df.groupby(CELL, sort=True).size()
    exact = sizes.to_numpy() * n / len(df)
    alloc = np.floor(exact).astype(int)
    for i in np.argsort(-(exact - alloc), kind="stable")[: n - alloc.sum()]:
        alloc[i] += 1
    rng = np.random.default_rng([seed, 17])
    keep = [rng.choice(rows.index.to_numpy(), size=k, replace=False)
            for (_, rows), k in zip(df.groupby(CELL, sort=True), alloc, strict=True)]
    return df.loc[np.sort(np.concatenate(keep))]


def build_arms(real_train: pd.DataFrame, synthetic: Mapping[str, pd.DataFrame] | None = None,
               seed: int = 0) -> dict[str, pd.DataFrame]:
    """The training tables of the arms: ``real``, then ``real+<variant>`` for each synthetic set
    in ``synthetic`` (variant → manifest), in its order. Every synthetic set is subsampled
    (stratified by cell, :func:`subsample_stratified`) to the smallest one's size, so the arms
    differ in which synthetic images they add, not in how many. A ``train_source`` column says
    ``real`` or ``synthetic``.
    """
    arms = {"real": real_train.assign(train_source="real")}
    if not synthetic:
        return arms
    empty = [v for v, syn in synthetic.items() if len(syn) == 0]
    if empty:
        raise ValueError(f"empty synthetic set for {empty}: run notebook 03 for these variants first")
    n = min(len(syn) for syn in synthetic.values())
    for variant, syn in synthetic.items():
        part = subsample_stratified(syn, n, seed).assign(train_source="synthetic")
        arms[f"real+{variant}"] = pd.concat([arms["real"], part], ignore_index=True)
    return arms


def describe_arms(arms: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One row per arm (:func:`build_arms`): images, melanomas, synthetic images and synthetic
    melanomas on FST IV–VI (where the real data is thinnest)."""
    rows = {}
    for arm, df in arms.items():
        synthetic, melanoma = df["train_source"] == "synthetic", df["lesion"] == "melanoma"
        rows[arm] = {"images": len(df), "melanomas": int(melanoma.sum()), "synthetic": int(synthetic.sum()),
                     "synthetic melanomas IV-VI": int((synthetic & melanoma & (df["fitzpatrick_scale"] >= 4)).sum())}
    return pd.DataFrame(rows).T


# --- the model ----------------------------------------------------------------------------------


def _resnet(arch: str, width: int) -> ResNet:
    """torchvision's ResNet with ``width`` channels in the first stage (64: torchvision's own)."""
    block, layers = ARCHS[arch]
    net = ResNet(block, layers, num_classes=1)
    if width == 64:
        return net
    net.inplanes = width
    net.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(width)
    for i, n_blocks in enumerate(layers):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2**i, n_blocks,
                                                      stride=1 if i == 0 else 2))
    net.fc = nn.Linear(width * 8 * block.expansion, 1)
    for m in net.modules():  # torchvision's initialisation, for the rebuilt modules
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return net


class MelanomaResNet(nn.Module):
    """A ResNet with one melanoma logit. Input (B, 3, S, S) float in [-1, 1] → logits (B,).

    Inputs are mapped to ImageNet normalisation inside the model (what ImageNet weights expect;
    harmless from scratch, the first batch norm follows)."""

    def __init__(self, arch: str = "resnet18", width: int = 64, small_stem: bool = True):
        super().__init__()
        self.net = _resnet(arch, width)
        if small_stem:
            self.net.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            nn.init.kaiming_normal_(self.net.conv1.weight, mode="fan_out", nonlinearity="relu")
            self.net.maxpool = nn.Identity()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1), False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(((x + 1) / 2 - self.mean) / self.std).squeeze(1)


def build_model(cfg: DownstreamConfig) -> MelanomaResNet:
    """The classifier of ``cfg``, with ImageNet weights from ``cfg.weights_path`` if given (never
    downloaded): every backbone tensor must load; the 1-logit head (and the 3×3 stem conv with
    ``small_stem``) stay freshly initialised."""
    model = MelanomaResNet(cfg.arch, cfg.width, cfg.small_stem)
    if not cfg.weights_path:
        return model
    if cfg.width != 64:
        raise ValueError(f"ImageNet weights need width=64, got width={cfg.width}")
    path = Path(cfg.weights_path)
    if not path.is_file():
        raise FileNotFoundError(f"weights_path {path} not found (weights are never downloaded)")
    state = load_file(path) if path.suffix == ".safetensors" else torch.load(path, weights_only=True)
    fresh = ("fc.", "conv1.") if cfg.small_stem else ("fc.",)
    state = {k: v for k, v in state.items() if not k.startswith(fresh)}
    wrong = f"{path} is not a torchvision {cfg.arch} state dict"
    try:
        missing, unexpected = model.net.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{wrong}: {str(e).splitlines()[1].strip()} ...") from None
    missing = [k for k in missing if not k.startswith(fresh)]
    if missing or unexpected:
        raise ValueError(f"{wrong}: missing {missing[:5]}, unexpected {unexpected[:5]}")
    return model


# --- training -----------------------------------------------------------------------------------


def _stream(n: int, start: int, count: int, key: list[int]) -> np.ndarray:
    """Items ``start .. start+count`` of an endless chain of permutations of ``range(n)``,
    the ``c``-th seeded by ``key + [c]``: every item once per cycle, and stateless."""
    out, pos = [], start
    while sum(len(o) for o in out) < count:
        cycle, offset = divmod(pos, n)
        take = np.random.default_rng([*key, cycle]).permutation(n)[offset:offset + count - pos + start]
        out.append(take)
        pos += len(take)
    return np.concatenate(out) if out else np.zeros(0, int)


def epoch_indices(y: np.ndarray, epoch: int, n_images: int, pos_fraction: float,
                  seed: int) -> np.ndarray:
    """Training rows of ``epoch`` (0-based): ``round(q·n)`` melanomas and the rest others, each
    class without replacement from its own stream (so the epoch depends only on its arguments);
    shuffled. ``y``: (N,) {0, 1}. Returns (n_images,) int indices into ``y``."""
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    k = int(round(pos_fraction * n_images))
    idx = np.concatenate([pos[_stream(len(pos), epoch * k, k, [seed, 1])],
                          neg[_stream(len(neg), epoch * (n_images - k), n_images - k, [seed, 0])]])
    return idx[np.random.default_rng([seed, 2, epoch]).permutation(len(idx))]


@torch.no_grad()
def predict_logits(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Logits (N,) of uint8 images (N, 3, S, S), in eval mode."""
    model.eval()
    device = next(model.parameters()).device
    out = [model(to_float(x[i:i + batch_size]).to(device)).float().cpu()
           for i in range(0, len(x), batch_size)]
    return torch.cat(out).numpy() if out else np.zeros(0, np.float32)


def _check_labels(y_train: np.ndarray, y_val: np.ndarray) -> None:
    for name, y in (("training", y_train), ("validation", y_val)):
        if y.sum() == 0 or y.sum() == len(y):
            raise ValueError(f"the {name} labels are all one class ({int(y.sum())} melanomas of "
                             f"{len(y)}): need both to train and to choose the epoch by AUC")


def fit(x_train: torch.Tensor, y_train: np.ndarray, x_val: torch.Tensor, y_val: np.ndarray,
        cfg: DownstreamConfig, seed: int = 0, ckpt_dir: str | Path | None = None,
        run_id: str = "", callbacks: Sequence[Callback] = (), progress: bool = True,
        desc: str = "downstream epochs") -> trainer.FitResult:
    """Train :func:`build_model` on uint8 images ``x_*`` (N, 3, S, S) with labels ``y_*`` (N,)
    {0, 1} (``bmglib.trainer.fit``: AdamW, OneCycle, a dihedral pose per image, BCE with
    ``pos_weight = (1 − q) / q``); keep the epoch with the best validation AUC.

    Every epoch is :func:`epoch_indices` of ``steps = epoch_images // batch_size`` full batches,
    augmented from a generator seeded by ``(seed, epoch)``: an epoch depends only on its index.
    ``ckpt_dir``: checkpoint after every epoch (``ckpt_dir/last``, :class:`bmglib.trainer.Checkpoint`)
    and resume from it when its ``run_id`` matches. ``callbacks`` run after each epoch's checkpoint
    with (epoch, history row); one that raises interrupts training, which a later call resumes.
    History columns: epoch, loss, val_loss, val_auc, lr, seconds, images_per_s, best.
    """
    y_train, y_val = np.asarray(y_train, int), np.asarray(y_val, int)
    _check_labels(y_train, y_val)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    model = build_model(cfg).to(device)
    n_images = max(1, (cfg.epoch_images or len(x_train)) // cfg.batch_size) * cfg.batch_size
    bce = nn.BCEWithLogitsLoss(pos_weight=torch.tensor((1 - cfg.pos_fraction) / cfg.pos_fraction,
                                                       device=device))
    data = trainer.TrainData(
        x_train, torch.from_numpy(y_train).float(), size=n_images,
        order=lambda epoch, gen: torch.from_numpy(epoch_indices(y_train, epoch, n_images,
                                                                cfg.pos_fraction, seed)),
        epoch_generator=lambda epoch: torch.Generator().manual_seed(
            int(np.random.default_rng([seed, 3, epoch]).integers(2**62))))

    def validate(m: nn.Module) -> dict:
        logits = predict_logits(m, x_val)
        val_loss = float(bce(torch.from_numpy(logits).to(device), torch.from_numpy(y_val).float().to(device)))
        return {"val_loss": val_loss, "val_auc": fairness.auc(y_val, logits)}

    fit_cfg = trainer.FitConfig(epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
                                weight_decay=cfg.weight_decay, schedule="onecycle", augment=AUGMENT,
                                select="val_auc", seed=seed, desc=desc, progress=progress, leave=True)
    checkpoint = [trainer.Checkpoint(Path(ckpt_dir) / "last", run_id)] if ckpt_dir else []
    return trainer.fit(model, data, fit_cfg, lambda m, x, y: bce(m(x), y), validate,
                       [*checkpoint, *callbacks])


# --- images, arms and seeds ---------------------------------------------------------------------

_PIXELS: dict[tuple[str, str, int], torch.Tensor] = {}  # (image_path, md5hash, size) → image
PIXEL_BUDGET = 2 * 2**30  # bytes of decoded images kept per process (6k images at 32 px: 18 MB)


def load_images(df: pd.DataFrame, size: int, progress: bool = True) -> torch.Tensor:
    """A table's images as (N, 3, size, size) uint8 in [0, 255] (decoded by
    ``images.load_tensor``). Kept in memory per process up to :data:`PIXEL_BUDGET` bytes, so the
    arms and seeds that share the real images decode them once; uint8 is 4× smaller than float.
    Keyed by path *and* ``md5hash`` (the file's content): a sample set redrawn to the same file
    names is decoded afresh."""
    keys = list(zip(df["image_path"].astype(str), df["md5hash"].astype(str), [size] * len(df),
                    strict=True))
    todo = [k for k in dict.fromkeys(keys) if k not in _PIXELS]
    fresh: dict[tuple[str, str, int], torch.Tensor] = {}
    if todo:
        x = images.load_tensor(pd.DataFrame({"image_path": [k[0] for k in todo]}), size, progress)
        fresh = dict(zip(todo, x.add_(1.0).mul_(127.5).round_().to(torch.uint8), strict=True))
        used = sum(v.nbytes for v in _PIXELS.values())
        for k, img in fresh.items():
            if used + img.nbytes > PIXEL_BUDGET:
                break
            _PIXELS[k] = img.clone()
            used += img.nbytes
    if not keys:
        return torch.zeros((0, 3, size, size), dtype=torch.uint8)
    return torch.stack([fresh[k] if k in fresh else _PIXELS[k] for k in keys])


def choose_threshold(y_val: np.ndarray, p_val: np.ndarray, rule: str = "fixed",
                     target_sensitivity: float = 0.90) -> float:
    """The melanoma decision threshold, from the validation split only (it takes no test data):
    ``fixed`` 0.5 (the balanced-error decision under the class-balanced loss); ``val_youden`` the
    validation p maximising sensitivity + specificity; ``val_sensitivity`` the largest validation p
    ``t`` whose validation sensitivity mean(p_val[y_val == 1] >= t) is >= ``target_sensitivity``
    (in (0, 1]; the operating point a screening protocol fixes in advance). ``y_val``: (N,) {0, 1};
    ``p_val``: (N,) in [0, 1]. The decision is ``p >= threshold``."""
    if rule == "fixed":
        return 0.5
    if rule not in ("val_youden", "val_sensitivity"):
        raise ValueError(f"threshold rule must be one of {config.THRESHOLDS}, got {rule!r}")
    y_val, p_val = np.asarray(y_val, int), np.asarray(p_val, float)
    if y_val.shape != p_val.shape or y_val.ndim != 1:
        raise ValueError(f"choose_threshold: y_val {y_val.shape} and p_val {p_val.shape} must be equal (N,) shapes")
    cands = np.unique(p_val)
    if rule == "val_youden":
        j = [np.mean(p_val[y_val == 1] >= t) + np.mean(p_val[y_val == 0] < t) for t in cands]
        return float(cands[int(np.argmax(j))])
    if not 0 < target_sensitivity <= 1:
        raise ValueError(f"target_sensitivity must be in (0, 1], got {target_sensitivity!r}")
    pos = np.sort(p_val[y_val == 1])
    if not len(pos):
        raise ValueError("choose_threshold: y_val has no melanomas; val_sensitivity needs some")
    sens = (len(pos) - np.searchsorted(pos, cands, side="left")) / len(pos)  # mean(pos >= t), per t
    return float(cands[sens >= target_sensitivity].max())  # sens falls with t; t = min(pos) reaches 1


@dataclass
class ArmResult:
    arm: str
    seed: int
    predictions: pd.DataFrame  # test rows: md5hash, image_path, fitzpatrick_scale, lesion,
    #                            y_true, p_melanoma, y_pred, arm, seed
    history: pd.DataFrame  # per epoch (see bmglib.trainer.FitResult)
    info: dict  # best_epoch, threshold, n_train, n_pos, n_synthetic, train_seconds, images_per_s
    out_dir: Path
    cached: bool


TABLE_COLUMNS = ("md5hash", "image_path", "fitzpatrick_scale", "lesion")


def arm_key(arm: str, train_df, val_df, test_df, cfg: DownstreamConfig, seed: int) -> str:
    """The cache key of one run: every input it depends on (tables by content, the training
    config without ``seeds``/``n_boot``, the weights file's md5, the seed, and a digest of the
    code that trains and predicts, ``bmglib.cache.code_digest``: a changed line retrains)."""
    cols = ("md5hash", "fitzpatrick_scale", "lesion")
    training = {k: v for k, v in dataclasses.asdict(cfg).items() if k not in ("seeds", "n_boot")}
    if cfg.weights_path:
        training["weights_md5"] = config.file_digest(cfg.weights_path)
    return config.cache_key(arm=arm, train=config.hash_table(train_df, cols),
                            val=config.hash_table(val_df, cols),
                            test=config.hash_table(test_df, cols), cfg=training, seed=seed,
                            code=CODE_DIGEST)


def _read_result(out: Path, key: str, arm: str, seed: int) -> ArmResult | None:
    meta = out / "result.json"
    if not meta.exists() or json.loads(meta.read_text()).get("cache_key") != key:
        return None
    info = json.loads(meta.read_text())["info"]
    return ArmResult(arm, seed, pd.read_csv(out / "predictions.csv"),
                     pd.read_csv(out / "history.csv"), info, out, True)


def run_arm(arm: str, train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame,
            cfg: DownstreamConfig, seed: int = 0, out_dir: str | Path | None = None,
            progress: bool = True, use_cache: bool = True,
            callbacks: Sequence[Callback] = ()) -> ArmResult:
    """Train one arm for one seed, choose the epoch on ``val_df``, predict ``test_df``; cached.

    Tables follow the metadata schema (``md5hash``, ``image_path``, ``fitzpatrick_scale``,
    ``lesion``; melanoma = ``lesion == "melanoma"``): ``train_df`` from :func:`build_arms`,
    ``val_df``/``test_df`` the real splits. ``out_dir`` (default ``cache_dir()/downstream_<key>``)
    holds ``checkpoints/`` while training — a call with the same inputs resumes there — then
    ``predictions.csv``, ``history.csv``, ``model.safetensors`` (best epoch), ``result.json``.
    """
    for name, df in (("train", train_df), ("val", val_df), ("test", test_df)):
        missing = [c for c in TABLE_COLUMNS if c not in df.columns]
        if missing:
            raise ValueError(f"run_arm: the {name} table lacks column(s) {missing}")
    key = arm_key(arm, train_df, val_df, test_df, cfg, seed)
    out = Path(out_dir) if out_dir else paths.cache_dir() / f"downstream_{key}"
    if use_cache and (hit := _read_result(out, key, arm, seed)):
        return hit
    train = train_df.sort_values("md5hash").reset_index(drop=True)  # the set matters, not its order
    parts = {"train": train, "val": val_df, "test": test_df}
    x = {k: load_images(d, cfg.image_size, progress) for k, d in parts.items()}
    y = {k: (d["lesion"] == "melanoma").to_numpy(int) for k, d in parts.items()}
    res = fit(x["train"], y["train"], x["val"], y["val"], cfg, seed, out / "checkpoints", key,
              callbacks, progress, desc=f"{arm} seed {seed}")
    p_val, p_test = (1 / (1 + np.exp(-predict_logits(res.model, x[k]))) for k in ("val", "test"))
    threshold = choose_threshold(y["val"], p_val, cfg.threshold, target_sensitivity=cfg.target_sensitivity)
    preds = test_df[list(TABLE_COLUMNS)].reset_index(drop=True).assign(
        y_true=y["test"], p_melanoma=p_test, y_pred=(p_test >= threshold).astype(int),
        arm=arm, seed=seed)
    trained = res.history.iloc[res.resumed_from:]
    info = {"best_epoch": res.best_epoch, "threshold": threshold, "n_train": len(train),
            "n_pos": int(y["train"].sum()),
            "n_synthetic": int((train.get("train_source", pd.Series(dtype=str)) == "synthetic").sum()),
            "train_seconds": float(trained["seconds"].sum()),
            "images_per_s": float(trained["images_per_s"].median()) if len(trained) else None}
    out.mkdir(parents=True, exist_ok=True)
    preds.to_csv(out / "predictions.csv", index=False)
    res.history.to_csv(out / "history.csv", index=False)
    save_file({k: v.contiguous() for k, v in res.model.state_dict().items()},
              out / "model.safetensors")
    stamp = config.provenance(None, dataset_hash=config.hash_table(train), seed=seed, arm=arm,
                              downstream=dataclasses.asdict(cfg), cache_key=key, info=info)
    config.write_provenance(out / "result.json", stamp)  # written last: marks the run complete
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    return ArmResult(arm, seed, preds, res.history, info, out, False)


#: :func:`bmglib.cache.code_digest` of the code a run's weights and predictions depend on, taken
#: when the module is imported (part of :func:`arm_key`)
CODE_DIGEST = cache.code_digest(trainer, augment, _resnet, MelanomaResNet, build_model, _stream,
                                epoch_indices, fit, predict_logits, choose_threshold, run_arm,
                                load_images, images.load_tensor, images.load_image)


def load_arm_model(result: ArmResult) -> MelanomaResNet:
    """The best-epoch classifier of a finished run (eval mode), rebuilt from its stored config."""
    stored = json.loads((result.out_dir / "result.json").read_text())["downstream"]
    model = build_model(dataclasses.replace(DownstreamConfig(**stored), weights_path=""))
    model.load_state_dict(load_file(result.out_dir / "model.safetensors"))
    return model.eval()


@dataclass
class ArmRuns:
    predictions: pd.DataFrame  # every arm × seed: ArmResult.predictions rows
    history: pd.DataFrame  # every arm × seed: per-epoch history with arm, seed
    runs: pd.DataFrame  # one row per (arm, seed): ArmResult.info, cached, out_dir


def run_arms(arms: dict[str, pd.DataFrame], val_df: pd.DataFrame, test_df: pd.DataFrame,
             cfg: DownstreamConfig, progress: bool = True, use_cache: bool = True) -> ArmRuns:
    """:func:`run_arm` for every arm (:func:`build_arms`) and seed ``cfg.seed .. + cfg.seeds``."""
    results = [run_arm(arm, train, val_df, test_df, cfg, seed, progress=progress,
                       use_cache=use_cache)
               for arm, train in arms.items() for seed in range(cfg.seed, cfg.seed + cfg.seeds)]
    return ArmRuns(
        pd.concat([r.predictions for r in results], ignore_index=True),
        pd.concat([r.history.assign(arm=r.arm, seed=r.seed) for r in results], ignore_index=True),
        pd.DataFrame([{"arm": r.arm, "seed": r.seed, **r.info, "cached": r.cached,
                       "out_dir": str(r.out_dir)} for r in results]))


def protocol_predictions(real_train: pd.DataFrame, synthetic: Mapping[int, Mapping[str, pd.DataFrame]],
                         val_df: pd.DataFrame, test_df: pd.DataFrame, cfg: DownstreamConfig,
                         progress: bool = True, use_cache: bool = True) -> pd.DataFrame:
    """The long prediction table of the protocol's design (docs/protocol.md), the input of
    :func:`bmglib.metrics.hierarchical.paired_effect`.

    ``synthetic``: generator seed g → {variant → augmentation manifest of that generator}. For each
    g the arms ``real+<variant>`` are built together (:func:`build_arms`: the same number of
    synthetic images for every variant of g) and trained at classifier seeds ``cfg.seed + i·C``
    … ``+ C − 1`` with C = ``cfg.seeds`` and i the position of g (each generator its own classifier
    seeds); the real-only arm is trained at every classifier seed used, so each synthetic run has
    a real-only run of the same seed on the same test images to pair with. Returns one row per
    (arm, generator_seed, classifier_seed, test image) with :data:`TABLE_COLUMNS`, ``y_true``,
    ``p_melanoma``, ``y_pred``, ``arm``, ``generator_seed`` (-1 for real-only), ``classifier_seed``.
    """
    if not synthetic:
        raise ValueError("protocol_predictions: no generator seeds given (synthetic is empty)")
    c = cfg.seeds
    rows, real_seeds = [], []
    for i, (g, sets) in enumerate(synthetic.items()):
        arms = build_arms(real_train, sets, seed=cfg.seed + g)
        seeds = list(range(cfg.seed + i * c, cfg.seed + (i + 1) * c))
        real_seeds += seeds
        for arm, train in arms.items():
            if arm == "real":
                continue
            for s in seeds:
                r = run_arm(arm, train, val_df, test_df, cfg, s, progress=progress, use_cache=use_cache)
                rows.append(r.predictions.assign(generator_seed=g, classifier_seed=s))
    real = real_train.assign(train_source="real")
    for s in real_seeds:
        r = run_arm("real", real, val_df, test_df, cfg, s, progress=progress, use_cache=use_cache)
        rows.append(r.predictions.assign(generator_seed=-1, classifier_seed=s))
    return pd.concat(rows, ignore_index=True)


#: rule wording of the protocol's contrasts (docs/protocol.md): the other arm → the claim a CI of
#: Δ(arm) − Δ(other) below 0 supports; rule 3 is two-sided (it "excludes 0" either way)
CONTRASTS = {"real+standard": "beats real+standard", "real+no_fairloss": "the fairness loss matters downstream"}


@cache.cached_result(*_TABLE_CODE)
def decision_rules(preds: pd.DataFrame, arm: str = "real+bmg",
                   others: Sequence[str] = ("real+standard", "real+no_fairloss"),
                   reference: str = "real", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """The protocol's decision rules (docs/protocol.md) on :func:`protocol_predictions`' table: for
    each measure the paired Δ vs ``reference`` of ``arm`` and of each arm of ``others`` that the
    table holds, and the contrasts Δ(arm) − Δ(other), for the primary measure (the FNR gap; rules 1
    and 2: CI below 0; rule 3, ``real+no_fairloss``: CI excludes 0) and the secondary ones (overall
    AUC and ES-AUC, reported, no rule). Columns: rule, arm, versus (``reference`` for a paired Δ, the
    other arm for a contrast), measure, role (primary | secondary), estimate,
    ci_low, ci_high, mde, n_generator_seeds, n_classifier_seeds, n_images, variance_sources, verdict."""
    present = set(preds["arm"])
    if arm not in present:
        raise ValueError(f"decision_rules: the predictions hold no {arm!r} runs (arms: {sorted(present)})")
    others = [o for o in ([others] if isinstance(others, str) else others) if o in present]
    rows = []
    for name, stat in H.STATISTICS.items():
        role = "primary" if name == "fnr_gap" else "secondary"
        for a in (arm, *others):
            r = H.paired_effect(preds, a, reference, stat, n_boot, seed, level)
            rows.append({"rule": f"{a} narrows the gap" if role == "primary" else f"Δ {a} − {reference}",
                         "arm": a, "versus": reference, "measure": name, "role": role, **{k: r[k] for k in ("estimate", "ci_low", "ci_high", "mde")},
                         "n_generator_seeds": r["n_generator_seeds"], "n_classifier_seeds": r["n_classifier_seeds"],
                         "n_images": r["n_images"], "variance_sources": r["variance_sources"]})
        for o in others:
            c = H.paired_contrast(preds, arm, o, reference, stat, n_boot, seed, level)
            claim = CONTRASTS.get(o, f"beats {o}")
            rows.append({"rule": (claim if claim.startswith("the ") else f"{arm} {claim}") if role == "primary"
                         else f"Δ {arm} − Δ {o}",
                         "arm": arm, "versus": o, "measure": name, "role": role, **{k: c[k] for k in ("estimate", "ci_low", "ci_high", "mde")},
                         "n_generator_seeds": f"{c['n_generator_seeds_a']} / {c['n_generator_seeds_b']}",
                         "n_classifier_seeds": "", "n_images": c["n_images"], "variance_sources": c["variance_sources"]})
    out = pd.DataFrame(rows)
    primary = out["role"] == "primary"
    two_sided = out["rule"].str.startswith("the ")
    out["verdict"] = np.where(~primary, "secondary: no rule",
                              np.where(out["ci_high"] < 0, "shown",
                                       np.where(out["ci_low"] > 0, np.where(two_sided, "shown: it widens the gap",
                                                                               "opposite shown"),
                                                "not shown")))
    return out


def _effects_within(preds: pd.DataFrame, part_of: str, measure: str, reference: str, n_boot: int, seed: int,
                    level: float, arms: Sequence[str] | None = None) -> list[tuple[tuple, pd.DataFrame, dict]]:
    """For each arm (all but ``reference``, or ``arms``) and each value of column ``part_of``: the
    paired Δ of ``measure`` of that part of the arm's runs vs all reference runs, as ``((arm, value),
    part, hierarchical.paired_effect result)``, arm by arm and by sorted value."""
    if measure not in H.STATISTICS:
        raise ValueError(f"measure {measure!r} is not one of {sorted(H.STATISTICS)}")
    arms = [a for a in preds["arm"].unique() if a != reference] if arms is None else list(arms)
    missing = [a for a in arms if a not in set(preds["arm"])]
    if missing:
        raise ValueError(f"the predictions hold no {missing[0]!r} runs")
    ref = preds[preds["arm"] == reference]
    return [((a, value), part, H.paired_effect(pd.concat([part, ref]), a, reference, H.STATISTICS[measure],
                                               n_boot, seed, level))
            for a in arms for value, part in preds[preds["arm"] == a].groupby(part_of)]


@cache.cached_result(*_TABLE_CODE)
def generator_effects(preds: pd.DataFrame, arms: Sequence[str] | None = None, measure: str = "fnr_gap",
                      reference: str = "real", n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """The paired Δ vs ``reference`` of ``measure`` (a key of ``hierarchical.STATISTICS``) for each
    generator seed of each arm on its own (CI over that generator's classifier seeds and the test
    images): the generator's spread, which the pooled rows of :func:`decision_rules` resample.
    Columns: arm, generator_seed, estimate, ci_low, ci_high, n_classifier_seeds, n_images."""
    rows = [{"arm": a, "generator_seed": int(g), "measure": measure,
             **{k: r[k] for k in ("estimate", "ci_low", "ci_high", "n_classifier_seeds", "n_images")}}
            for (a, g), _, r in _effects_within(preds, "generator_seed", measure, reference, n_boot, seed, level, arms)]
    return pd.DataFrame(rows)


def run_protocol(profile: str, variants: str | Sequence[str], generator_seeds: str | Sequence[int],
                 train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame, cfg: DownstreamConfig,
                 out_dir: str | Path, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Notebook 05's protocol cell and ``python -m bmglib.experiment``'s last stage: the augmentation
    sets of ``variants`` × ``generator_seeds`` (notebook 03), :func:`protocol_predictions` (cached
    runs) and :func:`decision_rules`; writes ``05_protocol_predictions.csv.gz`` and
    ``05_decisions.csv`` to ``out_dir``. Returns ``(predictions, decisions)``."""
    from bmglib import report
    from bmglib.diffusion import sample
    from bmglib.metrics import sample_sets

    synthetic = sample_sets.load_seeds(profile, variants, "augment", generator_seeds)
    preds = protocol_predictions(train_df, synthetic, val_df, test_df, cfg, progress=progress)
    decisions = decision_rules(preds, n_boot=cfg.n_boot, seed=cfg.seed)
    out_dir = Path(out_dir)
    preds.to_csv(out_dir / "05_protocol_predictions.csv.gz", index=False)
    decisions.to_csv(out_dir / "05_decisions.csv", index=False)
    model_ids = {f"real+{v}": {g: sample.set_model_id(paths.samples_dir(profile, v, "augment", g)) for g in synthetic}
                 for v in next(iter(synthetic.values()))}
    summary = protocol_summary(preds, decisions, model_ids, n_boot=cfg.n_boot, seed=cfg.seed)
    summary.to_csv(out_dir / "05_protocol_summary.csv", index=False)
    stamp = config.provenance(None, seed=cfg.seed, generator_seeds=list(synthetic), downstream=dataclasses.asdict(cfg))
    (out_dir / "protocol_table.md").write_text(
        f"# The protocol's result · {profile}\n\ncommit {stamp['git_commit']} · {stamp['created_utc']} · "
        f"{cfg.arch} width {cfg.width} · threshold {cfg.threshold} (target sensitivity {cfg.target_sensitivity}) · "
        f"generator seeds {', '.join(map(str, synthetic))} × {cfg.seeds} classifier seeds each\n\n"
        + report.to_markdown(report.protocol_table(summary)) + "\n\n" + report.PROTOCOL_NOTE + "\n")
    return preds, decisions


def _doses(doses: str | Sequence[float]) -> list[float]:
    out = [float(x) for x in doses.split(",") if x.strip()] if isinstance(doses, str) else [float(x) for x in doses]
    if not out or any(d <= 0 for d in out):
        raise ValueError(f"dose_response: doses must be positive multiples of the augmentation budget, got {doses!r}")
    return out


def _extra_set(profile: str, variant: str, generator_seed: int, k: int, train_df: pd.DataFrame,
               progress: bool) -> pd.DataFrame:
    """The k-th extra augmentation set of a generator for doses > 1: notebook 03's plan again, drawn
    with batch seeds from ``sampling.seed + 100 + k`` into ``augment_extra<k>`` (resumable)."""
    from bmglib.diffusion import sample

    cfg = config.with_variant(config.get_config(profile, {"diffusion.seed": generator_seed}), variant)
    return sample.draw_set(cfg, train_df, f"augment_extra{k}", sample.augmentation_plan(cfg, train_df),
                           cfg.sampling.seed + 100 + k, progress=progress)


def dose_response(profile: str, variants: str | Sequence[str], doses: str | Sequence[float],
                  train_df: pd.DataFrame, val_df: pd.DataFrame, test_df: pd.DataFrame, cfg: DownstreamConfig,
                  generator_seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """The downstream effect at several sizes of the synthetic set (Sagers et al.'s dose–response):
    for each dose d (a multiple of the protocol's augmentation set, the smallest of ``variants``' sets
    of ``generator_seed``), the arms ``real+<variant>`` with ⌊d·n⌉ synthetic images, trained at the
    classifier seeds ``cfg.seed`` … ``+ cfg.seeds − 1`` beside the real-only runs of the same seeds.
    d ≤ 1: a cell-stratified subset of the set notebook 03 drew (d = 1 is the protocol's own arm, read
    from the cache); d > 1: that set plus ⌈d⌉ − 1 more draws of the same plan from the same generator
    with new noise seeds (``samples/<profile>/<variant>/augment_extra<k>``, resumable), cut to ⌊d·n⌉
    by cell.
    Returns the long prediction table of :func:`protocol_predictions` with a ``dose`` and an
    ``n_synthetic`` column (real-only rows: dose 0, n_synthetic 0)."""
    from bmglib.metrics import sample_sets

    variants, doses = sample_sets.parse_variants(variants), _doses(doses)
    base = sample_sets.load(profile, variants, "augment", generator_seed)
    n = min(len(m) for m in base.values())
    seeds = range(cfg.seed, cfg.seed + cfg.seeds)
    split = cfg.seed + generator_seed  # build_arms' subsampling seed, as in protocol_predictions
    rows = []
    for dose in doses:
        if dose <= 1:
            sets = {v: subsample_stratified(m, round(dose * n), split) for v, m in base.items()}
        else:  # the protocol's set plus ⌈d⌉ − 1 more of the same plan, new noise seeds
            extra = {v: [_extra_set(profile, v, generator_seed, k, train_df, progress)
                         for k in range(1, math.ceil(dose))] for v in variants}
            sets = {v: subsample_stratified(pd.concat([base[v], *extra[v]], ignore_index=True), round(dose * n), split)
                    for v in variants}
        for arm, table in build_arms(train_df, sets, seed=split).items():
            if arm == "real":
                continue
            k = int((table["train_source"] == "synthetic").sum())
            for c in seeds:
                r = run_arm(arm, table, val_df, test_df, cfg, c, progress=progress)
                rows.append(r.predictions.assign(generator_seed=generator_seed, classifier_seed=c, dose=dose,
                                                 n_synthetic=k))
    real = train_df.assign(train_source="real")
    for c in seeds:
        r = run_arm("real", real, val_df, test_df, cfg, c, progress=progress)
        rows.append(r.predictions.assign(generator_seed=-1, classifier_seed=c, dose=0.0, n_synthetic=0))
    return pd.concat(rows, ignore_index=True)


@cache.cached_result(*_TABLE_CODE)
def dose_effects(preds: pd.DataFrame, measure: str = "fnr_gap", reference: str = "real", n_boot: int = 1000,
                 seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """Per (arm, dose) of :func:`dose_response`' table: the paired Δ of ``measure`` vs real-only
    with its CI (classifier seeds and test images; one generator) and the number of synthetic
    images. Columns: arm, dose, n_synthetic, estimate, ci_low, ci_high, n_classifier_seeds, n_images,
    variance_sources."""
    rows = [{"arm": arm, "dose": dose, "n_synthetic": int(part["n_synthetic"].iloc[0]), "measure": measure,
             **{k: r[k] for k in ("estimate", "ci_low", "ci_high", "n_classifier_seeds", "n_images",
                                  "variance_sources")}}
            for (arm, dose), part, r in _effects_within(preds, "dose", measure, reference, n_boot, seed, level)]
    return pd.DataFrame(rows).sort_values(["arm", "dose"]).reset_index(drop=True)


#: the arms' measures of the headline table: column prefix → (statistic, its label)
SUMMARY_MEASURES = {"fnr_gap": "FNR gap IV–VI − I–III", "auc_overall": "AUC", "es_auc": "ES-AUC"}


@cache.cached_result(*_TABLE_CODE)
def protocol_summary(preds: pd.DataFrame, decisions: pd.DataFrame, model_ids: Mapping[str, Mapping[int, str]],
                     n_boot: int = 1000, seed: int = 0, level: float = 0.95) -> pd.DataFrame:
    """One row per arm of the protocol's table (:func:`protocol_predictions`): every measure of
    :data:`SUMMARY_MEASURES` with its hierarchical CI (``hierarchical.arm_value``), the primary
    measure's paired Δ vs real-only and its verdict from ``decisions`` (:func:`decision_rules`),
    sensitivity and specificity per FST group at the validation-chosen threshold (means over runs),
    the N and melanoma counts per group, the runs, the generator ``model_id`` per seed and the
    variance sources."""
    rows = []
    primary = decisions[(decisions["measure"] == "fnr_gap") & (decisions["versus"] == "real")].set_index("arm")
    for arm in dict.fromkeys(preds["arm"]):
        part = preds[preds["arm"] == arm]
        row: dict = {"arm": arm}
        for name in SUMMARY_MEASURES:
            r = H.arm_value(preds, arm, H.STATISTICS[name], n_boot, seed, level)
            row.update({name: r["estimate"], f"{name}_ci_low": r["ci_low"], f"{name}_ci_high": r["ci_high"]})
        row["variance_sources"] = r["variance_sources"]
        if arm in primary.index:
            d = primary.loc[arm]
            row.update({"delta_fnr_gap": d["estimate"], "delta_ci_low": d["ci_low"], "delta_ci_high": d["ci_high"],
                        "mde": d["mde"], "verdict": d["verdict"]})
        first = part[part["classifier_seed"] == part["classifier_seed"].iloc[0]]
        first = first[first["generator_seed"] == first["generator_seed"].iloc[0]]
        for grp, levels in (("I-III", (1, 2, 3)), ("IV-VI", (4, 5, 6))):
            sel = part["fitzpatrick_scale"].isin(levels)
            pos, neg = sel & (part["y_true"] == 1), sel & (part["y_true"] == 0)
            row[f"sensitivity {grp}"] = float(part.loc[pos, "y_pred"].mean())
            row[f"specificity {grp}"] = float(1 - part.loc[neg, "y_pred"].mean())
            g = first[first["fitzpatrick_scale"].isin(levels)]
            row[f"n {grp}"], row[f"n_pos {grp}"] = len(g), int(g["y_true"].sum())
        row["n_generator_seeds"] = int(part["generator_seed"].nunique()) if arm != "real" else 0
        row["n_runs"] = int(part.groupby(["generator_seed", "classifier_seed"]).ngroups)
        row["model_id"] = ", ".join(f"{g}: {m[:8]}" for g, m in model_ids.get(arm, {}).items()) or "—"
        rows.append(row)
    return pd.DataFrame(rows)


@cache.cached_result(*_TABLE_CODE)
def evaluate_arms(predictions: pd.DataFrame, n_boot: int = 1000, seed: int = 0,
                  level: float = 0.95) -> dict[str, pd.DataFrame]:
    """Fairness tables of every arm over its seeds (``bmglib.metrics.fairness``): ``per_fst``
    and ``per_group`` (:func:`~bmglib.metrics.fairness.seed_metrics`) and ``summary`` (gap,
    EDFR, ... :func:`~bmglib.metrics.fairness.fairness_summary`), each with an ``arm`` column."""
    tables: dict[str, list[pd.DataFrame]] = {"per_fst": [], "per_group": [], "summary": []}
    for arm, preds in predictions.groupby("arm", sort=False):
        sp = fairness.stack_seeds(preds)
        kw = {"n_boot": n_boot, "seed": seed, "level": level}
        tables["per_fst"].append(fairness.seed_metrics(sp, "fst", **kw).reset_index())
        tables["per_group"].append(fairness.seed_metrics(sp, "group", **kw).reset_index())
        tables["summary"].append(fairness.fairness_summary(sp, **kw).reset_index())
        for t in tables.values():
            t[-1].insert(0, "arm", arm)
    return {k: pd.concat(v, ignore_index=True) for k, v in tables.items()}


def write_tables(tables: dict[str, pd.DataFrame], out_dir: Path, prefix: str = "05") -> None:
    """Write each table of :func:`evaluate_arms` to ``<prefix>_<name>.csv`` and the per-FST and
    per-group rows together (with a ``level`` column) to ``downstream_metrics.csv``."""
    out_dir = Path(out_dir)
    for name, t in tables.items():
        t.to_csv(out_dir / f"{prefix}_{name}.csv", index=False)
    pd.concat([t.assign(level=name) for name, t in tables.items() if name != "summary"]).to_csv(
        out_dir / "downstream_metrics.csv", index=False)
