"""What the non-finite weight check costs validation, on the example adapters, side by side in one run.

Validation reads an adapter's config and safetensors header and checks them
against the model's modules (here SmolLM2's, from its GGUF header: what the
llama.cpp backend checks before converting); since issue 15 it also scans
every float tensor for NaN/Inf (``adaptrix.adapters.validate.nonfinite_tensors``:
a memory map and ``numpy.isfinite`` per tensor). Rows, interleaved round-robin
so load drift hits all alike, medians of --repeat rounds, files in the page
cache (as on every load after the first):

- read: ``read_adapter_info`` (config + header)
- validate, no scan: ``validate()`` with the scan switched off (the baseline)
- validate: ``validate()`` as shipped
- scan: ``nonfinite_tensors()`` alone
- load: ``load_adapter`` + ``unload_adapter`` on ``Engine(backend="llamacpp")`` with the GGUF LoRA already
  cached (what a user waits for; validation, and so the scan, runs once)

    python bench/bench_validate.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "core"))
sys.path.insert(0, str(ROOT / "plugins" / "adaptrix-llamacpp"))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()

    from machine import cpu_name

    from adaptrix import Engine
    from adaptrix.adapters import validate as v
    from adaptrix.adapters.info import read_adapter_info
    from adaptrix.models.default_model import default_model_path
    from adaptrix_llamacpp.gguf_index import module_index, read_gguf_model

    index = module_index(read_gguf_model(default_model_path()))
    engine = Engine(backend="llamacpp", progress=False, threads=1)
    engine.initialize()
    real_scan = v.nonfinite_tensors

    def no_scan(info, state=None):
        return []

    print(f"# {cpu_name()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f}, {args.repeat} rounds")
    print(f"{'adapter':16} {'MB':>5} {'tensors':>7} {'read ms':>8} {'validate, no scan ms':>21} "
          f"{'validate ms':>12} {'scan ms':>8} {'load ms':>8} {'scan / validate':>15} {'scan / load':>11}")
    for name in ("math_specialist", "pirate_style"):
        folder = ROOT / "examples" / "adapters" / name
        info = read_adapter_info(folder, name)
        assert real_scan(info) == []
        engine.load_adapter(str(folder))  # converts once: the rounds below reuse the cached GGUF LoRA
        engine.unload_adapter(name)
        rows: dict[str, list[float]] = {"read": [], "base": [], "validate": [], "scan": [], "load": []}
        for _ in range(args.repeat):
            for row in rows:
                t = time.perf_counter()
                if row == "read":
                    read_adapter_info(folder, name)
                elif row == "scan":
                    real_scan(info)
                elif row == "load":
                    engine.load_adapter(str(folder))
                    engine.unload_adapter(name)
                else:
                    v.nonfinite_tensors = no_scan if row == "base" else real_scan
                    report = v.validate(info, index, model_family="llama", model_id="SmolLM2")
                    assert report.ok, report.errors
                rows[row].append(time.perf_counter() - t)
        v.nonfinite_tensors = real_scan
        med = {k: statistics.median(x) * 1e3 for k, x in rows.items()}
        mb = Path(info.weights_file).stat().st_size / 2**20
        print(f"{name:16} {mb:5.1f} {len(info.tensors):7d} {med['read']:8.2f} {med['base']:21.2f} "
              f"{med['validate']:12.2f} {med['scan']:8.2f} {med['load']:8.2f} {med['scan'] / med['validate']:15.2f} "
              f"{med['scan'] / med['load']:11.3f}")
    engine.cleanup()
    print(f"# load average at the end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
