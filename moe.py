"""
MiniCPM-MoE by sparse upcycling (paper §7.3).

Every MLP of a trained dense MiniCPM becomes `num_experts` experts, each an exact copy of that MLP, plus a new
bias-free router. Per token x (the layer is `model.MoE`, which `num_experts > 0` puts in every block):

    p = softmax(W_router x)                  # over the E experts
    K = top_k(p)                             # the k experts kept (k = 2 for MiniCPM-MoE-8x2B)
    y = sum_{i in K} p_i / (sum_{j in K} p_j) * Expert_i(x)

At upcycling time all experts are equal and the kept weights sum to 1, so the MoE computes the dense function
(up to float rounding) and training continues from the dense loss instead of from scratch. A Switch-style
load-balancing loss (`model.load_balancing_loss`) keeps the router from collapsing onto a few experts:

    aux = E * sum_i f_i * P_i    f_i: fraction of the token slots routed to expert i, P_i: mean router probability

which is 1 for perfectly balanced routing and ~E/k when every token goes to the same k experts. The trainer adds
`router_aux_loss_coef` (0.01) x aux to its objective; the reported losses are the pure cross-entropy.

`python train.py --init_from=DENSE_OUT --num_experts=8 --top_k=2` upcycles a run (train.py calls the two state-dict
functions below); `python -m experiments.moe` compares the upcycled MoE with the dense model continued;
`python bench.py --modes moe` times one MoE layer against the dense MLP.
"""

import dataclasses
import math

import torch

from model import MiniCPM


def upcycle_state_dict(dense_state, config, seed=0):
    """The weights of the MoE model of `config` from a dense model's state dict: every expert a copy of its layer's
    dense MLP (gate/up/down (f, d) -> (E, f, d)), a new N(0, hidden std) router per layer (muP: the router is a hidden
    matrix, mup.py); everything else (embeddings, attention, norms) is the dense model's."""
    E = config.num_experts
    state = {}
    for k, v in dense_state.items():
        if ".mlp." in k:  # model.layers.i.mlp.gate_proj.weight (f, d) -> model.layers.i.mlp.gate_proj (E, f, d)
            state[k.removesuffix(".weight")] = v.unsqueeze(0).repeat(E, 1, 1)
        else:
            state[k] = v.clone()
    g = torch.Generator().manual_seed(seed)
    std = config.init_std / math.sqrt(config.width_mult)
    ref = dense_state["model.embed_tokens.weight"]
    for i in range(config.num_hidden_layers):
        router = torch.randn(E, config.hidden_size, generator=g) * std
        state[f"model.layers.{i}.mlp.router.weight"] = router.to(ref.dtype).to(ref.device)
    return state


def upcycle_optimizer_state(named_state, num_experts):
    """Carry AdamW's moments over, {param name: state} of the dense model -> of the MoE: each expert starts from its
    dense MLP's moments, the router from none, so the first MoE steps continue the dense run's optimisation instead
    of restarting it with raw sign-like updates."""
    out = {}
    for name, st in named_state.items():
        if ".mlp." in name:
            out[name.removesuffix(".weight")] = {k: v.clone() if v.dim() == 0 else v.unsqueeze(0).repeat(
                num_experts, 1, 1) for k, v in st.items()}
        else:
            out[name] = {k: v.clone() for k, v in st.items()}
    return out


def upcycle(dense, num_experts=8, top_k=2, seed=0):
    """A MoE MiniCPM whose every expert is a copy of the dense MLP of its layer, with a new router."""
    if not isinstance(num_experts, int) or num_experts < 1:
        raise ValueError(f"num_experts={num_experts!r}: upcycling needs at least 1 expert")
    if dense.config.num_experts:
        raise ValueError("the model is already a MoE: upcycle a dense model")
    config = dataclasses.replace(dense.config, num_experts=num_experts, top_k=top_k)  # validates top_k
    with torch.device("meta"):
        moe = MiniCPM(config)
    moe.load_state_dict(upcycle_state_dict(dense.state_dict(), config, seed), assign=True)
    return moe


def param_counts(model):
    """(total, active per token) non-embedding parameters: a token uses top_k of the E experts (and the router)."""
    return model.num_params(), model.num_active_params()
