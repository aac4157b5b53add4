#!/usr/bin/python3
"""The PyTorch reference of the language-model training-rate benchmark (see ops/bench/lm-train).

The same Llama-family decoder as worker/lm/llama.cc, written here from the architecture's
definition and loaded from the same Hugging Face checkpoint (config.json and safetensors, read
by tests/lm/reference/hf_checkpoint.py's plain-Python loader; F16/BF16 widened to float32).
Per layer: h += o(attention(rmsnorm(h) * w_in)); h += down(silu(gate(x)) * up(x)) with
x = rmsnorm(h) * w_post; then the final norm and lm_head (the embeddings when tied).
Attention: q/k/v projections (with biases when the checkpoint has them), rotary embeddings in
the rotate-half convention, grouped-query attention, scores / sqrt(D), causal mask.

LoRA pairs on the target modules (default q_proj, v_proj), applied as the C++ layer does for
a language model: x W^T + (alpha / r) (x A^T) B^T, A uniform(+-1/sqrt(in)), B zero. The base is
frozen; only the LoRA factors train. The same local loop as worker::TrainLocal: runs of
--steps-per-run steps, each with a fresh Adam (lr 1e-3), batches drawn epoch by epoch in a
shuffled order from a pool of random token sequences of exactly --seq-len tokens (a seeded
RNG; no padding), the mean next-token cross-entropy, loss.item() every step.

--dense linear (the reference) is PyTorch as it is normally written: F.linear projections,
keys and values repeated per query head (transformers' repeat_kv), a cached causal mask and
rotary table, F.cross_entropy. --dense conv mirrors the C++ model op for op: projections as
1x1 convolutions (Dense() in worker/lora_linear.cc), grouped-query attention as a broadcast
5-D matmul, the additive mask and rotary table built every forward, log_softmax + gather for
the loss; it separates the cost of the kernels from that of Python.

The parameter counts must equal the C++ model's (--expect-total, --expect-trainable;
ops/bench/lm-train passes them from a C++ run). Prints one JSON line.
"""

import argparse
import json
import math
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tests", "lm", "reference"))
from hf_checkpoint import load_checkpoint  # noqa: E402
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_loop import check_counts, train  # noqa: E402

LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def dense_conv(x, weight, bias=None):
    """x W^T + b as a 1x1 convolution over x viewed as [rows, in, 1, 1] (the C++ Dense())."""
    out, inp = weight.shape
    y = F.conv2d(x.reshape(-1, inp, 1, 1), weight.view(out, inp, 1, 1), bias)
    return y.view(*x.shape[:-1], out)


class Projection(nn.Module):
    """A frozen linear map with an optional trainable LoRA pair applied beside it."""

    def __init__(self, weight, bias, rank, scale, dense):
        super().__init__()
        self.weight = nn.Parameter(weight, requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False) if bias is not None else None
        self.rank, self.scale = rank, scale
        self.apply_dense = F.linear if dense == "linear" else dense_conv
        if rank > 0:
            out, inp = weight.shape
            bound = 1.0 / math.sqrt(inp)
            self.lora_A = nn.Parameter(torch.empty(rank, inp).uniform_(-bound, bound))
            self.lora_B = nn.Parameter(torch.zeros(out, rank))

    def forward(self, x):
        y = self.apply_dense(x, self.weight, self.bias)
        if self.rank > 0:
            y = y + self.scale * self.apply_dense(self.apply_dense(x, self.lora_A), self.lora_B)
        return y


def rms_norm(x, weight, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], dim=-1)


