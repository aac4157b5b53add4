#!/usr/bin/env python3
"""An independent reader of a PEFT LoRA export (standard library only).

Usage: read_peft.py DIR
Parses DIR/adapter_model.safetensors from the format's definition (u64 little-endian header
length, JSON header, little-endian data), checks that the tensors cover the data exactly and
that adapter_config.json describes them (LORA, r, the lora_A/lora_B shapes, target modules),
and prints JSON: the config, the metadata, and per tensor its shape, count, sum and first values.
Exits 1 with a message on any inconsistency.
"""
import json
import math
import struct
import sys
from array import array
from pathlib import Path


def fail(message):
    print(f"read_peft: {message}", file=sys.stderr)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: read_peft.py DIR")
    root = Path(sys.argv[1])
    config = json.loads((root / "adapter_config.json").read_text())
    blob = (root / "adapter_model.safetensors").read_bytes()
    (header_len,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8:8 + header_len].decode("utf-8"))
    data = blob[8 + header_len:]
    metadata = header.pop("__metadata__", {})

    if config.get("peft_type") != "LORA":
        fail(f"peft_type is {config.get('peft_type')!r}")
    r = config["r"]
    spans = []
    tensors = {}
    for name, entry in header.items():
        if entry["dtype"] != "F32":
            fail(f"{name}: dtype {entry['dtype']}")
        begin, end = entry["data_offsets"]
        shape = entry["shape"]
        count = math.prod(shape)
        if end - begin != 4 * count:
            fail(f"{name}: {end - begin} bytes for shape {shape}")
        values = array("f")
        values.frombytes(data[begin:end])
        if sys.byteorder != "little":
            values.byteswap()
        spans.append((begin, end))
        if not name.startswith("base_model.model."):
            fail(f"{name}: missing the base_model.model. prefix")
        if name.endswith(".lora_A.weight") and shape[0] != r:
            fail(f"{name}: lora_A must be r x in, got {shape} with r = {r}")
        if name.endswith(".lora_B.weight") and shape[1] != r:
            fail(f"{name}: lora_B must be out x r, got {shape} with r = {r}")
        tensors[name] = {"shape": shape, "count": count, "sum": math.fsum(values), "first": list(values[:4])}
    position = 0
    for begin, end in sorted(spans):
        if begin != position:
            fail(f"gap or overlap at byte {position}")
        position = end
    if position != len(data):
        fail(f"{len(data) - position} data bytes belong to no tensor")
    for module in config["target_modules"]:
        for factor in ("lora_A", "lora_B"):
            key = f"base_model.model.{module}.{factor}.weight"
            if key not in tensors:
                fail(f"target module {module} has no {key}")
    print(json.dumps({"config": config, "metadata": metadata, "tensors": tensors}))


if __name__ == "__main__":
    main()
