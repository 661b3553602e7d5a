"""The LoRA training loop: load through the family plugin, train, checkpoint, save.

The saved adapter is a plain PEFT folder (``adapter_config.json`` +
``adapter_model.safetensors``) plus ``adaptrix.json`` describing the run. It
is written beside ``output`` and its files moved in, ``adapter_config.json``
last (:func:`adaptrix.storage.files.replace_files`): a crash or a full disk leaves
the previous adapter or none, never half of one, and nothing else in
``output`` is touched (peft's ``README.md`` is added only where there is none).
A full disk or a read-only output is a :class:`~adaptrix.errors.StorageError`
naming the folder.
``output/checkpoint/`` holds the adapter, optimizer, step and RNG state so an
interrupted run continues with ``resume=True``. The checkpoint is safetensors
(tensors) plus JSON (everything else): loading it runs no pickle code.

The model comes from :func:`adaptrix.models.source.resolve_source`; a ``.gguf`` trains
on its cached safetensors conversion (converted once, not on every run).
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import attrs

from adaptrix import __version__
from adaptrix.adapters.targets import resolve_target_modules
from adaptrix.errors import AdapterError, TrainingError
from adaptrix.generation.defaults import TASK_PRESETS
from adaptrix.models.modelconfig import read_json_object
from adaptrix.models.source import resolve_source
from adaptrix.plugins import family_chat
from adaptrix.plugins.detection import detect
from adaptrix.plugins.host import get_host
from adaptrix.storage.files import remove_stale, replace_files, replace_folder
from adaptrix.training.data import collate, encode_all, file_sha256, load_jsonl
from adaptrix.types import LoadOptions

CHECKPOINT = "checkpoint"
#: Step, losses, options, optimizer hyper-parameters and Python RNG state (JSON).
STATE_FILE = "trainer_state.json"
#: Optimizer moments and the torch RNG state (safetensors).
TENSORS_FILE = "trainer_state.safetensors"
#: The pickle checkpoint of adaptrix before 0.1.1; never loaded (it can run code).
LEGACY_STATE_FILE = "trainer_state.pt"
CHECKPOINT_FORMAT = 2


def _opt_tuple(value):
    return None if value is None else tuple(value)


@attrs.frozen
class TrainConfig:
    """Everything a run needs. ``model=None`` trains on the embedded default model."""

    data: str = attrs.field(converter=str)
    output: str = attrs.field(converter=str)
    model: str | None = None
    rank: int = 8
    #: LoRA alpha; ``None`` means ``2 * rank``.
    alpha: float | None = None
    dropout: float = 0.0
    #: LoRA target leaf names; ``None`` asks the family plugin's ``target_modules`` hook.
    targets: tuple[str, ...] | None = attrs.field(default=None, converter=_opt_tuple)
    epochs: int = 1
    lr: float = 1e-3
    #: Stop after this many optimizer steps (overrides ``epochs``).
    max_steps: int | None = None
    batch_size: int = 16
    seed: int = 0
    resume: bool = False
    save_every: int = 50
    #: Longest sample allowed, in tokens; ``None`` means the model's context length.
    max_length: int | None = None
    #: Warm-up steps; ``None`` means 5% of the run (at least 1, at most 20).
    warmup_steps: int | None = None
    description: str = ""
    task_type: str = "general"
    device: str = "cpu"
    threads: int | None = None
    trust_remote_code: bool = False
    progress: bool = True
    #: Replace an adapter already in ``output`` (otherwise refused).
    overwrite: bool = False

    def lora_alpha(self) -> float:
        return float(self.alpha) if self.alpha is not None else 2.0 * self.rank


@attrs.frozen
class TrainResult:
    """What a finished run produced."""

    output: Path
    family: str
    base_model: str
    targets: tuple[str, ...]
    steps: int
    first_loss: float
    final_loss: float
    losses: tuple[float, ...]
    seconds: float
    seconds_per_step: float
    resumed_from: int | None = None
    #: Set when peft changed the targets (MoE models: v4 expert names -> fused v5 parameters).
    peft_remap: dict | None = None


def _peft_remap(peft_config, targets: list[str]) -> dict | None:
    """What peft made of ``targets``, when it is not the same (else ``None``).

    peft 0.21 on transformers 5 maps ``gate_proj``/``up_proj``/``down_proj`` of
    some MoE model types (deepseek_v3, ...) onto the fused expert parameters,
    dropping those names from ``target_modules``.
    """
    modules = sorted(peft_config.target_modules or [])
    params = sorted(peft_config.target_parameters or [])
    if set(modules) == set(targets) and not params:
        return None
    dropped = sorted(set(targets) - set(modules))
    return {
        "target_modules": modules,
        "target_parameters": params,
        "dropped": dropped,
        "note": f"peft {_peft_version()} maps {', '.join(dropped) or '(nothing)'} of this mixture-of-experts "
        f"model onto the fused expert parameters {', '.join(params) or '(none)'}, which adaptrix does not load; "
        f"training {', '.join(modules)} only (pass --targets to choose others)",
    }


def attrs_evolve_lora(lora, targets: list[str]):
    """A copy of LoraConfig ``lora`` with other target modules."""
    import dataclasses

    return dataclasses.replace(lora, target_modules=list(targets), target_parameters=None, rank_pattern={},
                               alpha_pattern={})


def _check_config(cfg: TrainConfig) -> None:
    checks = [
        ("rank", cfg.rank, isinstance(cfg.rank, int) and cfg.rank > 0),
        ("epochs", cfg.epochs, isinstance(cfg.epochs, int) and cfg.epochs > 0),
        ("batch_size", cfg.batch_size, isinstance(cfg.batch_size, int) and cfg.batch_size > 0),
        ("lr", cfg.lr, cfg.lr > 0),
        ("max_steps", cfg.max_steps, cfg.max_steps is None or cfg.max_steps > 0),
        ("save_every", cfg.save_every, cfg.save_every > 0),
        ("dropout", cfg.dropout, 0 <= cfg.dropout < 1),
        ("threads", cfg.threads, cfg.threads is None or (_is_int(cfg.threads) and cfg.threads > 0)),
    ]
    for name, value, ok in checks:
        if not ok:
            raise TrainingError(
                f"option {name}={value!r} is invalid; it must be positive (dropout in [0, 1), threads a whole "
                "number of CPU threads)"
            )

    if cfg.task_type not in TASK_PRESETS:
        raise TrainingError(
            f"option task_type={cfg.task_type!r} is not a task the engine knows (it picks the generation "
            f"preset when the adapter is active); choose one of {', '.join(TASK_PRESETS)}"
        )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_output(cfg: TrainConfig, has_checkpoint: bool) -> Path:
    """Refuse, before any work, an output that is a file, cannot be created, or holds another adapter."""
    output = Path(cfg.output).expanduser()
    if output.exists() and not output.is_dir():
        raise TrainingError(f"--output {output} is a file; pass a folder to write the adapter into")
    ckpt = output / CHECKPOINT
    if ckpt.exists() and not ((ckpt / STATE_FILE).is_file() or (ckpt / LEGACY_STATE_FILE).is_file()):
        raise TrainingError(
            f"--output {output} holds {ckpt}, which is not an adaptrix training checkpoint; adaptrix keeps its "
            f"checkpoint there and would replace it: move it, or choose another --output"
        )
    if output.is_dir() and (output / "adapter_config.json").exists() and not cfg.overwrite:
        if not (cfg.resume and has_checkpoint):  # resuming continues the run that wrote it
            raise TrainingError(
                f"--output {output} already holds an adapter; pass --overwrite to replace it (overwrite=True), "
                "or choose another --output"
            )
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TrainingError(f"cannot create --output {output}: {exc.strerror or exc}; choose a writable folder") from exc
    if not os.access(output, os.W_OK):
        raise TrainingError(f"--output {output} is not writable; choose a writable folder")
    return output


def load_for_training(cfg: TrainConfig):
    """Resolve the model (:func:`adaptrix.models.source.resolve_source`) and load it through its plugin, in float32.

    Returns ``(source, context_length, loaded)``.
    """
    host = get_host()
    src = resolve_source(cfg.model, host=host).ensure_folder(progress=cfg.progress)
    detection = detect(src.model_id, config=src.config, source=src.config_source, host=host)
    options = LoadOptions(
        device=cfg.device, dtype="float32", trust_remote_code=cfg.trust_remote_code, revision=src.load_revision,
        config=src.config, config_source=src.config_source,
    )
    loaded, _ = host.call_family("load_model", src.family, model_id=src.path, options=options)
    if loaded is None:
        raise TrainingError(f"the {src.family!r} plugin did not load {src.model_id}")
    # samples are rendered as the engine renders prompts: with the family's template variables
    loaded = attrs.evolve(loaded, chat=family_chat.ask(host, src.family, src.config, loaded.tokenizer))
    return src, detection.context_length, loaded


def resolve_targets(model, family: str, config: dict | None, asked: tuple[str, ...] | None) -> list[str]:
    """Targets asked for, else the family plugin's hook; ``all-linear`` expanded to leaf names."""
    targets = list(asked) if asked else None
    if targets is None:
        targets, _ = get_host().call_family("target_modules", family, config=config)
        if not targets:
            raise TrainingError(f"the {family!r} plugin names no LoRA target modules; pass --targets NAME ...")
    try:
        return resolve_target_modules(model, targets)
    except AdapterError as exc:
        raise TrainingError(f"--targets: {exc}") from exc


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    """Linear warm-up, then cosine decay to 10% of ``peak``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def _batch_indices(step: int, n: int, batch_size: int, seed: int) -> list[int]:
    per_epoch = math.ceil(n / batch_size)
    epoch, index = divmod(step, per_epoch)
    order = list(range(n))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order[index * batch_size:(index + 1) * batch_size]


def train(cfg: TrainConfig) -> TrainResult:
    """Train a LoRA adapter as ``cfg`` says and save it to ``cfg.output``.

    ``cfg.threads`` applies for the run only; the previous torch thread count is restored.
    """
    import torch

    _check_config(cfg)
    before = torch.get_num_threads()
    try:
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        return _train(cfg)
    finally:
        torch.set_num_threads(before)


def _train(cfg: TrainConfig) -> TrainResult:
    import torch
    from peft import LoraConfig, get_peft_model, set_peft_model_state_dict
    from safetensors.torch import load_file
    from tqdm.auto import tqdm


    ckpt = Path(cfg.output).expanduser() / CHECKPOINT
    remove_stale(ckpt.parent.parent, name=ckpt.parent.name)  # what a killed run left: beside output,
    remove_stale(ckpt.parent, name=CHECKPOINT)  # and beside its checkpoint
    has_checkpoint = (ckpt / STATE_FILE).is_file() or (ckpt / LEGACY_STATE_FILE).is_file()
    samples = load_jsonl(cfg.data)
    output = check_output(cfg, has_checkpoint)
    data_sha = file_sha256(cfg.data)
    state = None
    if has_checkpoint and cfg.resume:
        state = load_checkpoint_state(ckpt)
        _check_resume(state, cfg, data_sha, ckpt)
    elif has_checkpoint and not cfg.overwrite:
        raise TrainingError(
            f"{ckpt} holds a checkpoint of an earlier run; pass --resume to continue it, --overwrite to start "
            f"over, or choose another --output"
        )
    elif cfg.resume:
        print(f"adaptrix train: no checkpoint in {ckpt}; starting from step 0")

    src, context_length, loaded = load_for_training(cfg)
    if state is not None and state.get("base_model") != _base_identity(src):
        raise TrainingError(
            f"{ckpt}: cannot resume, the checkpoint was trained on {state.get('base_model')!r} but this run "
            f"loads {_base_identity(src)!r}; resume with the same --model, or delete the checkpoint to start over"
        )
    base_id = src.base_model_id
    tokenizer, model = loaded.tokenizer, loaded.model
    max_length = cfg.max_length or context_length
    encoded = encode_all(tokenizer, samples, max_length, cfg.data, loaded.chat_template_kwargs)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0

    targets = resolve_targets(model, src.family, loaded.config, cfg.targets)
    torch.manual_seed(cfg.seed)
    lora = LoraConfig(
        r=cfg.rank, lora_alpha=cfg.lora_alpha(), lora_dropout=cfg.dropout, target_modules=targets,
        bias="none", task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    remapped = _peft_remap(model.peft_config["default"], targets)
    if remapped:
        # peft would put LoRA on fused expert parameters, which adaptrix's adapter manager does not
        # load and which peft itself re-derives on every load: train the Linear targets it kept.
        print(f"adaptrix train: note: {remapped['note']}")
        targets = remapped["target_modules"]
        model = model.unload()
        torch.manual_seed(cfg.seed)
        model = get_peft_model(model, attrs_evolve_lora(lora, targets))
    model.peft_config["default"].base_model_name_or_path = base_id
    if state is not None and sorted(state["targets"]) != sorted(targets):
        raise TrainingError(
            f"{ckpt}: checkpoint targets {state['targets']} differ from this run's {targets}; "
            "resume with the same --targets or start over"
        )
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)

    per_epoch = math.ceil(len(encoded) / cfg.batch_size)
    total = cfg.max_steps or cfg.epochs * per_epoch
    warmup = cfg.warmup_steps if cfg.warmup_steps is not None else min(20, max(1, total // 20))
    start, losses, elapsed = 0, [], 0.0
    if state is not None:
        set_peft_model_state_dict(model, load_file(str(ckpt / "adapter_model.safetensors")))
        optimizer.load_state_dict(state["optimizer"])
        start, losses, elapsed = state["step"], list(state["losses"]), state["seconds"]
        torch.set_rng_state(state["torch_rng"])
        random.setstate(state["python_rng"])
        if start >= total:
            print(f"adaptrix train: checkpoint is at step {start}, the run has {total} steps; nothing to train")
    if state is None and cfg.overwrite and ckpt.exists():
        shutil.rmtree(ckpt)  # --overwrite starts over: the old run's checkpoint must not be resumed later

    model.train()
    began = time.monotonic()
    bar = tqdm(total=total, initial=start, desc=f"train {output.name}", unit="step", disable=not cfg.progress,
               dynamic_ncols=True)
    for step in range(start, total):
        batch = collate([encoded[i] for i in _batch_indices(step, len(encoded), cfg.batch_size, cfg.seed)], pad_id)
        lr = lr_at(step, total, cfg.lr, warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss = answer_loss(model, batch)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at step {step + 1}; lower --lr (now {cfg.lr})")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(float(loss.item()))
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.4f}", lr=f"{lr:.2e}")
        done = step + 1
        if done % 10 == 0 or done == total:
            bar.write(f"step {done}/{total} loss {losses[-1]:.4f} avg10 {_tail_mean(losses):.4f} lr {lr:.2e}")
        if done % cfg.save_every == 0 and done < total:
            _save_checkpoint(model, optimizer, ckpt, done, total, losses, elapsed + time.monotonic() - began,
                             data_sha, targets, cfg, src)
    bar.close()
    seconds = elapsed + time.monotonic() - began
    model.eval()
    _save_checkpoint(model, optimizer, ckpt, max(start, total), total, losses, seconds, data_sha, targets, cfg,
                     src)
    run_steps = max(1, total - start)
    result = TrainResult(
        output=output,
        family=src.family,
        base_model=base_id,
        targets=tuple(targets),
        steps=len(losses),
        first_loss=losses[0] if losses else float("nan"),
        final_loss=_tail_mean(losses),
        losses=tuple(losses),
        seconds=seconds,
        seconds_per_step=(time.monotonic() - began) / run_steps,
        resumed_from=state["step"] if state is not None else None,
        peft_remap=remapped,
    )
    with replace_files(output, last="adapter_config.json", remove=("adapter_model.safetensors", "adapter_model.bin"),
                       add_only=("README.md",), **_writing("write the adapter to --output")) as tmp:
        model.save_pretrained(str(tmp))
        write_metadata(output, cfg, result, src.model_id, len(samples), data_sha, into=tmp)
    return result


def _writing(doing: str) -> dict[str, str]:
    return {"doing": doing, "remedy": "choose an --output adaptrix can write",
            "full_remedy": "free some space, or choose an --output on a disk with room"}


def answer_loss(model, batch: dict):
    """Mean cross-entropy over the answer tokens, with logits computed for the answer positions only."""
    import torch

    keep = batch["answer_width"]
    inputs = {k: batch[k].to(model.device) for k in ("input_ids", "attention_mask", "position_ids")}
    try:
        logits = model(**inputs, logits_to_keep=keep).logits
    except TypeError:  # a model without logits_to_keep: full logits, same loss
        logits = model(**inputs).logits
    logits = logits[:, -keep:-1, :]
    labels = batch["labels"][:, -keep + 1:].to(logits.device)
    return torch.nn.functional.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), labels.reshape(-1), ignore_index=-100
    )


def _tail_mean(losses: list[float], n: int = 10) -> float:
    tail = losses[-n:]
    return sum(tail) / len(tail) if tail else float("nan")


def _peft_version() -> str:
    import peft

    return peft.__version__


def _check_resume(state: dict, cfg: TrainConfig, data_sha: str, ckpt: Path) -> None:
    for field, now in (("data_sha256", data_sha), ("rank", cfg.rank), ("batch_size", cfg.batch_size),
                       ("seed", cfg.seed), ("alpha", cfg.lora_alpha())):
        if state.get(field) != now:
            raise TrainingError(
                f"{ckpt}: cannot resume, checkpoint {field} is {state.get(field)!r} but this run has {now!r}; "
                "resume with the same data and options, or delete the checkpoint to start over"
            )


def _base_identity(src) -> str:
    """What a checkpoint records about its base model: the GGUF digest, else the id and its config's digest."""
    import hashlib

    if src.cache is not None:
        return f"gguf:{src.cache.sha256}"
    digest = hashlib.sha256(json.dumps(src.config, sort_keys=True, default=str).encode()).hexdigest()
    return f"{src.base_model_id}|config:{digest[:16]}"


