"""Train a bubble classifier on synthetic crops; watch it on real ones.

    python -m models.train --out runs/default                  # the default model (<= 20 min, 2 cores)
    python -m models.train --out runs/smoke --train-size 2000 --epochs 2   # a quick check
    python -m models.train lr-find --out runs/lrfind           # LR range test, writes a PNG + suggestion

One readable loop: balanced synthetic set rendered once (every class equally often: class-balanced
sampling by construction), cheap symmetric augmentation per batch (flips, 90-degree turns), AdamW with a
one-cycle schedule, early stopping on the *synthetic* validation loss with the best weights restored.
The real-dev crops are evaluated every epoch (same decode/resize as the service) but never used to pick
weights, so the figures reported on them are not tuned to them.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models import plots
from models.checkpoint import save_checkpoint
from models.net import build_model, count_macs, count_params
from models.realdev import SEALED, RealSet, load_real_set
from models.synth import render_dataset
from service.core.taxonomy import CLASSES, PROFILES

DEFAULT_REAL = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "real-dev" / "labels.csv"


@dataclass
class TrainConfig:
    out: str = "runs/default"
    arch: str = "small"
    seed: int = 0
    train_size: int = 192_000
    val_size: int = 8_000
    epochs: int = 12
    batch_size: int = 256
    lr: float = 4e-3
    weight_decay: float = 1e-4
    label_smoothing: float = 0.05
    patience: int = 4
    #: decay of the exponential moving average of the weights that is validated and saved (0 = off)
    ema: float = 0.999
    threads: int = 2
    workers: int = 2
    real_labels: str = str(DEFAULT_REAL)
    classes: list[str] = field(default_factory=lambda: list(CLASSES))


def to_input(x_u8: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 [N,H,W] -> float [N,1,H,W] = pixel/255, the model config's preprocessing (mean 0, std 1)."""
    t = torch.as_tensor(x_u8)
    return t.unsqueeze(1).float().div_(255.0)


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Label-preserving symmetries of a bubble crop: flips and 90-degree rotations."""
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(3)
    if torch.rand(1, generator=gen).item() < 0.5:
        x = x.flip(2)
    k = int(torch.randint(0, 4, (1,), generator=gen).item())
    return torch.rot90(x, k, (2, 3)) if k else x


@torch.no_grad()
def predict_logits(model: nn.Module, x_u8: np.ndarray, batch: int = 1024) -> np.ndarray:
    model.eval()
    return torch.cat([model(to_input(x_u8[i : i + batch])) for i in range(0, len(x_u8), batch)]).numpy()


def scores(logits: np.ndarray, y: np.ndarray, classes: list[str]) -> dict[str, float]:
    """Multi-class and ink-profile binary accuracy plus mean cross-entropy."""
    z = logits - logits.max(1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(1, keepdims=True))
    marked = np.array([c in PROFILES["ink"] for c in classes])
    p_marked = np.exp(logp)[:, marked].sum(1)
    return {
        "loss": float(-logp[np.arange(len(y)), y].mean()),
        "accuracy": float((logits.argmax(1) == y).mean()),
        "binary_accuracy": float(((p_marked >= 0.5) == marked[y]).mean()),
    }


def train(cfg: TrainConfig) -> Path:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    t0 = time.monotonic()
    x_tr, y_tr = render_dataset(cfg.train_size, seed=cfg.seed * 1000 + 1, classes=cfg.classes, workers=cfg.workers)
    x_va, y_va = render_dataset(cfg.val_size, seed=cfg.seed * 1000 + 2, classes=cfg.classes, workers=cfg.workers)
    real_csv = Path(cfg.real_labels)
    # the monitor never reads the sealed sources (models.realdev): they are for the final evaluation only
    real: RealSet | None = load_real_set(real_csv, cfg.classes, exclude=SEALED) if real_csv.is_file() else None
    print(f"rendered {len(x_tr)} train / {len(x_va)} val crops in {time.monotonic() - t0:.0f}s", flush=True)

    model = build_model(cfg.arch, len(cfg.classes))
    print(f"arch={cfg.arch} params={count_params(model)} MACs/crop={count_macs(model)}", flush=True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = len(x_tr) // cfg.batch_size
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing)
    xt, yt = torch.from_numpy(x_tr), torch.from_numpy(y_tr)
    # The weights' moving average (BN statistics included) is what gets validated and saved: single-epoch
    # snapshots of a small net swing a lot on real crops (their accuracy moved 56-76 % between epochs).
    ema = WeightEMA(model, cfg.ema) if cfg.ema else None

    history: list[dict[str, float]] = []
    best, best_state, bad = float("inf"), copy.deepcopy(model.state_dict()), 0
    for epoch in range(cfg.epochs):
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        running = 0.0
        for step in range(steps_per_epoch):
            idx = perm[step * cfg.batch_size : (step + 1) * cfg.batch_size]
            xb = augment(to_input(xt[idx]), gen)  # [B,1,32,32]
            loss = loss_fn(model(xb), yt[idx])  # logits [B,C]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            if ema is not None:
                ema.update(model)
            running += loss.item()
        row = {"epoch": epoch + 1, "train_loss": running / steps_per_epoch}
        net = ema.module if ema is not None else model
        row.update({f"val_{k}": v for k, v in scores(predict_logits(net, x_va), y_va, cfg.classes).items()})
        if real is not None:
            row.update({f"real_{k}": v for k, v in scores(predict_logits(net, real.x), real.y, cfg.classes).items()})
        row["elapsed_s"] = time.monotonic() - t0
        history.append(row)
        print(json.dumps({k: round(v, 4) for k, v in row.items()}), flush=True)
        if row["val_loss"] < best - 1e-4:
            best, best_state, bad = row["val_loss"], copy.deepcopy(net.state_dict()), 0
        else:
            bad += 1
            if bad >= cfg.patience:
                print(f"early stop after epoch {epoch + 1}", flush=True)
                break
    model.load_state_dict(best_state)

    metrics: dict[str, object] = {"epochs_run": len(history)}
    val_logits = predict_logits(model, x_va)
    metrics["synthetic_val"] = scores(val_logits, y_va, cfg.classes)
    write_confusion(out / "confusion_synthetic.png", val_logits, y_va, cfg.classes, "synthetic validation")
    if real is not None:
        real_logits = predict_logits(model, real.x)
        metrics["real_dev"] = scores(real_logits, real.y, cfg.classes)
        write_confusion(out / "confusion_real_dev.png", real_logits, real.y, cfg.classes, "real-dev (monitor only)")
    meta = {
        "config": asdict(cfg),
        "metrics": metrics,
        "macs": count_macs(model),
        "params": count_params(model),
        "data": f"{cfg.train_size} synthetic crops (models.synth, seed {cfg.seed * 1000 + 1}), class-balanced; "
        "real-dev used for monitoring only, never for weights or model selection",
    }
    ckpt = out / "best.pt"
    save_checkpoint(ckpt, model, cfg.arch, cfg.classes, **meta)
    (out / "history.json").write_text(json.dumps(history, indent=1))
    _plot_curves(history, out / "curves.png")
    # temperature scaling on the held-out SYNTHETIC validation split (real-dev stays a pure test)
    from models.calibrate import fit_temperature

    temperature = fit_temperature(val_logits, y_va)
    save_checkpoint(ckpt, model, cfg.arch, cfg.classes, temperature=temperature, **meta)
    print(f"saved {ckpt} (temperature {temperature:.3f}); metrics {json.dumps(metrics)}", flush=True)
    return ckpt


def write_confusion(path: Path, logits: np.ndarray, y: np.ndarray, classes: list[str], title: str) -> Path:
    """Confusion-matrix PNG (rows true, columns argmax) of a run's logits."""
    cm = plots.confusion_counts(y, logits.argmax(1), len(classes))
    return plots.write_png(path, plots.confusion_image(cm, classes, title))


