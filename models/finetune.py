"""Fine-tune a synthetic-trained checkpoint on real crops, with an honest leave-one-source-out estimate.

    python -m models.finetune --base runs/default/best.pt --out runs/default-ft

The model still learns mostly from synthetic data: every batch is 3/4 freshly rendered synthetic crops
(all classes, balanced) and 1/4 real crops. Because a crop the model trained on says nothing about how it
generalises, accuracy is estimated by cross-validation over *sources* (models.realdev: sheets of one origin
or one contributor grouped): for each tuning source, fine-tune on the other tuning sources and predict the
held-out one. Those out-of-fold predictions give the reported real-dev figures and fit the calibration
temperature. The sealed sources are predicted by a model fine-tuned on all tuning sources and are scored only
by the final evaluation (`models.evaluate --folds ... --unseal`). Every fold model is written as ONNX with a
`folds.json` manifest (models.folds), so evaluation runs it through the service's own decision path.

Prior correction: synthetic training is class-balanced (every class 1/8), but on real sheets most bubbles
are empty or filled and the other marks are rare. The posterior is re-weighted to a deployment prior by
adding log(prior / (1/C)) to the logits (Bayes' rule for a label-prior shift), folded into the last layer's
bias so every serving path gets it. The default prior is a generic OMR one fixed a priori (not fitted);
pass `--class-prior` for forms with another mix (e.g. check-box surveys with many crosses).
The final checkpoint is then fine-tuned on every source (the sealed ones too, once the folds are fixed); its
accuracy on real-dev is training accuracy and is recorded as such, never as the estimate.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from models.calibrate import fit_temperature
from models.checkpoint import load_checkpoint, save_checkpoint
from models.folds import Fold, make_folds, write_manifest
from models.net import Ensemble
from models.realdev import SEALED, RealSet, load_real_set, parse_sources
from models.synth import render_dataset
from models.train import DEFAULT_REAL, augment, predict_logits, scores, to_input, write_confusion


@dataclass
class FinetuneConfig:
    base: str = "runs/default/best.pt"
    out: str = "runs/default-ft"
    real_labels: str = str(DEFAULT_REAL)
    synthetic_size: int = 32_000
    steps: int = 500
    batch_size: int = 256
    real_fraction: float = 0.25
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    threads: int = 2
    workers: int = 2
    cv: bool = True
    #: sources held out of all tuning (models.realdev); the `sealed` fold predicts them for the final evaluation
    sealed: str = ",".join(SEALED)
    #: the bundled model also learns from the sealed sources once the folds are fixed
    final_includes_sealed: bool = True
    #: deployment class prior, "class=p,..." (normalised); empty string = no prior correction
    class_prior: str = "empty=.45,filled=.35,partial=.04,dot=.03,cross=.05,erased=.02,scribble=.02,no_bubble=.04"


def prior_log_ratio(spec: str, classes: list[str]) -> np.ndarray:
    """log(prior / uniform) per class from a "class=p,..." spec; zeros when spec is empty."""
    if not spec:
        return np.zeros(len(classes), np.float32)
    given = {k.strip(): float(v) for k, v in (item.split("=") for item in spec.split(","))}
    if set(given) != set(classes) or min(given.values()) <= 0:
        raise ValueError(f"class prior must give a positive p for exactly {classes}, got {sorted(given)}")
    p = np.array([given[c] for c in classes], np.float64)
    return np.log(p / p.sum() * len(classes)).astype(np.float32)


def apply_prior(model: nn.Module, log_ratio: np.ndarray) -> None:
    """Fold the prior correction into the final Linear layer's bias (logits += log_ratio).

    For an ensemble every member gets it: the mean of log_softmax(z_i + r) is mean(z_i) + r minus a
    per-row constant, so its softmax is the prior-corrected ensemble posterior.
    """
    members = list(model.members) if isinstance(model, Ensemble) else [model]
    for member in members:
        last = [m for m in member.modules() if isinstance(m, nn.Linear)][-1]
        with torch.no_grad():
            last.bias += torch.from_numpy(log_ratio)


def finetune(
    base: Path, syn: tuple[np.ndarray, np.ndarray], real_x: np.ndarray, real_y: np.ndarray, cfg: FinetuneConfig
) -> nn.Module:
    """Fine-tune a fresh copy of the base model on synthetic + the given real crops."""
    model, _ = load_checkpoint(base)
    model.train()
    gen = torch.Generator().manual_seed(cfg.seed)
    xs, ys = torch.from_numpy(syn[0]), torch.from_numpy(syn[1])
    xr, yr = torch.from_numpy(real_x), torch.from_numpy(real_y)
    n_real = int(cfg.batch_size * cfg.real_fraction) if len(xr) else 0
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.steps, pct_start=0.15)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=0.05)
    for _ in range(cfg.steps):
        i_s = torch.randint(0, len(xs), (cfg.batch_size - n_real,), generator=gen)
        xb, yb = xs[i_s], ys[i_s]
        if n_real:
            i_r = torch.randint(0, len(xr), (n_real,), generator=gen)
            xb, yb = torch.cat([xb, xr[i_r]]), torch.cat([yb, yr[i_r]])
        loss = member_loss(model, loss_fn, augment(to_input(xb), gen), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    model.eval()
    return model


def member_loss(model: nn.Module, loss_fn: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss on a batch [B,1,32,32]; an ensemble's members each fit it on their own (the mean of
    their losses, not the loss of their average, so they stay independent models)."""
    if isinstance(model, Ensemble):
        return torch.stack([loss_fn(z, y) for z in model.member_logits(x)]).mean()
    return loss_fn(model(x), y)