def _save_checkpoint(model, optimizer, ckpt: Path, step, total, losses, seconds, data_sha, targets, cfg,
                     src) -> None:
    """Write the checkpoint to a temporary folder, then swap it in (a crash leaves the old one).

    Tensors (optimizer moments, torch RNG) go to safetensors, the rest to JSON: no pickle.
    """
    import torch
    from safetensors.torch import save_file

    with replace_folder(ckpt, **_writing("write the training checkpoint")) as tmp:
        model.save_pretrained(str(tmp))
        opt = optimizer.state_dict()
        tensors = {"torch_rng": torch.get_rng_state()}
        for pid, slots in opt["state"].items():
            for key, value in slots.items():
                if not isinstance(value, torch.Tensor):
                    raise TrainingError(f"optimizer state {key!r} is not a tensor; cannot checkpoint it safely")
                tensors[f"optimizer.{pid}.{key}"] = value.detach().cpu().contiguous()
        save_file(tensors, str(tmp / TENSORS_FILE))
        version, internal, gauss = random.getstate()
        state = {
            "format": CHECKPOINT_FORMAT, "step": step, "total": total, "losses": losses, "seconds": seconds,
            "param_groups": opt["param_groups"], "python_rng": [version, list(internal), gauss],
            "data_sha256": data_sha, "rank": cfg.rank, "alpha": cfg.lora_alpha(), "batch_size": cfg.batch_size,
            "seed": cfg.seed, "targets": list(targets), "base_model": _base_identity(src),
        }
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1), encoding="utf-8")
        (tmp / ".gitignore").write_text("# training checkpoint: large, not part of the adapter\n*\n")


