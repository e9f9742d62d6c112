"""
Long lags: why the forget gate must start open
==============================================

The 1997 adding problem asks an LSTM to add two numbers marked among T random ones and give the sum
at the end: the first mark lies in the first ten steps, so the answer needs a memory about T steps
long. Trained with gatedrnn's default initialisation (forget-gate bias +3, input-gate bias -3,
``--lstm-init long-lag``), the LSTM solves T = 100 in about a thousand steps, but at T = 500 it stays
on the no-memory plateau for 192,000 sequences. ``--lstm-init chrono`` solves T = 500 and T = 1000
after 32,000 (REPRODUCTION.md). This example shows why, on untrained networks: how much of a mark
the cell state keeps over the lag, and how much gradient reaches the first mark from the output.

A forget gate f keeps a fraction f^k of the cell state over k steps. The bias +3 gives
f = sigmoid(3) = 0.95: over 500 steps 0.95^500 = 7e-12 of a mark is left, and the gradient that
would teach the gates to keep it is as small. The chrono initialisation (Tallec & Ollivier 2018)
draws each unit's forget-gate bias as log u, u ~ U[1, T - 1], so that its forgetting time
1 / (1 - f) = 1 + u spreads over every lag the task asks for, and sets the input-gate bias to minus
that, so the units take in little at first.
"""

# %%
# The networks
# ------------
#
# One batch of the task at T = 500, and the task's model (64 LSTM units and a linear read-out)
# initialised four ways: torch.nn's own initialisation, the default (+3 / -3), a forget-gate bias
# of +6 with the default input-gate bias, and chrono.

import matplotlib.pyplot as plt
import torch

from gatedrnn.tasks import make_task
from gatedrnn.train import TrainConfig, build_model

torch.set_num_threads(2)
T = 500
task = make_task("adding", seq_len=T)
batch = task.sample(32, torch.Generator().manual_seed(0))
INITS = {
    "torch.nn's init": dict(lstm_init="torch"),
    "long-lag: f bias +3": dict(),
    "f bias +6": dict(forget_bias=6.0, input_bias=-3.0),
    "chrono": dict(lstm_init="chrono"),
}


def model_for(settings: dict):
    torch.manual_seed(0)
    return build_model(TrainConfig(task="adding", seq_len=T, hidden=64, **settings), task)


models = {name: model_for(settings) for name, settings in INITS.items()}

# %%
# What the cell state keeps
# -------------------------
#
# Each unit's forget gate at its bias alone (the inputs and h add little at initialisation), and the
# fraction f^T of a mark it keeps over T steps.

fig, ax = plt.subplots(figsize=(7, 3.5))
H = 64
for name, model in models.items():
    bias = (model.rnn.bias_ih_l0 + model.rnn.bias_hh_l0).detach()[H : 2 * H]  # the f rows (order i, f, g, o)
    kept = torch.sigmoid(bias).double() ** T
    ax.plot(torch.sort(kept, descending=True).values, label=name)
    print(f"{name:20s} units keeping over 1% of a mark after {T} steps: {int((kept > 0.01).sum())} of {H}")
ax.set_yscale("log")
ax.set_ylim(1e-30, 2)
ax.set_xlabel("unit (sorted)")
ax.set_ylabel(f"f^{T} at initialisation")
ax.legend()
ax.set_title("Fraction of a mark the cell state keeps over the lag")
fig.tight_layout()

# %%
# Does the gradient reach the first mark?
# ---------------------------------------
#
# The gradient of the output at each sequence's last step with respect to the input at every step,
# relative to its size at the last step (median over the batch). Learning to keep the first mark
# needs a gradient at it.

steps = torch.arange(batch.inputs.shape[1])
last = batch.lengths - 1
rows = torch.arange(len(last))
first_mark = batch.inputs[:, :, 1].argmax(1)
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, model in models.items():
    x = batch.inputs.clone().requires_grad_()
    output, _ = model(x)
    (grad,) = torch.autograd.grad(output[rows, last, 0].sum(), x)
    size = grad.norm(dim=-1)  # (B, T)
    relative = size / size[rows, last].unsqueeze(1)
    distance = last.unsqueeze(1) - steps.unsqueeze(0)  # steps before the output
    curve = torch.stack([relative[distance == d].median() for d in range(T)])
    ax.plot(range(T), curve.clamp(min=1e-30), label=name)
    at_mark = relative[rows, first_mark].median()
    print(f"{name:20s} gradient at the first mark / at the last step: {float(at_mark):.1e}")
ax.set_yscale("log")
ax.set_ylim(1e-30, 2)
ax.set_xlabel("steps before the output")
ax.set_ylabel("|d output / d input| (relative)")
ax.legend()
ax.set_title(f"Gradient reaching back from the output, T = {T}")
fig.tight_layout()

# %%
# With +3 the gradient at the first mark is about 1e-8 of the last step's and torch.nn's
# initialisation loses it entirely: the optimiser sees no reason to keep the mark, and the network
# settles on the plateau that predicts the mean sum. With +6 or chrono a useful fraction arrives.
# Chrono also keeps units with short memories, which read the marked values in, and learns fastest
# in the measured runs: ``gatedrnn reproduce hochreiter1997 --rows 4-500`` (REPRODUCTION.md) has
# the numbers over seeds.
