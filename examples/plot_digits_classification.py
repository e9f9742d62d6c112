"""
Classifying handwritten digits as sequences
===========================================

The 1,797 8x8 handwritten digits of the UCI collection (the copy scikit-learn ships, shipped in
gatedrnn as well) read as sequences: each image is 8 steps of one 8-pixel row, and the class is
predicted from the last hidden state. An LSTM and a GRU of the same size are trained the same way
and compared on the 297 held-out images.
"""

# %%
# The data
# --------

import time

import matplotlib.pyplot as plt
import numpy as np
import torch
from torch import nn

import gatedrnn
from gatedrnn.tasks.digits import TEST_IMAGES, load_digits

torch.set_num_threads(2)
images, labels = load_digits()  # (1797, 64) in [0, 1], (1797,)
rows = images.view(-1, 8, 8)  # (N, T=8 rows, I=8 pixels)
train_x, train_y = rows[:-TEST_IMAGES], labels[:-TEST_IMAGES]
test_x, test_y = rows[-TEST_IMAGES:], labels[-TEST_IMAGES:]
print(f"{len(train_x)} training and {len(test_x)} test images, read as {rows.shape[1]} steps of {rows.shape[2]}")

fig, axes = plt.subplots(1, 10, figsize=(9, 1.4), layout="constrained")
for digit, ax in enumerate(axes):
    ax.imshow(rows[(labels == digit).nonzero()[0, 0]], cmap="gray_r")
    ax.set(title=str(digit), xticks=[], yticks=[])

# %%
# The classifier
# --------------


class Classifier(nn.Module):
    def __init__(self, layer):
        super().__init__()
        self.rnn = layer
        self.head = nn.Linear(layer.hidden_size, 10)

    def forward(self, x):  # (B, 8, 8)
        output, _ = self.rnn(x)  # (B, 8, H)
        return self.head(output[:, -1])  # (B, 10) logits


def train(model, epochs=20, batch=64):
    optimiser = torch.optim.Adam(model.parameters(), lr=5e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for index in torch.randperm(len(train_x), generator=generator).split(batch):
            loss = nn.functional.cross_entropy(model(train_x[index]), train_y[index])
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


predictions = {}
for name, layer in {"LSTM": gatedrnn.LSTM, "GRU": gatedrnn.GRU}.items():
    torch.manual_seed(0)
    start = time.perf_counter()
    model = train(Classifier(layer(8, 64, batch_first=True)))
    with torch.no_grad():
        predictions[name] = model(test_x).argmax(-1)
    accuracy = (predictions[name] == test_y).float().mean().item()
    print(f"{name}: test accuracy {accuracy:.3f} ({time.perf_counter() - start:.0f} s to train)")

# %%
# Where they err
# --------------
#
# The confusion matrices of the held-out images (rows: the true digit, columns: the prediction).

fig, axes = plt.subplots(1, 2, figsize=(8, 3.8), layout="constrained")
for ax, (name, predicted) in zip(axes, predictions.items()):
    confusion = np.zeros((10, 10), dtype=int)
    np.add.at(confusion, (test_y.numpy(), predicted.numpy()), 1)
    ax.imshow(confusion, cmap="Blues")
    for (i, j), count in np.ndenumerate(confusion):
        if count:
            ax.text(j, i, str(count), ha="center", va="center", fontsize=7)
    ax.set(title=name, xlabel="predicted", ylabel="true", xticks=range(10), yticks=range(10))