def load_checkpoint_state(ckpt: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`_save_checkpoint` (JSON + safetensors; runs no code).

    Returns the JSON state with ``optimizer`` (a state dict) and ``torch_rng`` filled in.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not (ckpt / STATE_FILE).is_file() and (ckpt / LEGACY_STATE_FILE).is_file():
        raise TrainingError(
            f"{ckpt} is a checkpoint of an older adaptrix ({LEGACY_STATE_FILE}, a pickle that can run code, so "
            "it is not loaded); delete it (or pass --overwrite) to start over"
        )

    fix = "delete the checkpoint folder (or pass --overwrite) to start over"
    state = read_json_object(ckpt / STATE_FILE, error=TrainingError, fix=fix)
    try:
        tensors = load_file(str(ckpt / TENSORS_FILE))
    except (OSError, SafetensorError) as exc:
        raise TrainingError(f"cannot read {ckpt / TENSORS_FILE} ({exc}); {fix}") from exc
    try:
        if state.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"format {state.get('format')!r}, expected {CHECKPOINT_FORMAT}")
        slots: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith("optimizer."):
                _, pid, name = key.split(".", 2)
                slots.setdefault(int(pid), {})[name] = value
        version, internal, gauss = state["python_rng"]
        state["python_rng"] = (int(version), tuple(int(v) for v in internal), gauss)
        state["torch_rng"] = tensors["torch_rng"]
        state["optimizer"] = {"state": slots, "param_groups": state["param_groups"]}
        for key in ("step", "total"):
            if not _is_int(state[key]) or state[key] < 0:
                raise ValueError(f"{key} is {state[key]!r}")
        state["losses"] = [float(v) for v in state["losses"]]
        state["seconds"] = float(state["seconds"])
    except (KeyError, TypeError, ValueError) as exc:
        raise TrainingError(f"{ckpt / STATE_FILE}: not a valid adaptrix checkpoint ({type(exc).__name__}: {exc}); "
                            f"{fix}") from exc
    return state


