#!/usr/bin/python3
"""Write small random Llama-family checkpoints in the Hugging Face layout (issue 18).

Independent reference tooling for the C++ tests: torch (Debian's python3-torch) for the
random numbers and dtype rounding, sentencepiece for tokenizers, and a safetensors
reader/writer written here in plain Python (there is no safetensors package).

Usage (run with /usr/bin/python3):
  hf_checkpoint.py make --out DIR --arch {llama,mistral,qwen2} --hidden H --layers L \\
      --heads NH --kv-heads NKV --intermediate I --vocab V --tie {0,1} \\
      --dtype {F32,F16,BF16} --seed S [--shards K] [--rope-theta T] [--rms-eps E] \\
      [--head-dim D] [--max-pos P] [--sliding-window W (mistral)] [--std 0.02] \\
      [--tokenizer-model PATH] [--stream]
  hf_checkpoint.py convert --in DIR --out DIR2 --dtype {F32,F16,BF16}
  hf_checkpoint.py train-tokenizer --text FILE --vocab V --out PATH [--model-type bpe|unigram]

`make` writes DIR/config.json and DIR/model.safetensors, or with --shards K > 1 the files
model-00001-of-0000K.safetensors ... plus model.safetensors.index.json
({"metadata": {"total_size": bytes}, "weight_map": {name: file}}), split in state-dict
order into K runs of about equal byte size. Tensor names and shapes are transformers':
  model.embed_tokens.weight [V,H]; model.norm.weight [H]; lm_head.weight [V,H] (absent when tied)
  model.layers.N.{input,post_attention}_layernorm.weight [H]
  model.layers.N.self_attn.q_proj.weight [NH*D,H], {k,v}_proj.weight [NKV*D,H], o_proj.weight [H,NH*D]
  model.layers.N.self_attn.{q,k,v}_proj.bias (qwen2 only)
  model.layers.N.mlp.{gate,up}_proj.weight [I,H], down_proj.weight [H,I]
D = --head-dim if given (then written to config.json as head_dim), else H/NH (not written).
Values: normal(0, --std) for matrices and biases, 1 + normal(0, 0.05) for norm weights, drawn
in float32 from torch.Generator().manual_seed(S) in state-dict order, then rounded to --dtype.
Within one file tensors are stored sorted by name (as the safetensors library does for one
dtype), and each file has __metadata__ {"format": "pt"}.

With --stream, each tensor is written to its place in the file as soon as it is drawn, so
memory holds one tensor instead of the whole model (a 1B model at F32 is 4.4 GB); the files are
byte for byte those written without it.

With --tokenizer-model, DIR gets a copy as tokenizer.model plus tokenizer_config.json and
special_tokens_map.json; config.json's bos/eos ids then come from the tokenizer (else 1 and 2).
`train-tokenizer` trains a Llama-style SentencePiece model (unk 0, bos 1, eos 2, no pad,
byte_fallback, split_digits, identity normalisation); byte_fallback needs V >= 259 + pieces.
`convert` rewrites every tensor of DIR in another dtype (round to nearest even) into DIR2,
keeping the sharding and other files, with torch_dtype updated.

The safetensors functions (read_safetensors, write_safetensors, load_checkpoint) are
importable: llama_reference.py and selftest.py use them.
"""
import argparse
import json
import os
import shutil
import struct
import sys

import torch

DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "F64": torch.float64, "I64": torch.int64, "I32": torch.int32}
TORCH_DTYPE_NAME = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}
ARCHS = {"llama": ("LlamaForCausalLM", 10000.0, 1e-5),
         "mistral": ("MistralForCausalLM", 10000.0, 1e-5),
         "qwen2": ("Qwen2ForCausalLM", 1000000.0, 1e-6)}


# ---------------------------------------------------------------- safetensors
def _dtype_name(t):
    for name, dt in DTYPES.items():
        if t.dtype == dt:
            return name
    raise ValueError(f"unsupported dtype {t.dtype}")


