#!/usr/bin/python3
"""The PyTorch reference of the worker step-rate benchmark (see ops/bench/worker-steps).

The same models as worker/model.cc, written from its definition: vit-tiny (7x7 patches of a
28x28 image, 16 tokens plus a cls token, width 64, 4 heads, MLP 128, depth 2, pre-LN, head on
the cls token) and mlp (784-128-64-10, ReLU), LoRA on every projection (q, k, v, o, fc1, fc2 of
each block; fc1, fc2 of the mlp) at the same rank and alpha, folded into the weight as the C++
layer does (W + alpha/r * B A: the same FLOPs), the base frozen, the head and the LoRA factors
trainable. The same local loop as worker::TrainLocal: runs of --steps-per-run steps, each with
a fresh Adam, batches drawn epoch by epoch in shuffled order, uint8 images normalised in the
forward, mean cross-entropy, loss.item() every step.

--dense linear (the reference) computes the projections with F.linear, as PyTorch code
normally does; --dense conv mirrors the C++ layer's kernel choice (a 1x1 convolution, see
Dense() in worker/model.cc), which separates the cost of the kernels from that of Python.

Weights are initialised at random: values do not change the work of a step. The parameter
counts must equal the C++ model's (--expect-total, --expect-trainable; ops/bench/worker-steps
passes them from the C++ run). Prints one JSON line.
"""

import argparse
import gzip
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loop import check_counts, train  # noqa: E402

PIXEL_MEAN = 0.2860
PIXEL_STD = 0.3530
ROWS = COLS = 28
PATCH = 7
PATCHES_PER_SIDE = ROWS // PATCH
NUM_PATCHES = PATCHES_PER_SIDE * PATCHES_PER_SIDE
VIT_DIM, VIT_HEADS, VIT_MLP_DIM, VIT_DEPTH = 64, 4, 128, 2
MLP_HIDDEN1, MLP_HIDDEN2 = 128, 64
NUM_CLASSES = 10