class Layer(nn.Module):
    def __init__(self, w, i, cfg, targets, rank, scale, dense):
        super().__init__()
        self.cfg = cfg
        p = f"model.layers.{i}."

        def proj(name):
            path = p + ("mlp." if name in ("gate_proj", "up_proj", "down_proj") else "self_attn.") + name
            lora = rank if name in targets else 0
            return Projection(w[path + ".weight"], w.get(path + ".bias"), lora, scale, dense)

        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (proj(n) for n in LORA_TARGETS[:4])
        self.gate_proj, self.up_proj, self.down_proj = (proj(n) for n in LORA_TARGETS[4:])
        self.input_norm = nn.Parameter(w[p + "input_layernorm.weight"], requires_grad=False)
        self.post_norm = nn.Parameter(w[p + "post_attention_layernorm.weight"], requires_grad=False)
        self.dense = dense

    def attention(self, x, cos, sin, mask):
        c = self.cfg
        n, t, _ = x.shape
        heads, kv, d = c["heads"], c["kv_heads"], c["head_dim"]
        group = heads // kv
        q = self.q_proj(x).view(n, t, heads, d).transpose(1, 2)
        k = self.k_proj(x).view(n, t, kv, d).transpose(1, 2)
        v = self.v_proj(x).view(n, t, kv, d).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if self.dense == "linear":
            # transformers' idiom: every query head gets its own copy of its key/value head.
            k = k[:, :, None].expand(n, kv, group, t, d).reshape(n, heads, t, d)
            v = v[:, :, None].expand(n, kv, group, t, d).reshape(n, heads, t, d)
            scores = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(d) + mask
            out = torch.matmul(torch.softmax(scores, dim=-1), v)
        else:
            # As the C++ model: the group's query heads attend together, keys broadcast.
            q5 = q.reshape(n, kv, group, t, d)
            scores = torch.matmul(q5, k.unsqueeze(2).transpose(-1, -2)) * (1.0 / math.sqrt(d)) + mask
            out = torch.matmul(torch.softmax(scores, -1), v.unsqueeze(2))
        return self.o_proj(out.reshape(n, heads, t, d).transpose(1, 2).reshape(n, t, heads * d))

    def forward(self, h, cos, sin, mask):
        eps = self.cfg["eps"]
        h = h + self.attention(rms_norm(h, self.input_norm, eps), cos, sin, mask)
        x = rms_norm(h, self.post_norm, eps)
        return h + self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Llama(nn.Module):
    def __init__(self, config, weights, targets, rank, alpha, dense):
        super().__init__()
        hidden, heads = config["hidden_size"], config["num_attention_heads"]
        self.cfg = {"heads": heads, "kv_heads": config.get("num_key_value_heads") or heads,
                    "head_dim": config.get("head_dim") or hidden // heads, "eps": config["rms_norm_eps"],
                    "theta": config.get("rope_theta", 10000.0), "vocab": config["vocab_size"]}
        self.dense = dense
        w = {n: t.float() for n, t in weights.items() if not n.endswith("rotary_emb.inv_freq")}
        self.embed = nn.Parameter(w["model.embed_tokens.weight"], requires_grad=False)
        self.layers = nn.ModuleList(Layer(w, i, self.cfg, targets, rank, alpha / rank, dense)
                                    for i in range(config["num_hidden_layers"]))
        self.final_norm = nn.Parameter(w["model.norm.weight"], requires_grad=False)
        # Tied: the same Parameter, so that it is counted once.
        self.lm_head = (self.embed if config.get("tie_word_embeddings")
                        else nn.Parameter(w["lm_head.weight"], requires_grad=False))
        d = self.cfg["head_dim"]
        self.inv_freq = 1.0 / torch.pow(self.cfg["theta"], torch.arange(0, d, 2, dtype=torch.int64).float() / d)
        self.cached = {}  # linear: (cos, sin, mask) per sequence length, as transformers caches them

    def tables(self, n, t):
        """cos, sin [.., T, D] and the additive causal mask."""
        if self.dense == "linear":
            if t not in self.cached:
                freqs = torch.arange(t, dtype=torch.float32)[:, None] * self.inv_freq
                emb = torch.cat([freqs, freqs], -1)
                mask = torch.full((t, t), float("-inf")).triu(1)
                self.cached[t] = (emb.cos(), emb.sin(), mask)
            return self.cached[t]
        # As the C++ Forward: positions of real tokens, tables and mask built per call.
        real = torch.ones(n, t, dtype=torch.bool)
        pos = (real.long().cumsum(1) - 1).clamp_min(0)
        freqs = pos.float().unsqueeze(-1) * self.inv_freq
        emb = torch.cat([freqs, freqs], -1).unsqueeze(1)
        idx = torch.arange(t)
        allowed = (idx.unsqueeze(0) <= idx.unsqueeze(1)).unsqueeze(0) & real.unsqueeze(1)
        allowed = allowed | torch.eye(t, dtype=torch.bool).unsqueeze(0)
        mask = torch.zeros(n, t, t).masked_fill(~allowed, float("-inf")).view(n, 1, 1, t, t)
        return emb.cos(), emb.sin(), mask

    def forward(self, ids):
        n, t = ids.shape
        cos, sin, mask = self.tables(n, t)
        h = F.embedding(ids, self.embed)
        for layer in self.layers:
            h = layer(h, cos, sin, mask)
        h = rms_norm(h, self.final_norm, self.cfg["eps"])
        return F.linear(h, self.lm_head) if self.dense == "linear" else dense_conv(h, self.lm_head)

    def loss(self, ids):
        """Mean next-token cross-entropy over the batch (every token real)."""
        logits = self(ids)
        n, t, vocab = logits.shape
        if self.dense == "linear":
            return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), ids[:, 1:].reshape(-1))
        logp = torch.log_softmax(logits.narrow(1, 0, t - 1), -1)
        nll = -logp.gather(2, ids.narrow(1, 1, t - 1).unsqueeze(-1)).squeeze(-1)
        return (nll.sum(1) / (t - 1)).mean()


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face checkpoint directory")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--alpha", type=float, default=16.0)
    parser.add_argument("--targets", default="q_proj,v_proj", help="LoRA target modules, comma-separated")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--steps-per-run", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--pool", type=int, default=256, help="random sequences the batches are drawn from")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--dense", default="linear", choices=["linear", "conv"],
                        help="F.linear and PyTorch's usual idioms (reference), or the C++ model's ops")
    parser.add_argument("--expect-total", type=int, help="fail unless the model has this many parameters")
    parser.add_argument("--expect-trainable", type=int, help="fail unless this many parameters train")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    torch.manual_seed(0)
    targets = [t for t in args.targets.split(",") if t]
    unknown = set(targets) - set(LORA_TARGETS)
    if unknown:
        sys.exit(f"lm_train.py: unknown target modules {sorted(unknown)} (known: {', '.join(LORA_TARGETS)})")
    started = time.perf_counter()
    config, weights = load_checkpoint(args.model)
    model = Llama(config, weights, targets, args.rank, args.alpha, args.dense)
    del weights
    open_seconds = time.perf_counter() - started
    total, trainable = check_counts("lm_train.py", "the model", model, args)

    rng = np.random.default_rng(args.seed)
    pool = torch.from_numpy(rng.integers(0, config["vocab_size"], size=(args.pool, args.seq_len), dtype=np.int64))

    def batch_loss(batch):
        return model.loss(pool[torch.from_numpy(batch)])

    _, seed = train(model, len(pool), batch_loss, args, args.warmup, 1)
    started, cpu_started = time.perf_counter(), time.process_time()
    usage_started = resource.getrusage(resource.RUSAGE_SELF)
    loss, _ = train(model, len(pool), batch_loss, args, args.steps, seed)
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    usage = resource.getrusage(resource.RUSAGE_SELF)
    tokens = args.batch_size * args.seq_len * args.steps
    print(json.dumps({"side": f"pytorch-{args.dense}", "torch": torch.__version__,
                      "arch": config["architectures"][0], "hidden": config["hidden_size"],
                      "layers": config["num_hidden_layers"], "threads": args.threads,
                      "batch": args.batch_size, "seq_len": args.seq_len, "rank": args.rank, "targets": targets,
                      "warmup": args.warmup, "steps": args.steps, "seconds": seconds,
                      "tokens_per_s": tokens / seconds, "steps_per_s": args.steps / seconds,
                      "cpu_ms_per_step": 1e3 * cpu_seconds / args.steps,
                      "sys_ms_per_step": 1e3 * (usage.ru_stime - usage_started.ru_stime) / args.steps,
                      "minor_faults_per_step": (usage.ru_minflt - usage_started.ru_minflt) / args.steps,
                      "params_total": total, "params_trainable": trainable, "open_s": open_seconds,
                      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                      "last_run_loss": loss}))


if __name__ == "__main__":
    main()
