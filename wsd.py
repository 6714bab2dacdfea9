"""
Warmup-Stable-Decay learning-rate schedule (paper §4) and the cosine baselines it is compared with.

    WSD(T; s) = s / W * eta        s < W             (linear warmup)
              = eta                W <= s < T        (stable: the peak lr, as long as one likes)
              = f(s - T) * eta     T <= s <= S       (decay, 0 < f <= 1 decreasing)

MiniCPM's decay is exponential, f(s - T) = 0.5 ** ((s - T) / T_half), with a half-life of 5000 steps for 2.4B.
The paper's wording is ambiguous between half-life and decay length; we implement the half-life form: pass
`half_life` to use it as is, or leave it None and it is chosen so that the lr reaches final_lr_ratio * eta at S.
The other shapes ("linear", "cosine", "1-sqrt") go from eta to final_lr_ratio * eta over [T, S].
Why WSD: the stable phase can be continued indefinitely and a decay branched off any checkpoint, so one run gives
the whole loss-vs-data curve (O(mC) instead of O(m^2 C) for m data sizes), and it matches Cosine(S) (§4.3).

Baselines: Cosine(T) (warmup, then cosine from eta to final_lr_ratio * eta over T steps, flat after T) and
CosineLoop(T) (the cosine keeps going after T, rising back towards eta: our reading of the paper's Fig. 4).

A run's schedule comes from its config (`lr_at(cfg, s)`: train.py and dpo.py both train by it), with the
defaults `schedule_defaults` fills in. `python -m experiments.wsd` draws every schedule and reruns §4.3-4.4 small.
"""

import math

import torch

from configurator import ConfigError

DECAYS = ("exp", "linear", "cosine", "1-sqrt")
SCHEDULES = ("wsd", "cosine", "cosine_loop")


def _check(W, T, S, final_lr_ratio):
    if not (isinstance(W, int) and isinstance(T, int) and isinstance(S, int)):
        raise ValueError(f"W={W!r}, T={T!r}, S={S!r}: steps must be integers")
    if W < 0:
        raise ValueError(f"W={W} (warmup steps) must be >= 0")
    if W > T:
        raise ValueError(f"W={W} > T={T}: warmup must end before the decay starts; lower W or raise T")
    if T > S:
        raise ValueError(f"T={T} > S={S}: the decay must start before the end; lower T or raise S")
    if not 0 <= final_lr_ratio <= 1:  # 0: decay to zero (Bergsma et al. 2025, "Straight to Zero")
        raise ValueError(f"final_lr_ratio={final_lr_ratio} must be in [0, 1]")


def wsd_lr(s, *, lr, W, T, S, decay="exp", final_lr_ratio=0.1, half_life=None):
    """WSD(T; s): the learning rate at step s (paper §4.2)."""
    _check(W, T, S, final_lr_ratio)
    if decay not in DECAYS:
        raise ValueError(f"decay={decay!r}: unknown shape, use one of {', '.join(DECAYS)}")
    if half_life is not None and not half_life > 0:
        raise ValueError(f"half_life={half_life} must be > 0 (or None to end the decay at final_lr_ratio)")
    if decay == "exp" and half_life is None and final_lr_ratio == 0:
        raise ValueError("an exp decay never reaches 0: use decay=linear (or cosine, 1-sqrt) to decay to zero, or "
                         "give half_life")
    if s < W:
        return lr * s / W
    if s < T:
        return lr
    if S == T:  # no decay phase
        return lr
    s = min(s, S)
    x = (s - T) / (S - T)  # decay progress in [0, 1]
    r = final_lr_ratio
    if decay == "exp":
        if half_life is not None:
            h = half_life
        elif r < 1:  # the half-life that ends the decay at r
            h = (S - T) * math.log(2) / math.log(1 / r)
        else:
            h = math.inf
        f = 0.5 ** ((s - T) / h)
    elif decay == "linear":
        f = 1 - (1 - r) * x
    elif decay == "cosine":
        f = r + (1 - r) * 0.5 * (1 + math.cos(math.pi * x))
    else:  # "1-sqrt"
        f = 1 - (1 - r) * math.sqrt(x)
    return f * lr


def cosine_lr(s, *, lr, T, W=0, final_lr_ratio=0.1):
    """Cosine(T): linear warmup over W steps, cosine from lr to final_lr_ratio * lr at T, then flat."""
    _check(W, T, T, final_lr_ratio)
    if s < W:
        return lr * s / W
    x = min(1.0, (s - W) / max(1, T - W))
    return lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x)))


