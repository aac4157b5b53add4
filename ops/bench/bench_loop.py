"""The local training loop the PyTorch sides of the worker benchmarks share (worker_steps.py,
lm_train.py), written after worker::TrainLocal: runs of --steps-per-run steps, each with a fresh
Adam, batches drawn epoch by epoch in a shuffled order, loss.item() every step."""

import sys

import numpy as np
import torch


class Sampler:
    """Every example once per epoch, in a fresh shuffled order per epoch."""

    def __init__(self, n, seed):
        self.rng = np.random.default_rng(seed)
        self.order = self.rng.permutation(n)
        self.pos = 0

    def next(self, size):
        parts = []
        while size > 0:
            if self.pos == len(self.order):
                self.order = self.rng.permutation(len(self.order))
                self.pos = 0
            take = min(size, len(self.order) - self.pos)
            parts.append(self.order[self.pos:self.pos + take])
            self.pos += take
            size -= take
        return np.concatenate(parts) if len(parts) > 1 else parts[0]


def train(model, examples, batch_loss, args, steps, seed):
    """`steps` steps over `examples` examples; batch_loss(indices) is a batch's mean loss.
    Returns the last run's mean loss and the next seed."""
    loss_mean, done = 0.0, 0
    while done < steps:
        run = min(args.steps_per_run, steps - done)
        model.train(True)
        optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=args.lr)
        sampler = Sampler(examples, seed)
        seed += 1
        loss_sum = 0.0
        for _ in range(run):
            optimizer.zero_grad()
            loss = batch_loss(sampler.next(args.batch_size))
            loss_sum += loss.item()
            loss.backward()
            optimizer.step()
        loss_mean = loss_sum / run
        done += run
    return loss_mean, seed


def check_counts(program, what_model, model, args):
    """Exits unless the parameter counts equal the C++ model's (--expect-total, --expect-trainable)."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for what, have, want in (("total", total, args.expect_total), ("trainable", trainable, args.expect_trainable)):
        if want is not None and have != want:
            sys.exit(f"{program}: {what_model} has {have} {what} parameters, the C++ model {want}")
    return total, trainable