def write_metadata(output: Path, cfg: TrainConfig, result: TrainResult, source: str, samples: int,
                   data_sha: str, into: Path | None = None) -> dict[str, Any]:
    """Write ``adaptrix.json`` of the adapter ``output`` (into the folder ``into``, by default ``output``); return it."""
    import peft
    import torch
    import transformers


    meta = {
        "name": output.name,
        "description": cfg.description or f"LoRA adapter trained on {Path(cfg.data).name}",
        "task_type": cfg.task_type,
        "base_model": result.base_model,
        "base_model_source": _display_path(source),
        "family": result.family,
        "format": "peft-lora",
        "rank": cfg.rank,
        "alpha": cfg.lora_alpha(),
        "dropout": cfg.dropout,
        "targets": list(result.targets),
        **({"peft_remap": result.peft_remap} if result.peft_remap else {}),
        "data": _display_path(cfg.data),
        "data_sha256": data_sha,
        "samples": samples,
        "steps": result.steps,
        "epochs": round(result.steps * cfg.batch_size / samples, 3),
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "seed": cfg.seed,
        "first_loss": round(result.first_loss, 5),
        "final_loss": round(result.final_loss, 5),
        "train_seconds": round(result.seconds, 1),
        "seconds_per_step": round(result.seconds_per_step, 3),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": {"adaptrix": __version__, "torch": torch.__version__,
                     "transformers": transformers.__version__, "peft": peft.__version__},
    }
    ((into or output) / "adaptrix.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return meta


def _display_path(path: str) -> str:
    """A path relative to the working directory when inside it, else shortened to site-packages/..."""
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        parts = p.resolve().parts
        if "site-packages" in parts:
            return str(Path(*parts[parts.index("site-packages") + 1:]))
        return str(p)
