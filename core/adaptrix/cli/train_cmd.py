"""``adaptrix train``: train a LoRA adapter on JSONL data (targets from the family plugin)."""

from __future__ import annotations

from adaptrix.backends.contract import REFERENCE
from adaptrix.cli.generate_cmd import add_backend_arg, backend_option
from adaptrix.cli.output import finite_float
from adaptrix.errors import BackendError
from adaptrix.training import TrainConfig, train


def register(sub) -> None:
    p = sub.add_parser(
        "train",
        help="train a LoRA adapter on chat or prompt/completion JSONL",
        description="Train a LoRA adapter. The loss covers only the answer tokens, formatted with the "
        "model's chat template. Target modules default to the family plugin's choice. The output is a "
        "standard PEFT folder plus adaptrix.json; output/checkpoint/ lets --resume continue a run.",
    )
    p.add_argument("--model", help="Hub id, local folder or .gguf file (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", required=True, help='JSONL: {"messages": [...]} or {"prompt": ..., "completion": ...}')
    p.add_argument("--output", required=True, help="adapter folder to write (e.g. adapters/NAME)")
    p.add_argument("--rank", type=int, default=8, help="LoRA rank (default 8)")
    p.add_argument("--alpha", type=finite_float, default=None, help="LoRA alpha (default 2 x rank)")
    p.add_argument("--dropout", type=finite_float, default=0.0, help="LoRA dropout (default 0)")
    p.add_argument("--targets", nargs="+", metavar="NAME", help="module leaf names or all-linear (default: family plugin)")
    p.add_argument("--epochs", type=int, default=1, help="passes over the data (default 1)")
    p.add_argument("--lr", type=finite_float, default=1e-3, help="peak learning rate (default 1e-3)")
    p.add_argument("--max-steps", type=int, default=None, help="stop after N optimizer steps (overrides --epochs)")
    p.add_argument("--batch-size", type=int, default=16, help="samples per step (default 16)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=50, help="checkpoint every N steps (default 50)")
    p.add_argument("--max-length", type=int, default=None, help="longest sample in tokens (default: context length)")
    p.add_argument("--resume", action="store_true", help="continue from OUTPUT/checkpoint if there is one")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the adapter (and checkpoint) already in OUTPUT instead of refusing")
    p.add_argument("--description", default="", help="stored in adaptrix.json")
    p.add_argument("--task-type", default="general", help="stored in adaptrix.json; the engine's generation preset while the adapter is active: general, chat, code, math, creative (default general)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--trust-remote-code", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no progress bar (log lines only)")
    add_backend_arg(p, help="execution backend: training runs on transformers only (auto and transformers "
                    "are accepted); convert the adapter afterwards for another backend")
    p.set_defaults(func=run)


def check_backend(args) -> None:
    """Training runs on the reference backend; any other ``--backend`` is refused, saying what to do."""
    name = backend_option(args).get("backend", REFERENCE)
    if name != REFERENCE:
        raise BackendError(
            f"--backend {name}: adaptrix train runs on the {REFERENCE} backend only; the {name} backend cannot "
            f"train. Train with --backend {REFERENCE} (the default), then convert the adapter for {name} with "
            "'adaptrix adapters convert OUTPUT DST' (e.g. DST.gguf for a GGUF LoRA), or load the PEFT folder "
            "there directly"
        )


def run(args) -> int:
    check_backend(args)

    cfg = TrainConfig(
        data=args.data, output=args.output, model=args.model, rank=args.rank, alpha=args.alpha,
        dropout=args.dropout, targets=args.targets, epochs=args.epochs, lr=args.lr, max_steps=args.max_steps,
        batch_size=args.batch_size, seed=args.seed, resume=args.resume, save_every=args.save_every,
        max_length=args.max_length, description=args.description, task_type=args.task_type,
        device=args.device, threads=args.threads, trust_remote_code=args.trust_remote_code,
        progress=not args.no_progress, overwrite=args.overwrite,
    )
    r = train(cfg)
    print(
        f"saved {r.output} ({r.family}, targets {', '.join(r.targets)}): {r.steps} steps, "
        f"loss {r.first_loss:.4f} -> {r.final_loss:.4f}, {r.seconds:.0f} s ({r.seconds_per_step:.2f} s/step)"
    )
    return 0
