"""
muP, width and depth scaling (paper §3.1 "model wind tunnel"), in one place.

With the width multiplier m = hidden_size / dim_model_base (model.py applies the forward multipliers):
    init    hidden matrices ~ N(0, (init_std / sqrt(m))^2), embedding ~ N(0, init_std^2)   (model.py)
    forward h_0 = scale_emb * E[x];  residual branches x scale_depth / sqrt(L);  logits = head(h_L / m)
    Adam lr hidden matrices: lr / m (with weight decay);  embeddings (and an untied head): lr;  norms: lr, no decay
Why: under Adam the update of a hidden matrix changes its output by ~ lr * fan_in per coordinate, so lr / m keeps
the change O(1) as width grows; the logits' 1/m does the same for the head, whose input coordinates all move
together. Then the optimal base lr (~0.01 in the paper, Fig. 3) no longer depends on width, and hyper-parameters
tuned on a tiny model transfer to 2.4B.

MoE router (moe.py, paper §7.3): the router W_router (E x hidden_size) is a hidden matrix here: init
N(0, (init_std/sqrt(m))^2), lr / m, weight decay. Its fan-in is hidden_size, which grows with width, so the same
argument applies to it as to q/k/v: each of its E outputs sums hidden_size coordinates that move together, and
lr / m keeps the change of the router logits O(1) per step as the model widens. Its fan-out E does not grow with
width, so no output multiplier is needed (unlike the vocabulary head, whose logits take the 1/m). The stacked expert
weights (E, out, in) are hidden matrices too.

`python -m experiments.mup coord` runs the coordinate check (muP against standard parametrisation, use_mup=False:
m := 1 in init, logits and lr) and `python -m experiments.mup transfer` reruns Fig. 3 (loss against lr for several
widths, whose minima line up under muP and slide under SP).
"""

import torch

from model import MiniCPM, MiniCPMConfig, ladder


def named_param_groups(model):
    """The muP parameter groups: [(group, [(param name, param)], lr_scale, weight_decay_on)]."""
    m = model.config.width_mult
    hidden, embed, norms = [], [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.dim() < 2:
            norms.append((name, p))
        elif model.is_embedding(name):
            embed.append((name, p))
        else:  # q, k, v, o, gate, up, down, and the MoE router and stacked experts: hidden matrices
            hidden.append((name, p))
    return [("hidden", hidden, 1.0 / m, True), ("embedding", embed, 1.0, True), ("norm", norms, 1.0, False)]


def param_groups(model):
    """The muP parameter groups: [(name, params, lr_scale, weight_decay_on)]."""
    return [(g, [p for _, p in ps], scale, wd) for g, ps, scale, wd in named_param_groups(model)]


def configure_optimizer(model, lr, weight_decay=0.1, betas=(0.9, 0.95)):
    """AdamW with the muP groups: hidden 2-D matrices lr/m with decay, embeddings lr, norms lr without decay.
    Each group keeps its `lr_scale`, so a schedule sets lr_t with `set_lr(optimizer, lr_t)`."""
    groups = [dict(params=ps, name=name, lr_scale=scale, lr=lr * scale, weight_decay=weight_decay if wd else 0.0)
              for name, ps, scale, wd in param_groups(model) if ps]
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_cuda for p in params)  # the fused kernel on CUDA; foreach on CPU
    return torch.optim.AdamW(groups, lr=lr, betas=betas, fused=fused or None)


def optimizer_param_names(model):
    """The names of the params of configure_optimizer(model), in the order PyTorch numbers them."""
    return [n for _, ps, _, _ in named_param_groups(model) for n, _ in ps]


def named_optimizer_state(config, optimizer_state):
    """{param name: AdamW state} of an optimizer state dict written for a model of `config` by configure_optimizer:
    PyTorch numbers the params in group order (ckpt.pt), DCP names them (ckpt_dcp). Lets a run start from another
    model's optimizer by name (a context extension that unties the head, sparse upcycling)."""
    with torch.device("meta"):
        names = optimizer_param_names(MiniCPM(config))
    ids = [i for g in optimizer_state["param_groups"] for i in g["params"]]
    by_id = {i: (i if isinstance(i, str) else names[k]) for k, i in enumerate(ids)}
    return {by_id[i]: st for i, st in optimizer_state["state"].items()}


def load_named_optimizer_state(model, optimizer, named_state):
    """Load {param name: AdamW state} into the optimizer configure_optimizer made for `model`; params not named
    there start without state. Through optimizer.load_state_dict, so PyTorch puts each tensor where it belongs."""
    names = optimizer_param_names(model)
    sd = optimizer.state_dict()
    sd["state"] = {i: named_state[n] for i, n in enumerate(names) if n in named_state}
    optimizer.load_state_dict(sd)


def set_lr(optimizer, lr):
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def width_config(width, use_mup, layers=2, vocab=320, **kw):
    """A model of the wind-tunnel ladder (model.ladder) in muP or standard parametrisation."""
    return MiniCPMConfig(**ladder(width, layers, vocab), use_mup=use_mup, **kw)
