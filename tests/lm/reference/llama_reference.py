#!/usr/bin/python3
"""Independent reference forward pass for Llama / Mistral / Qwen2 checkpoints (issue 18).

Written from the architecture's definition, not from transformers' code. Reads a directory
written by hf_checkpoint.py (or a real Hugging Face one: config.json + model.safetensors or
sharded files with model.safetensors.index.json). F16/BF16 weights are upcast; everything is
computed in float32 (or float64 with --compute f64).

Usage (run with /usr/bin/python3):
  llama_reference.py logits --model DIR --ids "1 2 3;4 5" --out FILE [--pad none|left|right]
                            [--pad-id 0] [--compute f32|f64]
  llama_reference.py encode --tokenizer PATH --text "..." [--bos] [--eos]
  llama_reference.py merge-peft --model DIR --adapter ADIR --out DIR2
  llama_reference.py classify --model DIR --adapter ADIR --ids "1 2 3;4 5" --out FILE
                              [--pad left|right] [--pad-id 0]

logits: prompts are separated by ';', token ids by spaces. FILE is a safetensors file (the
format hf_checkpoint.py documents) holding, for prompt i (0-based), "logits.<i>" F32 [T_i, V]:
the next-token logits after each of its T_i tokens (padding positions are never written).
Its __metadata__ has "format": "fedlora-logits", "count": number of prompts, "ids.<i>": the
prompt's ids as given, "padding": the --pad mode, "compute": f32|f64.
  --pad none (default): each prompt is run alone, as a batch of one, without padding.
  --pad left / right: all prompts are run as one batch padded to the longest with --pad-id,
  with attention_mask 1 on real tokens and 0 on padding. Position ids are those of the real
  tokens only, cumsum(attention_mask) - 1 (as transformers' generate() makes them), so left
  padding does not shift positions; a real token attends to real tokens at or before it.
  A padding position (whose output is thrown away) also attends to itself, so no softmax row
  is empty. Left and right padding give the unpadded logits up to float rounding (~1e-6).
  (Rotary scores depend only on i - j, so positions 0..T-1 counted over the padding, as a
  plain transformers forward without position_ids uses, give the same logits too.)

The model, per layer:  h += o(attn(rmsnorm(h) * w_in));  h += down(silu(gate(x)) * up(x))
with x = rmsnorm(h) * w_post, rmsnorm(x) = x * rsqrt(mean(x^2) + rms_norm_eps); then the
final norm and lm_head (or the embedding matrix when tie_word_embeddings). Attention: q, k, v
projections (+ bias for qwen2), rotary embedding in the "rotate_half" convention (dims i and
i + D/2 rotate together by angle pos * theta^(-2i/D)), grouped-query: query head h uses kv
head h // (heads / kv_heads); scores / sqrt(D), causal + padding mask, softmax; with a mistral
"sliding_window" W a token at i sees only j with i - j < W (qwen2's use_sliding_window is
refused). In f32 mode the rotary angles are computed in float32 as transformers does.

encode: prints the SentencePiece ids of the text, space-separated (plain sp.encode: a leading
"▁" is added by the model's add_dummy_prefix, as LlamaTokenizer with legacy=True does);
--bos / --eos add the tokenizer's bos / eos ids.

merge-peft: reads ADIR/adapter_config.json (r, lora_alpha, optional rank_pattern,
alpha_pattern, use_rslora) and ADIR/adapter_model.safetensors with names
base_model.model.<module>.lora_A.weight [r, in] and .lora_B.weight [out, r]; writes DIR2 as an
F32 checkpoint (one model.safetensors, tokenizer files copied) with
<module>.weight += scale * B @ A, scale = alpha / r (alpha / sqrt(r) with use_rslora), where r
is lora_A's row count and alpha comes from alpha_pattern when a key matches the module path
(regex "(^|.*\\.)KEY$"). Other adapter tensors base_model.model.<name> replace <name>
(modules_to_save). A LoRA on lm_head of a tied model unties it. A sequence classifier's head
base_model.model.score.weight [classes, hidden] (PEFT's task_type SEQ_CLS) is kept as
"score.weight" in DIR2.

classify: the sequence classifier of transformers' LlamaForSequenceClassification: the model
of DIR with ADIR merged in (as merge-peft does; ADIR must hold score.weight), run as one batch
padded with --pad-id on the --pad side (default right), and the head applied to the
final-normed hidden state of each prompt's last real token. FILE holds "logits" F32 [B, classes].
"""
import argparse
import json
import math
import os
import re
import shutil
import sys

