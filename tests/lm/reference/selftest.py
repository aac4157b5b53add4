#!/usr/bin/python3
"""Self-test of hf_checkpoint.py and llama_reference.py (issue 18).

Usage: /usr/bin/python3 tests/lm/reference/selftest.py [-v] [-k NAME] [--keep]
(-v: tracebacks; -k: only checks whose name contains NAME; --keep: keep the temporary folder.)
Needs Debian's python3-torch, python3-sentencepiece and python3-numpy. Prints one line per
check and ends with "N passed, N failed"; exits 1 if any check failed.

The reference forward is checked against a second, deliberately different implementation
(naive_logits: float64 Python loops, one token and head at a time, rotary embedding as a
complex multiplication) and against invariants: determinism, causality, padding, GQA as
repeated kv heads, tied = untied with lm_head copied, qwen2 with zero biases = llama, the
sliding window. The safetensors writer is checked against numpy's float16 and a bit-level
bfloat16 rounding; the command lines are run as subprocesses and timed (< 5 s each).
"""
import cmath
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True  # leave no __pycache__ in the source tree
import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import hf_checkpoint as hf  # noqa: E402
import llama_reference as ref  # noqa: E402

TMP = tempfile.mkdtemp(prefix="lm-reference-")
CHECKS = []
SLOWEST = [0.0, ""]
TINY = ["--hidden", "64", "--layers", "2", "--heads", "4", "--intermediate", "128", "--vocab", "256"]


def check(fn):
    CHECKS.append(fn)
    return fn


def cli(script, *args):
    """Run a tool as a subprocess; returns stdout; records the slowest call."""
    start = time.time()
    r = subprocess.run([sys.executable, os.path.join(HERE, script), *map(str, args)],
                       capture_output=True, text=True)
    took = time.time() - start
    if took > SLOWEST[0]:
        SLOWEST[:] = [took, f"{script} {args[0]}"]
    assert r.returncode == 0, f"{script} {args}: {r.stderr}"
    return r.stdout


def make(name, *args, arch="llama", kv=4, tie=1, dtype="F32", seed=1, sub=False):
    out = os.path.join(TMP, name)
    argv = ["make", "--out", out, "--arch", arch, *TINY, "--kv-heads", kv, "--tie", tie,
            "--dtype", dtype, "--seed", seed, *args]
    if sub:
        cli("hf_checkpoint.py", *argv)
    else:
        hf.main([str(x) for x in argv])
    return out


def close(a, b, tol, what=""):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol, f"{what}: max difference {err:.3g} > {tol:.3g}"


def logits(model_dir, prompts, pad="none", dtype=torch.float32, pad_id=0):
    cfg, w = hf.load_checkpoint(model_dir)
    return ref.prompt_logits(ref.Model(cfg, w, dtype), prompts, pad, pad_id)