def cosine_loop_lr(s, *, lr, T, W=0, final_lr_ratio=0.1):
    """CosineLoop(T): like Cosine(T) but the cosine continues after T, rising back to lr at 2T, and so on."""
    _check(W, T, T, final_lr_ratio)
    if s < W:
        return lr * s / W
    x = (s - W) / max(1, T - W)
    return lr * (final_lr_ratio + (1 - final_lr_ratio) * 0.5 * (1 + math.cos(math.pi * x)))


def schedule_defaults(cfg):
    """The config with its schedule's defaults filled in, which scale with the run (paper §4.3: a decay of ~10% of
    the steps): decay_steps None -> 10% of S for WSD (0 for the cosines), warmup_steps None -> 5% of S (within
    the stable phase); then the schedule's own checks (W > T, an unknown shape ...) as one ConfigError line."""
    cfg, S = dict(cfg), cfg["max_steps"]
    if cfg["schedule"] not in SCHEDULES:
        raise ConfigError(f"config key schedule={cfg['schedule']!r}: use {', '.join(SCHEDULES)}")
    if cfg["decay_steps"] is None:
        cfg["decay_steps"] = max(1, round(S / 10)) if cfg["schedule"] == "wsd" else 0
    if cfg["warmup_steps"] is None:
        cfg["warmup_steps"] = max(0, min(round(S / 20), S - cfg["decay_steps"]))
    if not cfg["decay_steps"] <= S:
        raise ConfigError(f"decay_steps={cfg['decay_steps']} must be within [0, max_steps={S}]")
    lr_at(cfg, 0)
    return cfg


def lr_at(cfg, step, stage_start=0):
    """The learning rate eta_s at s = `step` of a run's config: S = max_steps, W = warmup_steps, T = S - decay_steps,
    the shape `decay` (and `half_life`) for WSD, T = cosine_steps (0: S) for the cosines. The trainers count their
    optimizer steps from 1 (as metrics.jsonl does) and train step s at eta_s, s = 1 .. S: so each of the W warmup
    steps trains at an lr > 0 (eta W'/W for W' = 1 .. W), and each of the S - T decay steps at a lower lr than the
    last, the final one at final_lr_ratio * eta. (eta_0 = 0 is never trained at.) A stage that starts at step
    `stage_start` of another run (init_from) with stage_warmup_steps = V > 0 scales the first V of its steps by
    (s - stage_start) / V, so that the lr climbs from near 0 instead of jumping (after a decayed checkpoint, an
    upcycled model); V = 0 keeps the schedule as it is (a WSD decay branch continues its stable run)."""
    S, W = cfg["max_steps"], cfg["warmup_steps"]
    kw = dict(lr=cfg["lr"], W=W, final_lr_ratio=cfg["final_lr_ratio"])
    V = cfg.get("stage_warmup_steps", 0)
    ramp = min(1.0, (step - stage_start) / V) if V and stage_start else 1.0
    try:
        if cfg["schedule"] == "wsd":
            return ramp * wsd_lr(step, T=S - cfg["decay_steps"], S=S, decay=cfg["decay"],
                                 half_life=cfg["half_life"] or None, **kw)
        fn = cosine_lr if cfg["schedule"] == "cosine" else cosine_loop_lr
        return ramp * fn(step, T=cfg["cosine_steps"] or S, **kw)
    except ValueError as e:
        raise ConfigError(f"schedule: {e}") from None


class DecayStats:
    """Paper §4.4, the decay phase seen from the optimizer: each step, the cosine between this step's gradient and
    the previous one (over every weight matrix, after clipping), and the largest element-wise update of any matrix,
    max_ij |W_ij(t+1) - W_ij(t)|. train.py (config key update_stats) calls step(optimizer, ...) in place of
    optimizer.step(); rows: [step, lr, grad norm, cosine (None at the first step), max |update|, loss]."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.dim() >= 2]
        self.prev_grad, self.weights, self.rows = None, None, []

    def step(self, optimizer, step, lr, grad_norm, loss):
        cos = self.before_step()
        optimizer.step()
        self.rows.append([step, lr, grad_norm, cos, self.after_step(), loss])

    @torch.no_grad()
    def before_step(self):
        g = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().float() for p in self.params])
        cos = None if self.prev_grad is None else torch.nn.functional.cosine_similarity(g, self.prev_grad, 0).item()
        self.prev_grad, self.weights = g, [p.detach().clone() for p in self.params]
        return cos

    @torch.no_grad()
    def after_step(self):
        return max((p.detach() - w).abs().max().item() for p, w in zip(self.params, self.weights))
