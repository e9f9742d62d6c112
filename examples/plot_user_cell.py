"""
A cell of your own: the minimal gated unit
==========================================

A cell family is a subclass of :class:`gatedrnn.CellFamily` with a name, its gate and state names
and one ``step``. Registered, it gets the whole layer behaviour of torch.nn's layers (stacks,
directions, packed sequences, dropout), gate inspection and the training command line. This
example writes the minimal gated unit (MGU, Zhou et al. 2016), one gate fewer than the GRU,

.. math::
    f_t = \\sigma(W_f x_t + U_f h_{t-1} + b_f), \\quad
    n_t = \\tanh(W_n x_t + U_n (f_t \\odot h_{t-1}) + b_n), \\quad
    h_t = (1 - f_t) \\odot h_{t-1} + f_t \\odot n_t,

checks it against a hand-written loop, trains it on the shipped digits beside the GRU, and looks
at its gate.
"""

# %%
# The family
# ----------
#
# ``x_proj`` is the step's input projection :math:`x_t W_{ih}^T + b_{ih}`, (B, 2H), computed for
# all steps at once; ``weights`` holds the layer's recurrent parameters by short name.

import time

import matplotlib.pyplot as plt
import torch
from torch import nn

import gatedrnn
from gatedrnn.tasks.digits import TEST_IMAGES, load_digits

torch.set_num_threads(2)


@gatedrnn.register_family
class MGU(gatedrnn.CellFamily):
    name = "mgu"
    gates = ("f", "n")  # the row blocks of weight_ih, weight_hh, bias_ih, bias_hh, in order
    states = ("h",)  # the first state is the output h

    def step(self, x_proj, states, weights):
        (h,) = states
        H = self.hidden_size
        u_f, u_n = weights["weight_hh"].split(H)
        b_f, b_n = weights["bias_hh"].split(H)
        x_f, x_n = x_proj.split(H, dim=-1)
        f = torch.sigmoid(x_f + h @ u_f.T + b_f)
        n = torch.tanh(x_n + (f * h) @ u_n.T + b_n)
        return ((1 - f) * h + f * n,), {"f": f, "n": n}


layer = gatedrnn.Recurrent("mgu", 8, 16, num_layers=2, bidirectional=True)
output, h_n = layer(torch.randn(20, 4, 8))
print(f"output {tuple(output.shape)}, h_n {tuple(h_n.shape)}; parameters:")
for name, parameter in layer.named_parameters():
    if name.endswith("l0"):
        print(f"  {name}: {tuple(parameter.shape)}")

# %%
# Checked against the equations
# -----------------------------
#
# The layer (on the reference loop, the time loop over ``step``) against the equations written
# out directly, in float64:

torch.manual_seed(0)
one = gatedrnn.Recurrent("mgu", 3, 5, dtype=torch.float64)
x = torch.randn(7, 2, 3, dtype=torch.float64)
W_f, W_n = one.weight_ih_l0.split(5)
U_f, U_n = one.weight_hh_l0.split(5)
b_f = one.bias_ih_l0[:5] + one.bias_hh_l0[:5]
h, by_hand = torch.zeros(2, 5, dtype=torch.float64), []
for x_t in x:
    f = torch.sigmoid(x_t @ W_f.T + h @ U_f.T + b_f)
    n = torch.tanh(x_t @ W_n.T + one.bias_ih_l0[5:] + (f * h) @ U_n.T + one.bias_hh_l0[5:])
    h = (1 - f) * h + f * n
    by_hand.append(h)
difference = (one(x)[0] - torch.stack(by_hand)).abs().max().item()
print(f"largest difference from the hand-written loop: {difference:.1e}")

# %%
# Trained on the digits, beside the GRU
# -------------------------------------
#
# Each 8x8 image is read as 8 rows of 8 pixels; the class comes from the last hidden state.

images, labels = load_digits()
rows = images.view(-1, 8, 8)
train_x, train_y, test_x, test_y = (
    rows[:-TEST_IMAGES],
    labels[:-TEST_IMAGES],
    rows[-TEST_IMAGES:],
    labels[-TEST_IMAGES:],
)


class Classifier(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.rnn, self.head = layer, nn.Linear(layer.hidden_size, 10)

    def forward(self, x):  # (B, 8, 8)
        return self.head(self.rnn(x)[0][:, -1])


def train(model, epochs=12, batch=64):
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(train_x), generator=generator).split(batch):
            loss = nn.functional.cross_entropy(model(train_x[index]), train_y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


models = {}
for name in ("mgu", "gru"):
    torch.manual_seed(0)
    start = time.perf_counter()
    models[name] = train(Classifier(gatedrnn.Recurrent(name, 8, 48, batch_first=True)))
    with torch.no_grad():
        accuracy = (models[name](test_x).argmax(-1) == test_y).float().mean().item()
    parameters = sum(p.numel() for p in models[name].rnn.parameters())
    print(
        f"{name.upper()}: test accuracy {accuracy:.3f}, {parameters} recurrent parameters, "
        f"{time.perf_counter() - start:.0f} s"
    )

# %%
# Its gate
# --------
#
# :func:`gatedrnn.inspect_gates` records the gates a family's ``step`` returns: here the MGU's
# forget-and-update gate f on one test image of each digit, averaged over the units.

with torch.no_grad():
    trace = gatedrnn.inspect_gates(models["mgu"].rnn, test_x[:200])
f = trace.gates[(0, 0)]["f"].mean(-1)  # (T, B): time-major whatever the layout
fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
for digit in range(10):
    ax.plot(range(1, 9), f[:, (test_y[:200] == digit).nonzero()[0, 0]], label=str(digit))
ax.set(xlabel="row read", ylabel="mean gate f", title="MGU: how much each row rewrites the state")
ax.legend(ncols=5, fontsize=7)

# %%
# A family is process-wide state; a program that is done with it can remove it again.

gatedrnn.unregister_family("mgu")
print("mgu" in gatedrnn.registered_families())