def naive_logits(cfg, w, ids):
    """Float64, one token and one head at a time; rotary as complex rotation of (x_i, x_i+D/2)."""
    w = {n: t.double() for n, t in w.items()}
    H, NH = cfg["hidden_size"], cfg["num_attention_heads"]
    NKV = cfg["num_key_value_heads"]
    D = cfg.get("head_dim") or H // NH
    window = cfg.get("sliding_window") if cfg["model_type"] == "mistral" else None
    eps, theta = cfg["rms_norm_eps"], cfg["rope_theta"]

    def norm(x, name):
        return x / math.sqrt(float((x * x).sum()) / len(x) + eps) * w[name]

    def lin(x, name):
        y = w[name + ".weight"] @ x
        return y + w[name + ".bias"] if name + ".bias" in w else y

    def rope(u, pos):
        out = u.clone()
        for i in range(D // 2):
            z = complex(u[i], u[i + D // 2]) * cmath.exp(1j * pos * theta ** (-2 * i / D))
            out[i], out[i + D // 2] = z.real, z.imag
        return out

    hs = [w["model.embed_tokens.weight"][t].clone() for t in ids]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        xs = [norm(h, p + "input_layernorm.weight") for h in hs]
        qs = [lin(x, p + "self_attn.q_proj").view(NH, D) for x in xs]
        ks = [lin(x, p + "self_attn.k_proj").view(NKV, D) for x in xs]
        vs = [lin(x, p + "self_attn.v_proj").view(NKV, D) for x in xs]
        new = []
        for t in range(len(ids)):
            heads = []
            for h in range(NH):
                g = h // (NH // NKV)
                seen = [j for j in range(t + 1) if window is None or t - j < window]
                s = [float(rope(qs[t][h], t) @ rope(ks[j][g], j)) / math.sqrt(D) for j in seen]
                m = max(s)
                e = [math.exp(x - m) for x in s]
                heads.append(sum(e[k] / sum(e) * vs[j][g] for k, j in enumerate(seen)))
            new.append(hs[t] + lin(torch.cat(heads), p + "self_attn.o_proj"))
        hs = new
        for t in range(len(ids)):
            x = norm(hs[t], p + "post_attention_layernorm.weight")
            gate = lin(x, p + "mlp.gate_proj")
            hs[t] = hs[t] + lin(gate / (1 + torch.exp(-gate)) * lin(x, p + "mlp.up_proj"), p + "mlp.down_proj")
    head = w["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else w["lm_head.weight"]
    return torch.stack([head @ norm(h, "model.norm.weight") for h in hs])


# ---------------------------------------------------------------- safetensors
@check
def safetensors_round_trip():
    g = torch.Generator().manual_seed(5)
    src = {"a.f32": torch.randn(3, 5, generator=g), "b.f16": torch.randn(7, generator=g).half(),
           "c.bf16": torch.randn(2, 3, 4, generator=g).bfloat16(), "d.scalar": torch.tensor(2.5),
           "e.i64": torch.arange(5)}
    path = os.path.join(TMP, "rt.safetensors")
    hf.write_safetensors(path, src, {"k": "v"})
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0 and raw[8:8 + n].rstrip(b" ").endswith(b"}")
    header = json.loads(raw[8:8 + n])
    assert header["__metadata__"] == {"k": "v"}
    assert header["c.bf16"] == {"dtype": "BF16", "shape": [2, 3, 4], "data_offsets": header["c.bf16"]["data_offsets"]}
    back, meta = hf.read_safetensors(path)
    assert meta == {"k": "v"} and set(back) == set(src)
    for name, t in src.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape
        assert hf.tensor_bytes(back[name]) == hf.tensor_bytes(t), name
    try:
        open(path + ".bad", "wb").write(raw + b"\0")
        hf.read_safetensors(path + ".bad")
        raise AssertionError("trailing bytes were accepted")
    except ValueError:
        pass


@check
def half_and_bfloat16_bytes():
    x = torch.randn(1000, generator=torch.Generator().manual_seed(9)) * 3
    assert hf.tensor_bytes(x.half()) == x.numpy().astype(np.float16).tobytes()
    bits = x.numpy().view(np.uint32).astype(np.uint64)
    rne = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype(np.uint16)  # round to nearest even
    assert hf.tensor_bytes(x.bfloat16()) == rne.tobytes()


# ---------------------------------------------------------------- checkpoints
@check
def make_layout_and_config():
    d = make("gqa", kv=2, tie=1, seed=1, sub=True)
    cfg, w = hf.load_checkpoint(d)
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["model_type"] == "llama"
    assert (cfg["num_key_value_heads"], cfg["tie_word_embeddings"], cfg["torch_dtype"]) == (2, True, "float32")
    assert cfg["hidden_act"] == "silu" and "head_dim" not in cfg
    assert "lm_head.weight" not in w and len(w) == 1 + 2 * 9 + 1
    assert w["model.layers.1.self_attn.k_proj.weight"].shape == (32, 64)
    assert w["model.layers.0.self_attn.o_proj.weight"].shape == (64, 64)
    assert w["model.layers.0.mlp.down_proj.weight"].shape == (64, 128)
    assert abs(w["model.embed_tokens.weight"].std().item() - 0.02) < 0.002
    assert abs(w["model.norm.weight"].mean().item() - 1) < 0.03
    again = make("gqa2", kv=2, tie=1, seed=1)
    other = make("gqa3", kv=2, tie=1, seed=2)
    assert open(d + "/model.safetensors", "rb").read() == open(again + "/model.safetensors", "rb").read()
    assert open(d + "/model.safetensors", "rb").read() != open(other + "/model.safetensors", "rb").read()
    _, w = hf.load_checkpoint(make("untied", tie=0, arch="qwen2"))
    assert w["lm_head.weight"].shape == (256, 64) and w["model.layers.0.self_attn.v_proj.bias"].shape == (64,)
    cfg, w = hf.load_checkpoint(make("hd", "--head-dim", 32, kv=2))
    assert cfg["head_dim"] == 32 and w["model.layers.0.self_attn.q_proj.weight"].shape == (128, 64)


@check
def shards_match_single_file():
    one = hf.load_checkpoint(make("s1", arch="qwen2", tie=0, kv=2, seed=4))[1]
    d = make("s3", "--shards", 3, arch="qwen2", tie=0, kv=2, seed=4)
    index = json.load(open(d + "/model.safetensors.index.json"))
    files = sorted(set(index["weight_map"].values()))
    assert files == [f"model-0000{k}-of-00003.safetensors" for k in (1, 2, 3)]
    assert not os.path.exists(d + "/model.safetensors")
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in one.values())
    three = hf.load_checkpoint(d)[1]
    assert set(three) == set(one) and all(torch.equal(one[n], three[n]) for n in one)
    assert set(index["weight_map"]) == set(one)


@check
def convert_rounds_like_torch():
    src = make("conv32", "--shards", 2, kv=2, tie=0, seed=6)
    base = hf.load_checkpoint(src)[1]
    for dt, tdt in (("F16", torch.float16), ("BF16", torch.bfloat16)):
        out = os.path.join(TMP, "conv" + dt)
        cli("hf_checkpoint.py", "convert", "--in", src, "--out", out, "--dtype", dt)
        cfg, w = hf.load_checkpoint(out)
        assert cfg["torch_dtype"] == {"F16": "float16", "BF16": "bfloat16"}[dt]
        assert json.load(open(out + "/model.safetensors.index.json"))["weight_map"] == \
            json.load(open(src + "/model.safetensors.index.json"))["weight_map"]
        for n, t in base.items():
            assert w[n].dtype == tdt and torch.equal(w[n].float(), t.to(tdt).float()), n
        made = hf.load_checkpoint(make("made" + dt, "--shards", 2, kv=2, tie=0, seed=6, dtype=dt))[1]
        assert all(torch.equal(made[n], w[n]) for n in w), "make --dtype != convert"
        close(torch.cat(logits(out, [[5, 6, 7, 8]])), torch.cat(logits(src, [[5, 6, 7, 8]])), 0.05, dt)


# ---------------------------------------------------------------- forward
@check
def matches_naive_implementation():
    ids = [3, 17, 250, 0, 9, 9, 41]
    cases = [("gqa-n", {"kv": 2}), ("qwen-n", {"arch": "qwen2", "tie": 0, "kv": 1}),
             ("mis-n", {"arch": "mistral", "kv": 2}), ("hd-n", {"kv": 2})]
    for name, kw in cases:
        extra = ["--sliding-window", 3] if kw.get("arch") == "mistral" else []
        extra += ["--head-dim", 24] if name == "hd-n" else []
        d = make(name, *extra, "--std", 0.2, "--rope-theta", 100, seed=7, **kw)
        cfg, w = hf.load_checkpoint(d)
        want = naive_logits(cfg, w, ids)
        close(ref.Model(cfg, w, torch.float64).forward(torch.tensor([ids]))[0], want, 1e-9, name + " f64")
        close(logits(d, [ids])[0], want, 1e-4 * want.abs().max().item(), name + " f32")


@check
def logits_cli_deterministic():
    d = make("gqa-cli", kv=2, seed=11)
    a, b = os.path.join(TMP, "la.safetensors"), os.path.join(TMP, "lb.safetensors")
    cli("llama_reference.py", "logits", "--model", d, "--ids", "1 2 3;4 5", "--out", a)
    cli("llama_reference.py", "logits", "--model", d, "--ids", "1 2 3;4 5", "--out", b)
    assert open(a, "rb").read() == open(b, "rb").read()
    t, meta = hf.read_safetensors(a)
    assert meta["format"] == "fedlora-logits" and meta["count"] == "2" and meta["ids.1"] == "4 5"
    assert t["logits.0"].shape == (3, 256) and t["logits.1"].shape == (2, 256) and t["logits.0"].dtype == torch.float32
    assert torch.equal(t["logits.0"], logits(d, [[1, 2, 3]])[0])


@check
def causal_mask():
    d = make("causal", kv=2, seed=12)
    a, b, c = logits(d, [[5, 6, 7, 8, 9], [5, 6, 7, 100, 200], [5, 6, 7]])
    close(a[:3], b[:3], 1e-6, "later tokens changed")
    close(a[:3], c, 1e-6, "prefix")
    assert (a[3:] - b[3:]).abs().max() > 1e-3


@check
def gqa_is_repeated_kv_heads():
    d = make("gqa-r", kv=2, seed=13)
    cfg, w = hf.load_checkpoint(d)
    mha, D = dict(w), 16
    for n in range(2):
        for proj in ("k", "v"):
            name = f"model.layers.{n}.self_attn.{proj}_proj.weight"
            mha[name] = w[name].view(2, D, 64).repeat_interleave(2, dim=0).reshape(64, 64)
    ids = torch.tensor([[1, 50, 2, 77, 3]])
    close(ref.Model(cfg, w).forward(ids), ref.Model(dict(cfg, num_key_value_heads=4), mha).forward(ids), 1e-5)


@check
def tied_equals_untied_copy():
    cfg, w = hf.load_checkpoint(make("tied", kv=2, seed=14))
    untied = dict(w, **{"lm_head.weight": w["model.embed_tokens.weight"].clone()})
    ids = torch.tensor([[9, 8, 7]])
    close(ref.Model(cfg, w).forward(ids), ref.Model(dict(cfg, tie_word_embeddings=False), untied).forward(ids), 0)


@check
def qwen2_biases():
    cfg, w = hf.load_checkpoint(make("qb", arch="qwen2", kv=2, seed=15))
    zero = {n: (torch.zeros_like(t) if n.endswith(".bias") else t) for n, t in w.items()}
    plain = {n: t for n, t in w.items() if not n.endswith(".bias")}
    llama = dict(cfg, model_type="llama", architectures=["LlamaForCausalLM"])
    ids = torch.tensor([[4, 3, 2, 1]])
    close(ref.Model(cfg, zero).forward(ids), ref.Model(llama, plain).forward(ids), 0)
    assert (ref.Model(cfg, w).forward(ids) - ref.Model(cfg, zero).forward(ids)).abs().max() > 1e-4


@check
def padding_left_and_right():
    d = make("pad", arch="qwen2", kv=2, seed=16, tie=0)
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11, 12]]
    alone = logits(d, prompts)
    for pad in ("left", "right"):
        for pad_id in (0, 200):
            for a, b in zip(logits(d, prompts, pad, pad_id=pad_id), alone):
                close(a, b, 1e-5, f"{pad} padding with id {pad_id}")
    out = os.path.join(TMP, "lp.safetensors")
    cli("llama_reference.py", "logits", "--model", d, "--ids", "1 2 3 4 5 6;7 8", "--out", out, "--pad", "left")
    t, meta = hf.read_safetensors(out)
    assert meta["padding"] == "left" and t["logits.1"].shape == (2, 256)
    close(t["logits.1"], alone[1], 1e-5, "cli left padding")


@check
def sliding_window():
    ids = [[5, 6, 7, 8, 9, 10, 11], [50, 60, 7, 8, 9, 10, 11]]
    w3 = logits(make("sw3", "--sliding-window", 3, "--layers", 1, arch="mistral", seed=17), ids)
    close(w3[0][4:], w3[1][4:], 1e-6, "tokens outside the window changed the output")  # one layer
    w3 = logits(make("sw3", "--sliding-window", 3, arch="mistral", seed=17), ids)  # 2 layers: 2 * (3 - 1) back
    close(w3[0][6:], w3[1][6:], 1e-6, "tokens outside two windows changed the output")
    assert (w3[0][5] - w3[1][5]).abs().max() > 1e-4
    assert (w3[0][3] - w3[1][3]).abs().max() > 1e-4
    full = logits(make("swnull", arch="mistral", seed=17), ids[:1])[0]
    wide = logits(make("sw7", "--sliding-window", 7, arch="mistral", seed=17), ids[:1])[0]
    close(full, wide, 0, "window as long as the prompt")


# ---------------------------------------------------------------- tokenizer
@check
def tokenizer_byte_fallback_and_files():
    import random
    import sentencepiece as spm
    rng = random.Random(1)
    words = "the quick brown fox jumps over a lazy dog while clients train low rank adapters".split()
    text = os.path.join(TMP, "text.txt")
    with open(text, "w") as f:
        f.writelines(" ".join(rng.choice(words) for _ in range(10)) + f" {i}\n" for i in range(2000))
    tok = os.path.join(TMP, "tok.model")
    cli("hf_checkpoint.py", "train-tokenizer", "--text", text, "--vocab", 300, "--out", tok)
    sp = spm.SentencePieceProcessor(model_file=tok)
    assert (sp.get_piece_size(), sp.unk_id(), sp.bos_id(), sp.eos_id()) == (300, 0, 1, 2)
    ids = sp.encode("the fox € 7")
    assert "<0xE2>" in [sp.id_to_piece(i) for i in ids] and sp.decode(ids) == "the fox € 7"
    out = cli("llama_reference.py", "encode", "--tokenizer", tok, "--text", "the fox € 7", "--bos")
    assert [int(x) for x in out.split()] == [1] + ids
    d = os.path.join(TMP, "withtok")
    hf.main(["make", "--out", d, "--arch", "llama", *TINY[:-1], "300", "--kv-heads", "2", "--tie", "1",
             "--dtype", "BF16", "--seed", "3", "--tokenizer-model", tok])
    tc = json.load(open(d + "/tokenizer_config.json"))
    cfg = json.load(open(d + "/config.json"))
    assert (tc["bos_token"], tc["eos_token"], cfg["bos_token_id"], cfg["eos_token_id"]) == ("<s>", "</s>", 1, 2)
    assert open(d + "/tokenizer.model", "rb").read() == open(tok, "rb").read()


# ---------------------------------------------------------------- PEFT merge
@check
def merge_peft():
    d = make("peftbase", kv=2, seed=18)  # tied: a LoRA on lm_head unties it
    cfg, w = hf.load_checkpoint(d)
    g = torch.Generator().manual_seed(19)
    adir = os.path.join(TMP, "adapter")
    os.makedirs(adir, exist_ok=True)
    shapes = {"model.layers.0.self_attn.q_proj": (64, 64, 4), "model.layers.1.self_attn.v_proj": (32, 64, 4),
              "model.layers.1.mlp.down_proj": (64, 128, 2), "lm_head": (256, 64, 4)}
    ad = {}
    for m, (out, inp, r) in shapes.items():
        ad[f"base_model.model.{m}.lora_A.weight"] = torch.randn(r, inp, generator=g) * 0.1
        ad[f"base_model.model.{m}.lora_B.weight"] = torch.randn(out, r, generator=g) * 0.1
    ad["base_model.model.model.norm.weight"] = torch.full((64,), 0.5)
    hf.write_safetensors(adir + "/adapter_model.safetensors", ad, {"format": "pt"})
    json.dump({"peft_type": "LORA", "r": 4, "lora_alpha": 8,
               "target_modules": ["q_proj", "v_proj", "down_proj", "lm_head"],
               "rank_pattern": {"down_proj": 2}, "alpha_pattern": {"layers.1.v_proj": 99, "v_proj": 2},
               "modules_to_save": ["norm"]}, open(adir + "/adapter_config.json", "w"))
    out = os.path.join(TMP, "merged")
    cli("llama_reference.py", "merge-peft", "--model", d, "--adapter", adir, "--out", out)
    mcfg, mw = hf.load_checkpoint(out)
    assert mcfg["tie_word_embeddings"] is False and mcfg["torch_dtype"] == "float32"
    scale = {"model.layers.0.self_attn.q_proj": 2.0, "model.layers.1.self_attn.v_proj": 0.5,
             "model.layers.1.mlp.down_proj": 4.0, "lm_head": 2.0}
    base = dict(w, **{"lm_head.weight": w["model.embed_tokens.weight"]})
    for n, t in mw.items():
        m = n[:-len(".weight")]
        want = base[n]
        if m in scale:
            A, B = ad[f"base_model.model.{m}.lora_A.weight"], ad[f"base_model.model.{m}.lora_B.weight"]
            want = want + scale[m] * B @ A
        if n == "model.norm.weight":
            want = torch.full((64,), 0.5)
        close(t, want, 1e-6, n)
    # the merged model computes what the unmerged adapter would: W x + scale * B (A x)
    unmerged = ref.Model(dict(cfg, tie_word_embeddings=False),
                         dict(base, **{"model.norm.weight": mw["model.norm.weight"]}))
    plain_linear = unmerged.linear

    def lora_linear(x, name):
        y = plain_linear(x, name)
        if name in scale:
            A, B = ad[f"base_model.model.{name}.lora_A.weight"], ad[f"base_model.model.{name}.lora_B.weight"]
            y = y + scale[name] * (x @ A.T) @ B.T
        return y
    unmerged.linear = lora_linear
    ids = torch.tensor([[3, 1, 4, 1, 5]])
    close(ref.Model(mcfg, mw).forward(ids), unmerged.forward(ids), 1e-4, "merged vs unmerged")
    assert (ref.Model(mcfg, mw).forward(ids) - ref.Model(cfg, w).forward(ids)).abs().max() > 1e-3


# ---------------------------------------------------------------- sequence classification
@check
def classify_reads_the_last_real_token():
    """With the head set to rows of lm_head, the classifier's logits are those rows' next-token
    logits after each prompt's last token, run alone; left and right padding agree."""
    d = make("clsbase", kv=2, tie=0, seed=21)
    cfg, w = hf.load_checkpoint(d)
    rows = [7, 30, 2]
    adir = os.path.join(TMP, "cls-adapter")
    os.makedirs(adir, exist_ok=True)
    hf.write_safetensors(adir + "/adapter_model.safetensors",
                         {"base_model.model.score.weight": w["lm_head.weight"][rows].clone()}, {"format": "pt"})
    json.dump({"peft_type": "LORA", "task_type": "SEQ_CLS", "r": 4, "lora_alpha": 8, "target_modules": [],
               "modules_to_save": ["score"]}, open(adir + "/adapter_config.json", "w"))
    prompts = [[1, 2, 3, 4, 5, 6], [7, 8], [9, 10, 11]]
    ids = ";".join(" ".join(map(str, p)) for p in prompts)
    got = {}
    for pad in ("right", "left"):
        out = os.path.join(TMP, f"cls-{pad}.safetensors")
        cli("llama_reference.py", "classify", "--model", d, "--adapter", adir, "--ids", ids, "--out", out,
            "--pad", pad, "--pad-id", "0")
        got[pad] = hf.read_safetensors(out)[0]["logits"]
        assert tuple(got[pad].shape) == (3, 3), got[pad].shape
    model = ref.Model(cfg, w)
    with torch.no_grad():
        want = torch.stack([model.forward(torch.tensor([p]))[0, -1, rows] for p in prompts])
    close(got["right"], want, 1e-5, "classify vs last-token logits")
    close(got["left"], got["right"], 1e-5, "left vs right padding")


def main():
    verbose, only = "-v" in sys.argv, None
    if "-k" in sys.argv:
        only = sys.argv[sys.argv.index("-k") + 1]
    passed = failed = 0
    for fn in CHECKS:
        if only and only not in fn.__name__:
            continue
        start = time.time()
        try:
            fn()
            passed += 1
            print(f"PASS {fn.__name__} ({time.time() - start:.1f} s)")
        except Exception as e:  # noqa: BLE001 - report every failure and go on
            failed += 1
            print(f"FAIL {fn.__name__}: {type(e).__name__}: {e}")
            if verbose:
                import traceback
                traceback.print_exc()
    # Reported, not asserted: a timing depends on the machine's load, and tests check behaviour.
    print(f"slowest command line: {SLOWEST[1]} {SLOWEST[0]:.2f} s")
    if "--keep" in sys.argv:
        print(f"kept {TMP}")
    else:
        shutil.rmtree(TMP)
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
