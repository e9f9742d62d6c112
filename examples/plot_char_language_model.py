"""
A character-level language model of Jane Austen
===============================================

gatedrnn ships *Pride and Prejudice* and *Persuasion* (public domain) for its character-level
experiments. This example trains a small LSTM to predict the next character, measures it in bits
per character on held-out text, and samples from it; then it samples from the LSTM shipped with
the package, trained the same way for longer.
"""

# %%
# The corpus
# ----------
#
# Each novel's last tenth is held out for validation, so the two splits share no text.

import time

import matplotlib.pyplot as plt
import torch
from torch import nn

import gatedrnn
from gatedrnn.tasks.charlm import corpus_texts, corpus_vocab, decode, encode
from gatedrnn.viz.loading import load_shipped

torch.manual_seed(0)
torch.set_num_threads(2)
vocab = corpus_vocab()
train_ids = torch.cat([encode(text[: int(0.9 * len(text))], vocab)[0] for text in corpus_texts()])
valid_ids = torch.cat([encode(text[int(0.9 * len(text)) :], vocab)[0] for text in corpus_texts()])
print(f"{len(vocab)} characters; {len(train_ids):,} for training, {len(valid_ids):,} for validation")

# %%
# The model and its training
# --------------------------
#
# An embedding of each character, one LSTM layer of 128 units and a linear head to the next
# character's logits; truncated backpropagation through windows of 64 characters.

V, T = len(vocab) + 1, 64  # id 0 is the unknown symbol


class CharLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embedding = nn.Embedding(V, 32)
        self.rnn = gatedrnn.LSTM(32, 128, batch_first=True)
        self.head = nn.Linear(128, V)

    def forward(self, ids, state=None):  # ids (B, T)
        output, state = self.rnn(self.embedding(ids), state)  # (B, T, 128)
        return self.head(output), state  # (B, T, V)


def batch(ids, size, generator):
    starts = torch.randint(len(ids) - T - 1, (size,), generator=generator)
    window = torch.stack([ids[s : s + T + 1] for s in starts.tolist()])
    return window[:, :-1], window[:, 1:]


@torch.no_grad()
def bits_per_char(model, ids, windows=64):
    x, y = batch(ids, windows, torch.Generator().manual_seed(1))  # the same windows every time
    logits, _ = model(x)
    return nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1)).item() / torch.log(torch.tensor(2.0))


model = CharLSTM()
optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
generator = torch.Generator().manual_seed(0)
curve, start = [], time.perf_counter()
for step in range(1, 401):
    x, y = batch(train_ids, 32, generator)
    logits, _ = model(x)
    loss = nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
    optimiser.zero_grad()
    loss.backward()
    nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    optimiser.step()
    if step % 100 == 0:
        curve.append((step, bits_per_char(model.eval(), valid_ids)))
        model.train()
print(f"400 steps in {time.perf_counter() - start:.0f} s; validation {curve[-1][1]:.2f} bits per character")

fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
ax.plot(*zip(*curve), marker="o")
ax.set(xlabel="training step", ylabel="validation bits per character")

# %%
# Sampling
# --------
#
# Each next character is drawn from the softmax of the logits divided by a temperature (lower:
# more likely characters, more repetitive text), the state carried from character to character.


@torch.no_grad()
def sample(model, prompt, length=200, temperature=0.6, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = encode(prompt, vocab)[0].unsqueeze(0)
    logits, state = model(ids)
    out = []
    for _ in range(length):
        probabilities = torch.softmax(logits[0, -1] / temperature, dim=-1)
        next_id = torch.multinomial(probabilities, 1, generator=generator)
        out.append(next_id.item())
        logits, state = model(next_id.view(1, 1), state)
    return prompt + decode(out, vocab)


print(sample(model.eval(), "It is a truth universally acknowledged"))

# %%
# The shipped LSTM, trained for 4,000 steps of 64 windows of 128 characters, on the same prompt
# (the package's own sampler, also behind ``gatedrnn sample``):

shipped = load_shipped("lstm")
print(
    f"shipped LSTM: {shipped.bits_per_char(decode(valid_ids[:4000], vocab)):.2f} bits per character on 4,000 "
    "validation characters"
)
print(shipped.sample("It is a truth universally acknowledged", 200, 0.6, torch.Generator().manual_seed(0)))