def tensor_bytes(t):
    """Raw little-endian row-major bytes of a tensor (bf16 via its 16-bit pattern)."""
    assert sys.byteorder == "little"
    t = t.detach().contiguous().cpu()
    if t.dtype == torch.bfloat16:
        t = t.view(torch.int16)
    return t.numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    """Write {name: tensor} to path, sorted by name; metadata is a {str: str} dict."""
    header, blobs, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    for name in sorted(tensors):
        t = tensors[name]
        data = tensor_bytes(t)
        header[name] = {"dtype": _dtype_name(t), "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for data in blobs:
            f.write(data)


def read_safetensors(path):
    """Return ({name: tensor} in file dtype, metadata dict); checks the layout strictly."""
    with open(path, "rb") as f:
        raw = f.read()
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError(f"{path}: header length {n} past end of file")
    header = json.loads(raw[8:8 + n].decode())
    metadata = header.pop("__metadata__", {}) or {}
    data = raw[8 + n:]
    tensors, spans = {}, []
    for name, info in header.items():
        dtype = DTYPES[info["dtype"]]
        begin, end = info["data_offsets"]
        count = 1
        for d in info["shape"]:
            count *= d
        width = torch.tensor([], dtype=dtype).element_size()
        if end - begin != count * width or end > len(data) or begin < 0:
            raise ValueError(f"{path}: bad data_offsets for {name}")
        spans.append((begin, end))
        buf = bytearray(data[begin:end])
        if dtype == torch.bfloat16:
            t = torch.frombuffer(buf, dtype=torch.int16).view(torch.bfloat16) if buf else torch.zeros(0, dtype=dtype)
        else:
            t = torch.frombuffer(buf, dtype=dtype) if buf else torch.zeros(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"])
    spans.sort()
    pos = 0
    for begin, end in spans:
        if begin != pos:
            raise ValueError(f"{path}: data is not contiguous at byte {begin}")
        pos = end
    if pos != len(data):
        raise ValueError(f"{path}: {len(data) - pos} trailing bytes")
    return tensors, metadata


def load_checkpoint(d):
    """Return (config dict, {name: tensor}) of a HF checkpoint directory (sharded or not)."""
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    index = os.path.join(d, "model.safetensors.index.json")
    tensors = {}
    if os.path.exists(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        for file in sorted(set(weight_map.values())):
            part, _ = read_safetensors(os.path.join(d, file))
            for name, t in part.items():
                if weight_map.get(name) != file:
                    raise ValueError(f"{file}: {name} is not mapped to this file")
                tensors[name] = t
        missing = set(weight_map) - set(tensors)
        if missing:
            raise ValueError(f"index names tensors not in any shard: {sorted(missing)[:3]}")
    else:
        tensors, _ = read_safetensors(os.path.join(d, "model.safetensors"))
    return cfg, tensors


def split_shards(order, tensors, shards):
    """Cut `order` into `shards` non-empty runs of about equal byte size."""
    n = len(order)
    if not 1 <= shards <= n:
        raise SystemExit(f"--shards {shards}: need 1 to {n} (the number of tensors)")
    cum = [0]
    for name in order:
        cum.append(cum[-1] + tensors[name].numel() * tensors[name].element_size())
    bounds = [0]
    for j in range(1, shards):
        b = next((i for i in range(1, n) if cum[i] * shards >= j * cum[n]), n)
        bounds.append(min(max(b, bounds[-1] + 1), n - (shards - j)))
    bounds.append(n)
    return [order[bounds[k]:bounds[k + 1]] for k in range(shards)]


def start_checkpoint_dir(d, cfg):
    """Create d, write config.json and remove the weight files of an earlier checkpoint there."""
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    for old in os.listdir(d):
        if old.startswith("model") and (old.endswith(".safetensors") or old.endswith(".index.json")):
            os.remove(os.path.join(d, old))


def save_checkpoint(d, cfg, tensors, groups=None):
    """Write config.json and the weights; groups (lists of names) > 1 means sharded files."""
    start_checkpoint_dir(d, cfg)
    if not groups or len(groups) == 1:
        write_safetensors(os.path.join(d, "model.safetensors"), tensors, {"format": "pt"})
        return
    weight_map, total = {}, 0
    for k, names in enumerate(groups):
        file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(os.path.join(d, file), {n: tensors[n] for n in names}, {"format": "pt"})
        weight_map.update({n: file for n in names})
        total += sum(tensors[n].numel() * tensors[n].element_size() for n in names)
    with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
        f.write("\n")


def stream_checkpoint(d, cfg, order, shapes, dtype, shards, draw):
    """save_checkpoint's files without holding the tensors: the headers come from the shapes,
    then draw(name, shape) is called in `order` and each tensor is written at its offset."""
    start_checkpoint_dir(d, cfg)
    # Meta tensors know their sizes without memory, so split_shards cuts them as it cuts real ones.
    meta = {n: torch.empty(shapes[n], dtype=DTYPES[dtype], device="meta") for n in order}
    groups = split_shards(order, meta, shards)
    files = ["model.safetensors"] if len(groups) == 1 else \
        [f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors" for k in range(len(groups))]
    where, handles, total = {}, [], 0
    try:
        for file, names in zip(files, groups):
            header, offset = {"__metadata__": {"format": "pt"}}, 0
            for name in sorted(names):
                size = meta[name].numel() * meta[name].element_size()
                header[name] = {"dtype": dtype, "shape": list(shapes[name]), "data_offsets": [offset, offset + size]}
                offset += size
            text = json.dumps(header, separators=(",", ":")).encode()
            text += b" " * (-len(text) % 8)
            f = open(os.path.join(d, file), "wb")
            handles.append(f)
            f.write(struct.pack("<Q", len(text)))
            f.write(text)
            f.truncate(8 + len(text) + offset)
            for name in names:
                where[name] = (f, 8 + len(text) + header[name]["data_offsets"][0])
            total += offset
        for name in order:
            f, at = where[name]
            f.seek(at)
            f.write(tensor_bytes(draw(name, shapes[name])))
    finally:
        for f in handles:
            f.close()
    if len(groups) > 1:
        weight_map = {n: file for file, names in zip(files, groups) for n in names}
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, f, indent=2)
            f.write("\n")


# ---------------------------------------------------------------- make
def state_dict_shapes(a, head_dim):
    """(name, shape) in transformers' state-dict order."""
    H, D = a.hidden, head_dim
    out = [("model.embed_tokens.weight", [a.vocab, H])]
    for n in range(a.layers):
        p = f"model.layers.{n}."
        for proj, rows in (("q", a.heads * D), ("k", a.kv_heads * D), ("v", a.kv_heads * D)):
            out.append((p + f"self_attn.{proj}_proj.weight", [rows, H]))
            if a.arch == "qwen2":
                out.append((p + f"self_attn.{proj}_proj.bias", [rows]))
        out += [(p + "self_attn.o_proj.weight", [H, a.heads * D]),
                (p + "mlp.gate_proj.weight", [a.intermediate, H]),
                (p + "mlp.up_proj.weight", [a.intermediate, H]),
                (p + "mlp.down_proj.weight", [H, a.intermediate]),
                (p + "input_layernorm.weight", [H]),
                (p + "post_attention_layernorm.weight", [H])]
    out.append(("model.norm.weight", [H]))
    if not a.tie:
        out.append(("lm_head.weight", [a.vocab, H]))
    return out


def write_tokenizer_files(d, model_path):
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor(model_file=model_path)
    shutil.copyfile(model_path, os.path.join(d, "tokenizer.model"))
    special = {"bos_token": sp.id_to_piece(sp.bos_id()), "eos_token": sp.id_to_piece(sp.eos_id()),
               "unk_token": sp.id_to_piece(sp.unk_id())}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "legacy": True,
                   "model_max_length": 1000000000000000019884624838656,
                   "tokenizer_class": "LlamaTokenizer", "clean_up_tokenization_spaces": False,
                   **special}, f, indent=2)
    with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
        json.dump(special, f, indent=2)
    return sp


def cmd_make(a):
    arch, theta, eps = ARCHS[a.arch]
    if a.heads % a.kv_heads:
        raise SystemExit("--heads must be a multiple of --kv-heads")
    if a.head_dim is None and a.hidden % a.heads:
        raise SystemExit("--hidden must be a multiple of --heads (or give --head-dim)")
    head_dim = a.head_dim or a.hidden // a.heads
    if head_dim % 2:
        raise SystemExit("the head dimension must be even for rotary embeddings")
    if a.sliding_window is not None and a.arch != "mistral":
        raise SystemExit("--sliding-window is for --arch mistral only")
    os.makedirs(a.out, exist_ok=True)
    bos, eos = 1, 2
    if a.tokenizer_model:
        sp = write_tokenizer_files(a.out, a.tokenizer_model)
        if sp.get_piece_size() > a.vocab:
            raise SystemExit(f"--vocab {a.vocab} is smaller than the tokenizer's {sp.get_piece_size()} pieces")
        bos, eos = sp.bos_id(), sp.eos_id()
    cfg = {"architectures": [arch], "model_type": a.arch, "hidden_size": a.hidden,
           "intermediate_size": a.intermediate, "num_hidden_layers": a.layers,
           "num_attention_heads": a.heads, "num_key_value_heads": a.kv_heads,
           "rms_norm_eps": a.rms_eps if a.rms_eps is not None else eps,
           "rope_theta": a.rope_theta if a.rope_theta is not None else theta,
           "rope_scaling": None, "vocab_size": a.vocab, "tie_word_embeddings": bool(a.tie),
           "bos_token_id": bos, "eos_token_id": eos, "max_position_embeddings": a.max_pos,
           "torch_dtype": TORCH_DTYPE_NAME[a.dtype], "hidden_act": "silu",
           "initializer_range": a.std, "attention_dropout": 0.0, "use_cache": True,
           "transformers_version": "4.44.0"}
    if a.head_dim is not None:
        cfg["head_dim"] = a.head_dim
    if a.arch == "llama":
        cfg.update(attention_bias=False, mlp_bias=False, pretraining_tp=1)
    elif a.arch == "mistral":
        cfg["sliding_window"] = a.sliding_window
    else:
        cfg.update(use_sliding_window=False, sliding_window=4096, max_window_layers=a.layers)
    gen = torch.Generator().manual_seed(a.seed)
    if a.stream:
        def draw(name, shape):
            t = torch.randn(shape, generator=gen, dtype=torch.float32)
            t = 1.0 + 0.05 * t if name.endswith("norm.weight") else a.std * t
            return t.to(DTYPES[a.dtype])
        shapes = dict(state_dict_shapes(a, head_dim))
        stream_checkpoint(a.out, cfg, list(shapes), shapes, a.dtype, a.shards, draw)
        return
    tensors, order = {}, []
    for name, shape in state_dict_shapes(a, head_dim):
        t = torch.randn(shape, generator=gen, dtype=torch.float32)
        t = 1.0 + 0.05 * t if name.endswith("norm.weight") else a.std * t
        tensors[name] = t.to(DTYPES[a.dtype])
        order.append(name)
    save_checkpoint(a.out, cfg, tensors, split_shards(order, tensors, a.shards))


def cmd_convert(a):
    src = getattr(a, "in")
    cfg, tensors = load_checkpoint(src)
    os.makedirs(a.out, exist_ok=True)
    for extra in os.listdir(src):
        if extra.startswith("tokenizer") or extra == "special_tokens_map.json":
            shutil.copyfile(os.path.join(src, extra), os.path.join(a.out, extra))
    cfg["torch_dtype"] = TORCH_DTYPE_NAME[a.dtype]
    out = {n: t.to(DTYPES[a.dtype]) for n, t in tensors.items()}
    groups = None
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.exists(index):  # keep the source's split into files
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files = sorted(set(weight_map.values()))
        groups = [[n for n in sorted(weight_map) if weight_map[n] == file] for file in files]
    save_checkpoint(a.out, cfg, out, groups)


def cmd_train_tokenizer(a):
    import io
    import sentencepiece as spm
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        input=a.text, model_writer=model, vocab_size=a.vocab, model_type=a.model_type,
        byte_fallback=True, character_coverage=1.0, split_digits=True,
        normalization_rule_name="identity", remove_extra_whitespaces=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=1, minloglevel=2)
    with open(a.out, "wb") as f:
        f.write(model.getvalue())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make")
    m.add_argument("--out", required=True)
    m.add_argument("--arch", choices=sorted(ARCHS), required=True)
    for flag in ("--hidden", "--layers", "--heads", "--kv-heads", "--intermediate", "--vocab", "--seed"):
        m.add_argument(flag, type=int, required=True)
    m.add_argument("--tie", type=int, choices=(0, 1), required=True)
    m.add_argument("--dtype", choices=("F32", "F16", "BF16"), required=True)
    m.add_argument("--shards", type=int, default=1)
    m.add_argument("--rope-theta", type=float)
    m.add_argument("--rms-eps", type=float)
    m.add_argument("--head-dim", type=int)
    m.add_argument("--max-pos", type=int, default=2048)
    m.add_argument("--sliding-window", type=int)
    m.add_argument("--std", type=float, default=0.02)
    m.add_argument("--tokenizer-model")
    m.add_argument("--stream", action="store_true",
                   help="write each tensor as it is drawn (memory: one tensor; the same bytes)")
    c = sub.add_parser("convert")
    c.add_argument("--in", required=True)
    c.add_argument("--out", required=True)
    c.add_argument("--dtype", choices=("F32", "F16", "BF16"), required=True)
    t = sub.add_parser("train-tokenizer")
    t.add_argument("--text", required=True)
    t.add_argument("--vocab", type=int, required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    a = p.parse_args(argv)
    {"make": cmd_make, "convert": cmd_convert, "train-tokenizer": cmd_train_tokenizer}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