Fit = Callable[[Path, tuple[np.ndarray, np.ndarray], np.ndarray, np.ndarray, FinetuneConfig], nn.Module]


def cross_validate(
    base: Path,
    syn: tuple[np.ndarray, np.ndarray],
    real: RealSet,
    folds: Sequence[Fold],
    cfg: FinetuneConfig,
    log_ratio: np.ndarray,
    fit: Fit = finetune,
    on_fold: Callable[[Fold, nn.Module], None] | None = None,
) -> np.ndarray:
    """Out-of-fold logits (prior applied) for every crop a fold holds out, each from a model that never saw
    its source; rows of crops no fold holds out stay NaN. `fit` is `finetune` (a test passes a recorder)."""
    sources = real.sources
    oof = np.full((len(real.y), len(log_ratio)), np.nan, np.float32)
    for fold in folds:
        train, held = fold.masks(sources)
        if (train & held).any():  # make_folds rules this out; a hand-made fold must not leak either
            raise ValueError(f"fold {fold.name!r} would train on the crops it holds out")
        model = fit(base, syn, real.x[train], real.y[train], cfg)
        apply_prior(model, log_ratio)
        oof[held] = predict_logits(model, real.x[held])
        if on_fold is not None:
            on_fold(fold, model)
        print(f"  fold {fold.name}: trained on {int(train.sum())} real crops, predicted {int(held.sum())}", flush=True)
    return oof


