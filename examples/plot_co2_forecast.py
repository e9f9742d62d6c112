"""
Forecasting weekly CO2 at Mauna Loa
===================================

The weekly atmospheric CO2 concentration measured at Mauna Loa from 1958 to 2001 (Keeling and
Whorf; the copy that ships with statsmodels, nothing is downloaded) has a rising trend and a
yearly cycle of 52 weeks. Three recurrent forecasters, :class:`gatedrnn.LSTM`, the layer-normalised
LSTM (``layer_norm=True``) and :class:`gatedrnn.GRU`, read two years of the series and predict the
next year at once; they are compared with the seasonal-naive baseline, which repeats the last
observed year.
"""

# %%
# The data
# --------
#
# The series has 59 missing weeks; they are filled by linear interpolation in time. The last two
# years are the test period, forecast from two origins (one year each); everything before is for
# training.

import time

import matplotlib.pyplot as plt
import numpy as np
import statsmodels.api as sm
import torch
from torch import nn

import gatedrnn

torch.manual_seed(0)
torch.set_num_threads(2)

frame = sm.datasets.co2.load_pandas().data
missing = int(frame["co2"].isna().sum())
series = frame["co2"].interpolate(method="time").to_numpy(np.float32)
weeks = frame.index
print(f"{len(series)} weeks from {weeks[0]:%Y-%m-%d} to {weeks[-1]:%Y-%m-%d}; {missing} interpolated")

PERIOD, WINDOW, HORIZON = 52, 104, 52  # a year; the model reads two years and predicts the next
test_start = len(series) - 2 * HORIZON
origins = [test_start, test_start + HORIZON]

# %%
# The baseline and the windows
# ----------------------------
#
# Seasonal naive: the forecast for each week of the coming year is the same week of the last
# observed year. The networks see each window relative to its last value (the level is not
# learnt, the shape and the yearly rise are), scaled by the training series' standard deviation.


def seasonal_naive(origin):
    """The next HORIZON weeks after ``origin``: the last observed PERIOD weeks again."""
    return series[origin - PERIOD : origin - PERIOD + HORIZON]


def windows(end):
    """All (input, target) pairs whose target ends before ``end``: inputs (N, WINDOW, 1), targets
    (N, HORIZON), both relative to the window's last value and scaled."""
    starts = np.arange(0, end - WINDOW - HORIZON + 1)
    x = np.stack([series[s : s + WINDOW] for s in starts])
    y = np.stack([series[s + WINDOW : s + WINDOW + HORIZON] for s in starts])
    last = x[:, -1:]
    return torch.from_numpy((x - last) / scale).unsqueeze(-1), torch.from_numpy((y - last) / scale)


scale = float(series[:test_start].std())
x_train, y_train = windows(test_start)
print(f"{len(x_train)} training windows of {WINDOW} weeks, each followed by {HORIZON} weeks to predict")

# %%
# The forecasters
# ---------------
#
# One recurrent layer of 32 units reads the window (batch first); a linear head turns its last
# hidden state into the 52 weekly values. The three differ only in the layer.


class Forecaster(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(layer.hidden_size, HORIZON)

    def forward(self, x):  # x: (B, WINDOW, 1)
        output, _ = self.rnn(x)  # (B, WINDOW, H)
        return self.head(output[:, -1])  # (B, HORIZON)


def train(model, steps=300, batch=32):
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        index = torch.randint(len(x_train), (batch,), generator=generator)
        loss = nn.functional.mse_loss(model(x_train[index]), y_train[index])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model


@torch.no_grad()
def forecast(model, origin):
    x = series[origin - WINDOW : origin]
    relative = torch.from_numpy((x - x[-1]) / scale).view(1, WINDOW, 1)
    return model(relative)[0].numpy() * scale + x[-1]


layers = {
    "LSTM": lambda: gatedrnn.LSTM(1, 32, batch_first=True),
    "LSTM, layer norm": lambda: gatedrnn.LSTM(1, 32, batch_first=True, layer_norm=True),
    "GRU": lambda: gatedrnn.GRU(1, 32, batch_first=True),
}
forecasts = {"seasonal naive": [seasonal_naive(o) for o in origins]}
for name, layer in layers.items():
    torch.manual_seed(0)
    start = time.perf_counter()
    model = train(Forecaster(layer())).eval()
    forecasts[name] = [forecast(model, o) for o in origins]
    print(f"{name}: trained in {time.perf_counter() - start:.0f} s")

# %%
# The result
# ----------
#
# Mean absolute error over the two test years, in parts per million:

truth = np.concatenate([series[o : o + HORIZON] for o in origins])
errors = {name: float(np.abs(np.concatenate(f) - truth).mean()) for name, f in forecasts.items()}
for name, error in errors.items():
    print(f"{name:>16}: MAE {error:.3f} ppm ({error / errors['seasonal naive']:.2f} of the baseline's)")

fig, ax = plt.subplots(figsize=(9, 4), layout="constrained")
shown = slice(test_start - 3 * PERIOD, len(series))
ax.plot(weeks[shown], series[shown], color="black", lw=1, label="observed")
for k, (name, f) in enumerate(forecasts.items()):
    for j, (origin, values) in enumerate(zip(origins, f)):
        label = f"{name} (MAE {errors[name]:.2f})" if j == 0 else None
        ax.plot(weeks[origin : origin + HORIZON], values, color=f"C{k}", lw=1.2, label=label)
for origin in origins:
    ax.axvline(weeks[origin], color="grey", ls=":", lw=0.8)
ax.set(ylabel="CO2 (ppm)", title="One year ahead from two origins: the networks against seasonal naive")
ax.legend(fontsize=8)