def read_idx(path, magic):
    """An IDX file (gzip or raw) as a numpy uint8 array shaped by its header."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    found, = struct.unpack(">I", data[:4])
    if found != magic:
        sys.exit(f"{path}: magic {found:#x}, expected {magic:#x}")
    dims = struct.unpack(f">{magic & 0xff}I", data[4:4 + 4 * (magic & 0xff)])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * len(dims)).reshape(dims)


def load_train(data_dir):
    def pick(stem):
        for name in (stem + ".gz", stem):
            if os.path.exists(os.path.join(data_dir, name)):
                return os.path.join(data_dir, name)
        sys.exit(f"no {stem}[.gz] in {data_dir}")
    images = read_idx(pick("train-images-idx3-ubyte"), 0x00000803)
    labels = read_idx(pick("train-labels-idx1-ubyte"), 0x00000801)
    return images, labels.astype(np.int64)


class LoraLinear(nn.Module):
    """y = x (W + scale B A)^T + b; rank 0: a plain linear layer."""

    def __init__(self, in_features, out_features, rank, scale, dense):
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(out_features).uniform_(-bound, bound))
        self.rank, self.scale, self.dense = rank, scale, dense
        if rank > 0:
            self.lora_A = nn.Parameter(torch.empty(rank, in_features).uniform_(-bound, bound))
            self.lora_B = nn.Parameter(torch.zeros(out_features, rank))

    def forward(self, x):
        w = self.weight + self.scale * (self.lora_B @ self.lora_A) if self.rank > 0 else self.weight
        if self.dense == "linear":
            return F.linear(x, w, self.bias)
        out, inp = w.shape
        y = F.conv2d(x.reshape(-1, inp, 1, 1), w.view(out, inp, 1, 1), self.bias)
        return y.view(*x.shape[:-1], out)


class Attention(nn.Module):
    def __init__(self, rank, scale, dense):
        super().__init__()
        self.q, self.k, self.v, self.o = (LoraLinear(VIT_DIM, VIT_DIM, rank, scale, dense) for _ in range(4))

    def forward(self, x):
        n, t, _ = x.shape
        head_dim = VIT_DIM // VIT_HEADS

        def split_heads(y):
            return y.view(n, t, VIT_HEADS, head_dim).transpose(1, 2)

        q, k, v = split_heads(self.q(x)), split_heads(self.k(x)), split_heads(self.v(x))
        att = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(head_dim))
        y = torch.matmul(att.softmax(-1), v)
        return self.o(y.transpose(1, 2).reshape(n, t, VIT_DIM))


class FeedForward(nn.Module):
    def __init__(self, rank, scale, dense):
        super().__init__()
        self.fc1 = LoraLinear(VIT_DIM, VIT_MLP_DIM, rank, scale, dense)
        self.fc2 = LoraLinear(VIT_MLP_DIM, VIT_DIM, rank, scale, dense)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, rank, scale, dense):
        super().__init__()
        self.norm1 = nn.LayerNorm(VIT_DIM)
        self.attn = Attention(rank, scale, dense)
        self.norm2 = nn.LayerNorm(VIT_DIM)
        self.mlp = FeedForward(rank, scale, dense)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VitTiny(nn.Module):
    def __init__(self, rank, scale, dense):
        super().__init__()
        self.patch_embed = LoraLinear(PATCH * PATCH, VIT_DIM, 0, 1.0, dense)
        bound = 0.02 * math.sqrt(3.0)
        self.cls_token = nn.Parameter(torch.empty(1, 1, VIT_DIM).uniform_(-bound, bound))
        self.pos_embed = nn.Parameter(torch.empty(1, NUM_PATCHES + 1, VIT_DIM).uniform_(-bound, bound))
        self.blocks = nn.ModuleList(Block(rank, scale, dense) for _ in range(VIT_DEPTH))
        self.norm = nn.LayerNorm(VIT_DIM)
        self.head = LoraLinear(VIT_DIM, NUM_CLASSES, 0, 1.0, dense)

    def forward(self, x):
        n = x.shape[0]
        patches = (x.reshape(n, PATCHES_PER_SIDE, PATCH, PATCHES_PER_SIDE, PATCH)
                   .permute(0, 1, 3, 2, 4).reshape(n, NUM_PATCHES, PATCH * PATCH))
        tokens = self.patch_embed(patches)
        tokens = torch.cat([self.cls_token.expand(n, 1, VIT_DIM), tokens], 1) + self.pos_embed
        for block in self.blocks:
            tokens = block(tokens)
        return self.head(self.norm(tokens)[:, 0])


class Mlp(nn.Module):
    def __init__(self, rank, scale, dense):
        super().__init__()
        self.fc1 = LoraLinear(ROWS * COLS, MLP_HIDDEN1, rank, scale, dense)
        self.fc2 = LoraLinear(MLP_HIDDEN1, MLP_HIDDEN2, rank, scale, dense)
        self.head = LoraLinear(MLP_HIDDEN2, NUM_CLASSES, 0, 1.0, dense)

    def forward(self, x):
        h = F.relu(self.fc1(x.reshape(x.shape[0], ROWS * COLS)))
        return self.head(F.relu(self.fc2(h)))


class Classifier(nn.Module):
    """Normalises uint8 images in the forward, as worker::Model::Forward does."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, images):
        x = (images.to(torch.float32).div(255.0) - PIXEL_MEAN) / PIXEL_STD
        return self.net(x.reshape(-1, ROWS, COLS))


def build(arch, rank, alpha, dense):
    net = (VitTiny if arch == "vit-tiny" else Mlp)(rank, alpha / rank, dense)
    model = Classifier(net)
    # Fine-tuning: the base is frozen, the LoRA factors and the head train.
    for name, p in model.named_parameters():
        p.requires_grad_(name.endswith((".lora_A", ".lora_B")) or name.startswith("net.head."))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", default="vit-tiny", choices=["vit-tiny", "mlp"])
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps-per-run", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=40)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--dense", default="linear", choices=["linear", "conv"],
                        help="kernel of the projections: F.linear (reference) or 1x1 conv2d (as the C++)")
    parser.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    parser.add_argument("--expect-total", type=int, help="fail unless the model has this many parameters")
    parser.add_argument("--expect-trainable", type=int, help="fail unless this many parameters train")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    images, labels = load_train(args.data_dir)
    model = build(args.arch, args.rank, args.alpha, args.dense)
    total, trainable = check_counts("worker_steps.py", args.arch, model, args)

    def batch_loss(batch):
        return F.cross_entropy(model(torch.from_numpy(images[batch])), torch.from_numpy(labels[batch]))

    _, seed = train(model, len(labels), batch_loss, args, args.warmup, 1)
    started, cpu_started = time.perf_counter(), time.process_time()
    loss, _ = train(model, len(labels), batch_loss, args, args.steps, seed)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    print(json.dumps({"side": f"pytorch-{args.dense}", "torch": torch.__version__, "arch": args.arch,
                      "batch_size": args.batch_size, "threads": args.threads, "rank": args.rank,
                      "warmup": args.warmup, "steps": args.steps, "seconds": seconds,
                      "steps_per_s": args.steps / seconds, "cpu_ms_per_step": 1e3 * cpu_seconds / args.steps,
                      "params_total": total,
                      "params_trainable": trainable, "last_run_loss": loss}))


if __name__ == "__main__":
    main()