import torch

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from hf_checkpoint import load_checkpoint, read_safetensors, save_checkpoint, write_safetensors  # noqa: E402


class Model:
    def __init__(self, cfg, tensors, dtype=torch.float32):
        self.cfg, self.dtype = cfg, dtype
        self.w = {n: t.to(dtype) for n, t in tensors.items() if not n.endswith("rotary_emb.inv_freq")}
        self.layers = cfg["num_hidden_layers"]
        self.heads = cfg["num_attention_heads"]
        self.kv_heads = cfg.get("num_key_value_heads") or self.heads
        self.head_dim = cfg.get("head_dim") or cfg["hidden_size"] // self.heads
        self.eps = cfg["rms_norm_eps"]
        self.theta = cfg.get("rope_theta", 10000.0)
        self.window = cfg.get("sliding_window") if cfg.get("model_type") == "mistral" else None
        if cfg.get("use_sliding_window"):
            raise SystemExit("qwen2's use_sliding_window (per-layer windows) is not supported")
        if cfg.get("rope_scaling"):
            raise SystemExit("rope_scaling is not supported by this reference")
        if cfg.get("hidden_act", "silu") != "silu":
            raise SystemExit(f"hidden_act {cfg['hidden_act']} is not supported")
        if cfg.get("tie_word_embeddings"):  # tied: lm_head is the embedding matrix, even if saved
            self.w["lm_head.weight"] = self.w["model.embed_tokens.weight"]

    def linear(self, x, name):
        y = x @ self.w[name + ".weight"].T
        bias = self.w.get(name + ".bias")
        return y if bias is None else y + bias

    def rmsnorm(self, x, name):
        return x * torch.rsqrt((x * x).mean(-1, keepdim=True) + self.eps) * self.w[name]

    def rotary(self, pos):
        """cos, sin [B, T, D] for integer positions pos [B, T]."""
        D = self.head_dim
        rdt = torch.float32 if self.dtype == torch.float32 else torch.float64
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, D, 2, dtype=torch.int64).to(rdt) / D))
        ang = pos.to(rdt)[..., None] * inv_freq
        ang = torch.cat([ang, ang], dim=-1)
        return ang.cos().to(self.dtype), ang.sin().to(self.dtype)

    @staticmethod
    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rotated_half = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated_half * sin

    def attention(self, x, n, cos, sin, allowed):
        B, T, _ = x.shape
        p, D = f"model.layers.{n}.self_attn.", self.head_dim
        q = self.linear(x, p + "q_proj").view(B, T, self.heads, D).transpose(1, 2)
        k = self.linear(x, p + "k_proj").view(B, T, self.kv_heads, D).transpose(1, 2)
        v = self.linear(x, p + "v_proj").view(B, T, self.kv_heads, D).transpose(1, 2)
        q, k = self.rotate(q, cos[:, None], sin[:, None]), self.rotate(k, cos[:, None], sin[:, None])
        group = self.heads // self.kv_heads
        k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
        scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
        scores = scores.masked_fill(~allowed[:, None], float("-inf"))
        out = torch.softmax(scores, dim=-1) @ v  # [B, heads, T, D]
        return self.linear(out.transpose(1, 2).reshape(B, T, self.heads * D), p + "o_proj")

    def forward(self, ids, mask=None):
        """ids [B, T] int64, mask [B, T] bool (True = real token) -> logits [B, T, V]."""
        return self.linear(self.hidden(ids, mask), "lm_head")

    def hidden(self, ids, mask=None):
        """The final-normed hidden states [B, T, hidden]."""
        B, T = ids.shape
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        pos = (mask.long().cumsum(-1) - 1).clamp(min=0)
        cos, sin = self.rotary(pos)
        i = torch.arange(T)[:, None]
        j = torch.arange(T)[None, :]
        causal = j <= i
        if self.window:
            causal = causal & (i - j < self.window)
        allowed = (causal[None] & mask[:, None, :]) | torch.eye(T, dtype=torch.bool)[None]
        h = self.w["model.embed_tokens.weight"][ids]
        for n in range(self.layers):
            p = f"model.layers.{n}."
            h = h + self.attention(self.rmsnorm(h, p + "input_layernorm.weight"), n, cos, sin, allowed)
            x = self.rmsnorm(h, p + "post_attention_layernorm.weight")
            gate = self.linear(x, p + "mlp.gate_proj")
            h = h + self.linear(gate * torch.sigmoid(gate) * self.linear(x, p + "mlp.up_proj"), p + "mlp.down_proj")
        return self.rmsnorm(h, "model.norm.weight")


