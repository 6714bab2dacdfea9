"""
muP, width and depth scaling (paper §3.1 "model wind tunnel", PAPER.md §2), in one place.

With the width multiplier m = hidden_size / dim_model_base (model.py applies the forward multipliers):
    init    hidden matrices ~ N(0, (init_std / sqrt(m))^2), embedding ~ N(0, init_std^2)   (model.py)
    forward h_0 = scale_emb * E[x];  residual branches x scale_depth / sqrt(L);  logits = head(h_L / m)
    Adam lr hidden matrices: lr / m (with weight decay);  embeddings (and an untied head): lr;  norms: lr, no decay
Why: under Adam the update of a hidden matrix changes its output by ~ lr * fan_in per coordinate, so lr / m keeps
the change O(1) as width grows; the logits' 1/m does the same for the head, whose input coordinates all move
together. Then the optimal base lr (~0.01 in the paper, Fig. 3) no longer depends on width, and hyper-parameters
tuned on a tiny model transfer to 2.4B.

`python mup.py` runs the coordinate check: models of several widths trained a few steps at one lr, muP against
standard parametrisation (use_mup=False: m := 1 in init, logits and lr), the mean |activation| of each layer kind
against width. Under muP the curves are flat; under SP they grow with width.
"""

import argparse
import json
import math
import os

import torch

from model import MiniCPM, MiniCPMConfig

ASSETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def param_groups(model):
    """The muP parameter groups: [(name, params, lr_scale, weight_decay_on)]."""
    m = model.config.width_mult
    hidden, embed, norms = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            norms.append(p)
        elif model.is_embedding(name):
            embed.append(p)
        else:  # q, k, v, o, gate, up, down (and an MoE router): hidden matrices
            hidden.append(p)
    return [("hidden", hidden, 1.0 / m, True), ("embedding", embed, 1.0, True), ("norm", norms, 1.0, False)]


def configure_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95)):
    """AdamW with the muP groups: hidden 2-D matrices lr/m with decay, embeddings lr, norms lr without decay.
    Each group keeps its `lr_scale`, so a schedule sets lr_t with `set_lr(optimizer, lr_t)`."""
    groups = [dict(params=ps, name=name, lr_scale=scale, lr=lr * scale, weight_decay=weight_decay if wd else 0.0)
              for name, ps, scale, wd in param_groups(model) if ps]
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_cuda for p in params)  # the fused kernel on CUDA; foreach on CPU
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


# ----------------------------------------------------------------------------------------------------------
# coordinate check

KINDS = ("embedding", "attention", "mlp", "logits")


def width_config(width, use_mup, layers=2, vocab=320, **kw):
    heads = max(2, width // 64)
    return MiniCPMConfig(vocab_size=vocab, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=heads, intermediate_size=int(2.5 * width) // 16 * 16,
                         use_mup=use_mup, **kw)


def coord_check(widths, use_mup, steps=4, lr=1e-2, seeds=(0,), batch_size=8, seq_len=64, layers=2, data=None):
    """Mean |activation| per layer kind after `steps` Adam steps at `lr`, for each width: {kind: [per width]}."""
    from corpus import TokenData
    data = data or TokenData("embedded")
    out = {k: [0.0] * len(widths) for k in KINDS}
    for wi, width in enumerate(widths):
        for seed in seeds:
            torch.manual_seed(seed)
            model = MiniCPM(width_config(width, use_mup, layers, vocab=max(320, data.vocab_size)))
            opt = configure_optimizer(model, lr, weight_decay=0.0)
            acts = {}
            hooks = [model.model.embed_tokens.register_forward_hook(_record(acts, "embedding"))]
            for layer in model.model.layers:
                hooks.append(layer.self_attn.register_forward_hook(_record(acts, "attention")))
                hooks.append(layer.mlp.register_forward_hook(_record(acts, "mlp")))
            for step in range(steps + 1):
                x, y = data.batch("train", seed, step, batch_size, seq_len)
                acts.clear()
                logits, loss = model(x, y)
                if step == steps:  # measure after `steps` updates
                    acts.setdefault("logits", []).append(logits.detach().abs().mean().item())
                    break
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
            for h in hooks:
                h.remove()
            for k in KINDS:
                out[k][wi] += sum(acts[k]) / len(acts[k]) / len(seeds)
    return out


def _record(store, kind):
    def hook(module, inputs, output):
        store.setdefault(kind, []).append(output.detach().abs().mean().item())
    return hook


def growth(values, widths):
    """Slope of log(mean |act|) against log(width): ~0 is flat (muP), > 0 grows with width (SP)."""
    lx = [math.log(w) for w in widths]
    ly = [math.log(v) for v in values]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def plot_coord_check(results, widths, steps, lr, file):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    for ax, mode in zip(axes, ("muP", "SP")):
        for k in KINDS:
            ax.plot(widths, results[mode][k], marker="o", label=f"{k} (slope {growth(results[mode][k], widths):+.2f})")
        ax.set(xscale="log", yscale="log", xlabel="hidden_size", title=f"{mode}: after {steps} steps at lr={lr}")
        ax.minorticks_off()
        ax.set_xticks(widths, [str(w) for w in widths])
        ax.legend(fontsize=8)
    axes[0].set_ylabel("mean |activation|")
    fig.tight_layout()
    os.makedirs(os.path.dirname(file), exist_ok=True)
    fig.savefig(file, dpi=120)
    plt.close(fig)


def run_coord_check(widths, steps, lr, seeds, layers=2, out=ASSETS):
    from tqdm import tqdm
    results = {}
    for mode in tqdm(("muP", "SP"), desc="coord check"):
        results[mode] = coord_check(widths, mode == "muP", steps=steps, lr=lr, seeds=seeds, layers=layers)
    print(f"mean |activation| after {steps} steps at lr={lr} (columns: hidden_size)")
    print(f"{'':16s}" + "".join(f"{w:>9d}" for w in widths) + "    slope")
    for mode in ("muP", "SP"):
        for k in KINDS:
            v = results[mode][k]
            print(f"{mode + ' ' + k:16s}" + "".join(f"{x:9.3f}" for x in v) + f"   {growth(v, widths):+.3f}")
    plot_coord_check(results, widths, steps, lr, os.path.join(out, "coord_check.png"))
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "coord_check.json"), "w") as f:
        json.dump(dict(widths=widths, steps=steps, lr=lr, seeds=list(seeds), results=results), f, indent=1)
    print(f"figure: {os.path.join(out, 'coord_check.png')}")
    return results


def main():
    p = argparse.ArgumentParser(description="muP coordinate check (paper §3.1): mean |activation| vs width, "
                                            "muP against standard parametrisation")
    p.add_argument("--widths", type=int, nargs="+", default=[128, 256, 512, 1024])
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--lr", type=float, default=1e-2)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--layers", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="widths 64..512, one seed")
    a = p.parse_args()
    if a.quick:
        a.widths, a.seeds = [64, 128, 256, 512], 1
    run_coord_check(a.widths, a.steps, a.lr, tuple(range(a.seeds)), a.layers)


if __name__ == "__main__":
    main()
