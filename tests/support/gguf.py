"""Hand-written GGUF and safetensors files (no torch, no gguf package) and a fake GGUF converter."""

from __future__ import annotations

import json
import shutil
import struct


def write_gguf(path, arch="llama", name="tiny", payload=b""):
    """A minimal valid GGUF header (v3, no tensors) with a few metadata keys."""

    def s(text):
        data = text.encode()
        return struct.pack("<Q", len(data)) + data

    kv = [(b"general.architecture", s(arch)), (b"general.name", s(name))]
    body = b"".join(struct.pack("<Q", len(k)) + k + struct.pack("<I", 8) + v for k, v in kv)
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + body + payload)
    return path


def write_safetensors(path, n=4):
    """A valid safetensors file with one float32 tensor."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [n], "data_offsets": [0, 4 * n]}}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\x00" * (4 * n))


class FakeConverter:
    """Stands in for transformers' GGUF conversion: writes a config (and copies ``source``'s files)."""

    def __init__(self, source=None, fail=False):
        self.calls = 0
        self.source = source
        self.fail = fail

    def __call__(self, path, out_dir, progress):
        self.calls += 1
        (out_dir / "config.json").write_text(json.dumps({"model_type": "llama", "from": path.name}))
        write_safetensors(out_dir / "model.safetensors")
        if self.fail:
            raise KeyboardInterrupt  # a crash (or Ctrl-C) in the middle of writing
        if self.source:
            for f in self.source.iterdir():
                shutil.copy(f, out_dir / f.name)