def prompt_logits(model, prompts, pad="none", pad_id=0):
    """List of [T_i, V] float32 logits, one per prompt (list of int lists)."""
    with torch.no_grad():
        if pad == "none":
            return [model.forward(torch.tensor([p]))[0].float() for p in prompts]
        T = max(len(p) for p in prompts)
        ids = torch.full((len(prompts), T), pad_id, dtype=torch.int64)
        mask = torch.zeros((len(prompts), T), dtype=torch.bool)
        for b, p in enumerate(prompts):
            sl = slice(T - len(p), T) if pad == "left" else slice(0, len(p))
            ids[b, sl], mask[b, sl] = torch.tensor(p), True
        out = model.forward(ids, mask).float()
        return [out[b][mask[b]] for b in range(len(prompts))]


def parse_ids(text):
    prompts = [[int(t) for t in part.split()] for part in text.split(";")]
    if any(not p for p in prompts):
        raise SystemExit("--ids: every prompt needs at least one token id")
    return prompts


def cmd_logits(a):
    cfg, tensors = load_checkpoint(a.model)
    model = Model(cfg, tensors, torch.float64 if a.compute == "f64" else torch.float32)
    prompts = parse_ids(a.ids)
    for p in prompts:
        if min(p) < 0 or max(p) >= cfg["vocab_size"]:
            raise SystemExit(f"token id out of range 0..{cfg['vocab_size'] - 1}")
    logits = prompt_logits(model, prompts, a.pad, a.pad_id)
    meta = {"format": "fedlora-logits", "count": len(prompts), "padding": a.pad, "compute": a.compute}
    meta.update({f"ids.{i}": " ".join(map(str, p)) for i, p in enumerate(prompts)})
    write_safetensors(a.out, {f"logits.{i}": t.contiguous() for i, t in enumerate(logits)}, meta)


def cmd_encode(a):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=a.tokenizer)
    ids = ([sp.bos_id()] if a.bos else []) + sp.encode(a.text) + ([sp.eos_id()] if a.eos else [])
    print(" ".join(map(str, ids)))


def pattern_value(patterns, module, default):
    for key, value in (patterns or {}).items():
        if re.match(rf"(^|.*\.){key}$", module):
            return value
    return default


