"""LR range test (Smith 2015): raise the LR exponentially over a few hundred steps, record the loss,
suggest the LR where the smoothed loss falls fastest (divided by a safety factor for one-cycle's peak).

    python -m models.train lr-find --out runs/lrfind
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

from models.net import build_model
from models.synth import render_dataset
from models.train import TrainConfig, augment, to_input


def lr_find(cfg: TrainConfig, lo: float = 1e-5, hi: float = 1.0, steps: int = 200) -> float:
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    torch.set_num_threads(cfg.threads)
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y = render_dataset(min(cfg.train_size, steps * cfg.batch_size), seed=cfg.seed * 1000 + 1, workers=cfg.workers)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    model = build_model(cfg.arch, len(cfg.classes))
    opt = torch.optim.AdamW(model.parameters(), lr=lo, weight_decay=cfg.weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    factor = (hi / lo) ** (1 / (steps - 1))
    lrs, losses, smooth = [], [], 0.0
    for step in range(steps):
        lr = lo * factor**step
        for g in opt.param_groups:
            g["lr"] = lr
        idx = torch.randint(0, len(xt), (cfg.batch_size,), generator=gen)
        loss = loss_fn(model(augment(to_input(xt[idx]), gen)), yt[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        smooth = 0.9 * smooth + 0.1 * loss.item() if step else loss.item()
        lrs.append(lr)
        losses.append(smooth)
        if step > 10 and (not math.isfinite(smooth) or smooth > 4 * min(losses)):
            break
    grads = np.gradient(np.array(losses), np.log(np.array(lrs)))
    steepest = float(lrs[int(np.argmin(grads[: max(len(grads) - 5, 1)]))])
    suggestion = steepest * 3  # one-cycle peaks above the steepest-descent LR
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.semilogx(lrs, losses)
    ax.axvline(suggestion, ls="--", c="r", label=f"suggested max lr {suggestion:.2g}")
    ax.set_xlabel("learning rate"), ax.set_ylabel("smoothed loss"), ax.legend()
    fig.savefig(out / "lr_find.png", dpi=100)
    plt.close(fig)
    (out / "lr_find.json").write_text(json.dumps({"lrs": lrs, "losses": losses, "suggested_lr": suggestion}))
    print(f"suggested max lr for one-cycle: {suggestion:.3g} (plot: {out / 'lr_find.png'})")
    return suggestion