def _save_fold_onnx(folder: Path, files: dict[str, str]) -> Callable[[Fold, nn.Module], None]:
    from export.torch_onnx import to_onnx  # export stack: only needed when fold models are written

    def save(fold: Fold, model: nn.Module) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        name = f"{fold.name}.onnx"
        onnx.save(to_onnx(model, model.input_size), str(folder / name))
        files[fold.name] = name

    return save


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name, value in asdict(FinetuneConfig()).items():
        kind = (lambda s: s.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        ap.add_argument(f"--{name.replace('_', '-')}", type=kind, default=value)
    cfg = FinetuneConfig(**vars(ap.parse_args(argv)))
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    t0 = time.monotonic()
    base, out = Path(cfg.base), Path(cfg.out)
    _, meta = load_checkpoint(base)
    classes = list(meta["classes"])
    sealed = parse_sources(cfg.sealed)
    real = load_real_set(Path(cfg.real_labels), classes)
    syn = render_dataset(cfg.synthetic_size, seed=cfg.seed * 1000 + 7, classes=classes, workers=cfg.workers)
    syn_val = render_dataset(4000, seed=cfg.seed * 1000 + 8, classes=classes, workers=cfg.workers)
    metrics: dict[str, object] = {"real_dev_zero_shot": meta.get("metrics", {}).get("real_dev")}
    temperature = float(meta.get("temperature", 1.0))
    log_ratio = prior_log_ratio(cfg.class_prior, classes)
    tuning = ~np.isin(real.sources, sealed)
    if cfg.cv:
        folds = make_folds(list(real.sources), sealed)
        files: dict[str, str] = {}
        oof = cross_validate(base, syn, real, folds, cfg, log_ratio, on_fold=_save_fold_onnx(out / "folds", files))
        # scored and calibrated on the TUNING sources only: the sealed fold's predictions are for the final
        # evaluation (models.evaluate --unseal), not for anything decided here
        t_oof, t_y, t_src = oof[tuning], real.y[tuning], real.sources[tuning]
        metrics["real_dev_cv_no_prior"] = scores(t_oof - log_ratio, t_y, classes)
        per_source = {s: {"n": int((t_src == s).sum()), **scores(t_oof[t_src == s], t_y[t_src == s], classes)}
                      for s in sorted(set(t_src))}  # fmt: skip
        metrics["real_dev_cv"] = {**scores(t_oof, t_y, classes), "per_source": per_source}
        temperature = fit_temperature(t_oof, t_y)  # calibrated on out-of-fold REAL predictions
        np.save(_oof_path(cfg), t_oof)
        write_confusion(out / "confusion_real_dev_cv.png", t_oof, t_y, classes, "real-dev, out of fold")
        extra = {"temperature": temperature, "sealed": list(sealed), "class_prior": cfg.class_prior, "classes": classes}
        write_manifest(out / "folds", folds, files, extra)
    final = real if cfg.final_includes_sealed else real.subset(tuning)
    model = finetune(base, syn, final.x, final.y, cfg)
    apply_prior(model, log_ratio)
    metrics["real_dev_trained_on"] = scores(predict_logits(model, final.x), final.y, classes)
    metrics["synthetic_val"] = scores(predict_logits(model, syn_val[0]), syn_val[1], classes)
    save_checkpoint(
        out / "best.pt",
        model,
        meta["arch"],
        classes,
        temperature=temperature,
        metrics=metrics,
        config={**meta.get("config", {}), "finetune": asdict(cfg)},
        macs=meta.get("macs"),
        params=meta.get("params"),
        data=f"{meta.get('data', 'synthetic')}; then fine-tuned {cfg.steps} steps on 3/4 synthetic + 1/4 real-dev "
        f"crops ({'all sources' if cfg.final_includes_sealed else 'tuning sources'}); real-dev figures are "
        f"leave-one-source-out cross-validation over the tuning sources (real_dev_cv; sealed: {', '.join(sealed)}); "
        f"class prior {cfg.class_prior or 'none'} folded into the output bias",
    )
    (out / "finetune.json").write_text(json.dumps({"metrics": metrics, "temperature": temperature}, indent=1))
    print(
        f"saved {out / 'best.pt'} in {time.monotonic() - t0:.0f}s; T={temperature:.3f}; "
        f"{json.dumps({k: v for k, v in metrics.items() if k != 'real_dev_cv'})}",
        flush=True,
    )
    if "real_dev_cv" in metrics:
        cv = metrics["real_dev_cv"]
        print(f"leave-one-source-out: accuracy {cv['accuracy']:.4f} binary {cv['binary_accuracy']:.4f}", flush=True)


def _oof_path(cfg: FinetuneConfig) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    return out / "oof_logits.npy"


if __name__ == "__main__":
    main()