def merge_peft(model_dir, adapter_dir):
    """Return (config, F32 tensors) of the base model with the adapter merged in."""
    cfg, tensors = load_checkpoint(model_dir)
    tensors = {n: t.float() for n, t in tensors.items()}
    with open(os.path.join(adapter_dir, "adapter_config.json")) as f:
        acfg = json.load(f)
    adapter, _ = read_safetensors(os.path.join(adapter_dir, "adapter_model.safetensors"))
    prefix = "base_model.model."
    lora = {}
    for name, t in adapter.items():
        if not name.startswith(prefix):
            raise SystemExit(f"adapter tensor {name} does not start with {prefix}")
        m = re.fullmatch(r"(.*)\.lora_([AB])(?:\.[^.]+)?\.weight", name[len(prefix):])
        if m:
            lora.setdefault(m.group(1), {})[m.group(2)] = t.double()
        elif name[len(prefix):] in tensors or name[len(prefix):] in ("lm_head.weight", "score.weight"):
            tensors[name[len(prefix):]] = t.float()  # modules_to_save
        else:
            raise SystemExit(f"adapter tensor {name} matches nothing in the model")
    for module, ab in sorted(lora.items()):
        A, B = ab["A"], ab["B"]
        r = A.shape[0]
        alpha = pattern_value(acfg.get("alpha_pattern"), module, acfg.get("lora_alpha", 8))
        rank = pattern_value(acfg.get("rank_pattern"), module, acfg.get("r", r))
        if rank != r or B.shape[1] != r:
            raise SystemExit(f"{module}: lora_A has {r} rows, lora_B {B.shape[1]} columns, config r {rank}")
        scale = alpha / math.sqrt(r) if acfg.get("use_rslora") else alpha / r
        target = module + ".weight"
        if target == "lm_head.weight" and target not in tensors:
            tensors[target] = tensors["model.embed_tokens.weight"].clone()
        if acfg.get("fan_in_fan_out"):
            raise SystemExit("fan_in_fan_out adapters are not supported")
        W = tensors[target]
        tensors[target] = (W.double() + scale * (B @ A)).float()
    if "lm_head.weight" in tensors:
        cfg["tie_word_embeddings"] = False
    cfg["torch_dtype"] = "float32"
    return cfg, tensors


def cmd_classify(a):
    cfg, tensors = merge_peft(a.model, a.adapter)
    if "score.weight" not in tensors:
        raise SystemExit("the adapter holds no classification head (base_model.model.score.weight)")
    model = Model(cfg, tensors)
    prompts = parse_ids(a.ids)
    T = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), T), a.pad_id, dtype=torch.int64)
    mask = torch.zeros((len(prompts), T), dtype=torch.bool)
    last = []
    for b, p in enumerate(prompts):
        start = T - len(p) if a.pad == "left" else 0
        ids[b, start:start + len(p)], mask[b, start:start + len(p)] = torch.tensor(p), True
        last.append(start + len(p) - 1)
    with torch.no_grad():
        h = model.hidden(ids, mask)
        pooled = h[torch.arange(len(prompts)), torch.tensor(last)]
        logits = (pooled @ model.w["score.weight"].T).float()
    write_safetensors(a.out, {"logits": logits.contiguous()},
                      {"format": "fedlora-classify", "count": len(prompts), "padding": a.pad})


def cmd_merge_peft(a):
    cfg, tensors = merge_peft(a.model, a.adapter)
    save_checkpoint(a.out, cfg, tensors)
    for extra in os.listdir(a.model):
        if extra.startswith("tokenizer") or extra == "special_tokens_map.json":
            shutil.copyfile(os.path.join(a.model, extra), os.path.join(a.out, extra))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("logits")
    g.add_argument("--model", required=True)
    g.add_argument("--ids", required=True)
    g.add_argument("--out", required=True)
    g.add_argument("--pad", choices=("none", "left", "right"), default="none")
    g.add_argument("--pad-id", type=int, default=0)
    g.add_argument("--compute", choices=("f32", "f64"), default="f32")
    e = sub.add_parser("encode")
    e.add_argument("--tokenizer", required=True)
    e.add_argument("--text", required=True)
    e.add_argument("--bos", action="store_true")
    e.add_argument("--eos", action="store_true")
    m = sub.add_parser("merge-peft")
    m.add_argument("--model", required=True)
    m.add_argument("--adapter", required=True)
    m.add_argument("--out", required=True)
    c = sub.add_parser("classify")
    c.add_argument("--model", required=True)
    c.add_argument("--adapter", required=True)
    c.add_argument("--ids", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--pad", choices=("left", "right"), default="right")
    c.add_argument("--pad-id", type=int, default=0)
    a = p.parse_args(argv)
    {"logits": cmd_logits, "encode": cmd_encode, "merge-peft": cmd_merge_peft, "classify": cmd_classify}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
