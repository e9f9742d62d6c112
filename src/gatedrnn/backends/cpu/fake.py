"""Fake (meta) implementations of the compiled loops' ops, ``torch.ops.gatedrnn_cpu.*``.

Tracers (``torch.export``, ``torch.compile``'s AOT autograd) run an op on fake tensors, which
have shapes and dtypes but no data; an op without a fake implementation stops them
("UnsupportedOperatorException"). Each function here returns the empty tensors the C++ op
(``csrc/lstm_loop.cpp``, ``csrc/gru_loop.cpp``, ``csrc/slstm_loop.cpp``, ``csrc/min_scan.cpp``)
returns, of the same shapes: the saved buffers, and the gradients, where an output the
configuration does not have is a (0,) tensor. Registered by
:func:`register` once the ops are loaded; ``torch.library.opcheck`` checks them against the real
ops in the tests.

Shapes: T steps, B batch, H hidden, R output size (H, or the projection's), G gate blocks, GH = G*H.
"""

from __future__ import annotations

import torch
from torch import Tensor

_PEEPHOLE_SWITCH = 6  # index in the LSTM op's ``layout`` (see compiled._layout)


def _maybe(x: Tensor, present: bool, *shape: int) -> Tensor:
    """A new empty tensor of ``shape`` like ``x``, or the (0,) tensor the op returns for an absent output."""
    return x.new_empty(shape if present else (0,))


def lstm_forward(
    xw,
    h0,
    c0,
    gates0,
    weight_hh,
    in_gain,
    in_bias,
    rec_gain,
    peep,
    ln_weight_c,
    ln_bias_c,
    weight_hr,
    weight_gg,
    keep_h,
    keep_c,
    recurrent_mask,
    active,
    restart,
    layout,
    reverse,
    eps,
) -> list[Tensor]:
    """[states (T+1, B, R), cells (T+1, B, H), acts (T, B, GH), c_new (T, B, H), h_hat (T, B, H),
    normed (T, B, GH), rstd (T, B, G), in_stats (T, B, G, 2), c_stats (T, B, 2), gates_n (B, 3H)]."""
    T, B, GH = xw.shape
    H, R = c0.shape[1], h0.shape[1]
    G, norm, cell_norm = GH // H, rec_gain is not None, ln_weight_c is not None
    return [
        xw.new_empty(T + 1, B, R),
        xw.new_empty(T + 1, B, H),
        xw.new_empty(T, B, GH),
        _maybe(xw, keep_c is not None, T, B, H),
        _maybe(xw, weight_hr is not None, T, B, H),
        _maybe(xw, norm, T, B, GH),
        _maybe(xw, norm, T, B, G),
        _maybe(xw, norm, T, B, G, 2),
        _maybe(xw, cell_norm, T, B, 2),
        _maybe(xw, weight_gg is not None, B, 3 * H),
    ]


def lstm_backward(
    d_out,
    d_hn,
    d_cn,
    d_gates_n,
    xw,
    states,
    cells,
    acts,
    c_new,
    h_hat,
    normed,
    rstd,
    in_stats,
    c_stats,
    gates0,
    weight_hh,
    in_gain,
    in_bias,
    rec_gain,
    peep,
    ln_weight_c,
    ln_bias_c,
    weight_hr,
    weight_gg,
    keep_h,
    keep_c,
    recurrent_mask,
    active,
    restart,
    layout,
    reverse,
) -> list[Tensor]:
    """[d_z (T, B, GH), dh (B, R), dc (B, H), d_weight_hh (GH, R), d_rec_gain (GH), d_peep (3H),
    d_ln_weight_c (H), d_ln_bias_c (H), d_weight_hr (R, H), d_in_gain (GH), d_in_bias (GH),
    d_weight_gg (3H, 3H), d_gates0 (B, 3H)]."""
    T, B, GH = acts.shape
    H, R = cells.shape[2], states.shape[2]
    norm, cell_norm = rec_gain is not None, ln_weight_c is not None
    return [
        acts.new_empty(T, B, GH),
        acts.new_empty(B, R),
        acts.new_empty(B, H),
        acts.new_empty(GH, R),
        _maybe(acts, norm, GH),
        _maybe(acts, layout[_PEEPHOLE_SWITCH] != 0, 3 * H),
        _maybe(acts, cell_norm, H),
        _maybe(acts, cell_norm, H),
        _maybe(acts, weight_hr is not None, R, H),
        _maybe(acts, norm, GH),
        _maybe(acts, norm, GH),
        _maybe(acts, weight_gg is not None, 3 * H, 3 * H),
        _maybe(acts, weight_gg is not None, B, 3 * H),
    ]


