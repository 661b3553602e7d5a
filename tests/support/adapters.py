"""Real, trained-looking LoRA adapters for tests: peft on a tiny model, random non-zero weights."""

from __future__ import annotations

import json
from pathlib import Path


def make_adapter(
    model_dir: Path,
    out_dir: Path,
    *,
    seed: int = 1,
    r: int = 4,
    alpha: int = 8,
    target_modules=("q_proj", "v_proj"),
    modules_to_save=None,
    scale: float = 0.3,
    base_model: str | None = None,
    meta: dict | None = None,
    **lora_kwargs,
) -> Path:
    """Save a LoRA adapter for the model in ``model_dir`` into ``out_dir`` and return it.

    Every LoRA weight is drawn from N(0, scale) so the adapter visibly changes
    the output. ``base_model`` overrides ``base_model_name_or_path``;
    ``meta`` is written as adaptrix.json.
    """
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    cfg = LoraConfig(
        r=r,
        lora_alpha=alpha,
        target_modules=list(target_modules) if not isinstance(target_modules, str) else target_modules,
        modules_to_save=modules_to_save,
        task_type="CAUSAL_LM",
        **lora_kwargs,
    )
    peft_model = get_peft_model(model, cfg)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name or "modules_to_save" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * scale)
    out_dir = Path(out_dir)
    peft_model.save_pretrained(out_dir)
    if base_model is not None:
        cfg_path = out_dir / "adapter_config.json"
        data = json.loads(cfg_path.read_text())
        data["base_model_name_or_path"] = base_model
        cfg_path.write_text(json.dumps(data, indent=2))
    if meta is not None:
        (out_dir / "adaptrix.json").write_text(json.dumps(meta))
    return out_dir


def edit_config(adapter_dir: Path, **changes) -> None:
    """Change keys of an adapter's adapter_config.json in place."""
    path = Path(adapter_dir) / "adapter_config.json"
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data, indent=2))


def build_variant(model_dir: Path, out_dir: Path, seed: int = 0, **overrides) -> Path:
    """Save a random model like the one in ``model_dir`` with config keys changed (hidden size, vocab...)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(model_dir)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg)
    model.save_pretrained(out_dir)
    return Path(out_dir)


def open_engine(model_dir: Path, adapters_dir: Path):
    """Yield an initialized CPU Engine on ``model_dir`` with ``adapters_dir``, cleaned up afterwards (a fixture body)."""
    from adaptrix import Engine

    eng = Engine(model_id=str(model_dir), device="cpu", adapters_dir=str(adapters_dir), progress=False)
    eng.initialize()
    try:
        yield eng
    finally:
        eng.cleanup()