class WeightEMA:
    """Exponential moving average of a model's weights and BN buffers, with the usual warm-up
    (decay = min(decay, (1 + n) / (10 + n))) so that short runs are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.module = copy.deepcopy(model).eval()
        self.decay, self.n = decay, 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.n += 1
        d = min(self.decay, (1 + self.n) / (10 + self.n))
        for avg, cur in zip(self.module.state_dict().values(), model.state_dict().values(), strict=True):
            if avg.dtype.is_floating_point:
                avg.lerp_(cur, 1.0 - d)
            else:
                avg.copy_(cur)


def _plot_curves(history: list[dict[str, float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [h["epoch"] for h in history]
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    for key in ("train_loss", "val_loss", "real_loss"):
        if key in history[0]:
            a.plot(ep, [h[key] for h in history], label=key)
    for key in ("val_accuracy", "real_accuracy", "real_binary_accuracy"):
        if key in history[0]:
            b.plot(ep, [h[key] for h in history], label=key)
    a.set_xlabel("epoch"), a.legend(), b.set_xlabel("epoch"), b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("command", nargs="?", default="train", choices=["train", "lr-find"])
    defaults = TrainConfig()
    for name, value in asdict(defaults).items():
        if name == "classes":
            continue
        ap.add_argument(f"--{name.replace('_', '-')}", type=type(value), default=value)
    args = vars(ap.parse_args(argv))
    command = args.pop("command")
    cfg = TrainConfig(**args)
    if command == "lr-find":
        from models.lr_find import lr_find

        lr_find(cfg)
    else:
        train(cfg)


if __name__ == "__main__":
    main()