def gru_forward(
    xw, h0, weight_hh, in_gain, in_bias, rec_gain, rec_shift, keep_h, recurrent_mask, restart, reset_after, reverse, eps
) -> list[Tensor]:
    """[states (T+1, B, H), acts (T, B, 4H with the reset after, else 3H), normed (T, B, 3H),
    rstd (T, B, 3), in_stats (T, B, 3, 2)]."""
    T, B, _ = xw.shape
    H, norm = h0.shape[1], rec_gain is not None
    return [
        xw.new_empty(T + 1, B, H),
        xw.new_empty(T, B, (4 if reset_after else 3) * H),
        _maybe(xw, norm, T, B, 3 * H),
        _maybe(xw, norm, T, B, 3),
        _maybe(xw, norm, T, B, 3, 2),
    ]


def slstm_forward(pre, h0, c0, n0, m0, weight_hh, active, restart, reverse, exp_gate) -> list[Tensor]:
    """[h, c, n, m (T+1, B, H)] of the sLSTM's pass (``csrc/slstm_loop.cpp``; it also adds the
    recurrent products into ``pre`` in place)."""
    T, B = pre.shape[:2]
    return [pre.new_empty(T + 1, B, h0.shape[1]) for _ in range(4)]


def slstm_backward(
    pre, hs, cs, ns, ms, weight_hh, d_out, dh_n, dc_n, dn_n, dm_n, active, restart, reverse, exp_gate
) -> list[Tensor]:
    """[d_pre (T, B, 4H), dh0, dc0, dn0, dm0 (B, H)]."""
    return [torch.empty_like(pre)] + [torch.empty_like(dh_n) for _ in range(4)]


def gru_backward(
    d_out,
    d_hn,
    xw,
    states,
    acts,
    normed,
    rstd,
    in_stats,
    weight_hh,
    in_gain,
    in_bias,
    rec_gain,
    rec_shift,
    keep_h,
    recurrent_mask,
    restart,
    reset_after,
    reverse,
) -> list[Tensor]:
    """[d_z (T, B, 3H), dh (B, H), d_weight_hh (3H, H), d_rec_gain (3H), d_rec_shift (H),
    d_in_gain (3H), d_in_bias (3H)]."""
    T, B, _ = acts.shape
    H, norm = states.shape[2], rec_gain is not None
    return [
        acts.new_empty(T, B, 3 * H),
        acts.new_empty(B, H),
        acts.new_empty(3 * H, H),
        _maybe(acts, norm, 3 * H),
        _maybe(acts, rec_shift is not None, H),
        _maybe(acts, norm, 3 * H),
        _maybe(acts, norm, 3 * H),
    ]


def min_scan_forward(xp, h0, lengths, restart, kind, g_activation, reverse) -> list[Tensor]:
    """[output (T, B, H), h_n (B, H)] of the minimal cells' pass (``csrc/min_scan.cpp``)."""
    T, B, _ = xp.shape
    return [xp.new_empty(T, B, h0.shape[1]), h0.new_empty(h0.shape)]


def min_scan_backward(xp, out, h0, d_out, d_hn, lengths, restart, kind, g_activation, reverse) -> list[Tensor]:
    """[d xp (T, B, G*H), d h0 (B, H)]."""
    return [torch.empty_like(xp), torch.empty_like(h0)]


_FAKES = {
    "lstm_forward": lstm_forward,
    "lstm_backward": lstm_backward,
    "gru_forward": gru_forward,
    "gru_backward": gru_backward,
    "slstm_forward": slstm_forward,
    "slstm_backward": slstm_backward,
    "min_scan_forward": min_scan_forward,
    "min_scan_backward": min_scan_backward,
}


def register() -> None:
    """Register the fakes with the loaded ops (call once, after loading them)."""
    for name, fn in _FAKES.items():
        try:
            torch.library.register_fake(f"gatedrnn_cpu::{name}")(fn)
        except RuntimeError as e:  # registered by an earlier call that failed part-way
            if "already" not in str(e):
                raise
