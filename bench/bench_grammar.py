"""Grammar engines side by side, then the cost of constrained decoding on llama.cpp.

Part 1 (``engines``): llguidance and xgrammar on the embedded SmolLM2 vocabulary
(49152 tokens, each token's bytes as llama.cpp gives them), for four
constraints: a nested object schema (props, enums, arrays, a pattern),
``json_object``, a tool call (literal tags around an embedded schema: a Lark
grammar with ``%json{...}`` for llguidance, the tags concatenated with the
schema's grammar for xgrammar) and a small Lark grammar. For each: the time to
compile the constraint (fresh, no cache), and the time per token to compute the
next-token mask and accept the token, walking the tokens of a valid output.
Rounds alternate between the engines; the median is printed.

Part 2 (``decode``): tokens/s of greedy decoding on the llama.cpp backend, free
vs ``json_schema`` constrained, interleaved rounds on the same engine, the same
prompt and the same number of new tokens (the schema's output is long enough to
fill them), and the ratio (target: >= 0.8).

    python bench/bench_grammar.py [--rounds 5] [--part engines|decode|both] [--tokens 64] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from machine import cpu_name  # bench/machine.py

ROOT = Path(__file__).resolve().parents[1]

NESTED = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "role": {"enum": ["admin", "editor", "viewer"]},
        "tags": {"type": "array", "items": {"type": "string"}, "maxItems": 5},
        "address": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}},
            "required": ["city", "zip"],
            "additionalProperties": False,
        },
        "active": {"type": "boolean"},
    },
    "required": ["name", "age", "role", "tags", "address", "active"],
    "additionalProperties": False,
}
NESTED_OUT = ('{"name":"Ada Lovelace","age":36,"role":"admin","tags":["math","engines","poetry"],'
              '"address":{"city":"London","zip":"12345"},"active":true}')
CALL = {
    "type": "object",
    "properties": {"name": {"const": "get_weather"},
                   "arguments": {"type": "object", "properties": {"city": {"type": "string"},
                                                                  "unit": {"enum": ["c", "f"]}},
                                 "required": ["city", "unit"], "additionalProperties": False}},
    "required": ["name", "arguments"],
    "additionalProperties": False,
}
CALL_OUT = '<tool_call>{"name":"get_weather","arguments":{"city":"Paris","unit":"c"}}</tool_call>'
LARK = 'start: "The answer is " NUMBER "." \nNUMBER: /[0-9]+/'
LARK_OUT = "The answer is 1234567."


def cases():
    """(name, llguidance grammar text, xgrammar builder(compiler), a valid output)."""
    from llguidance import LLMatcher

    tool_lark = f'start: "<tool_call>" call "</tool_call>"\ncall: %json{json.dumps(CALL)}'

    def xgr_tool(compiler):
        import xgrammar as xgr

        g = xgr.Grammar.concat(xgr.Grammar.from_ebnf('root ::= "<tool_call>"'),
                               xgr.Grammar.from_json_schema(json.dumps(CALL), any_whitespace=False, separators=(",", ":")),
                               xgr.Grammar.from_ebnf('root ::= "</tool_call>"'))
        return compiler.compile_grammar(g)

    return [
        ("nested schema", LLMatcher.grammar_from_json_schema(NESTED, {"whitespace_flexible": False}),
         lambda c: c.compile_json_schema(json.dumps(NESTED), any_whitespace=False, separators=(",", ":")), NESTED_OUT),
        ("json_object", LLMatcher.grammar_from_json_schema({"type": "object"}, {"whitespace_flexible": False}),
         lambda c: c.compile_json_schema(json.dumps({"type": "object"}), any_whitespace=False, separators=(",", ":")), NESTED_OUT),
        ("tool call (tags + %json)", LLMatcher.grammar_from_lark(tool_lark), xgr_tool, CALL_OUT),
        ("lark", LLMatcher.grammar_from_lark(LARK), lambda c: c.compile_grammar(
            'root ::= "The answer is " [0-9]+ "."'), LARK_OUT),
    ]


def vocabulary():
    """(token bytes, eos ids, tokenize) of the embedded SmolLM2 GGUF, read through llama.cpp."""
    from adaptrix.models.default_model import default_model_path
    from adaptrix_llamacpp.runtime import LlamaRuntime

    rt = LlamaRuntime(default_model_path(), n_ctx=512)
    tokens = []
    for t in range(rt.n_vocab):
        piece = rt.token_piece(t, special=True)
        tokens.append(b"\xff" + piece if rt.is_control(t) else piece)
    eos = sorted(set(rt.special.eog))
    return rt, tokens, eos


def bench_llguidance(tokens, eos, tokenize, grammar, out_ids, rounds):
    import numpy as np
    from llguidance import LLMatcher, LLTokenizer, TokenizerWrapper

    class _Tok:
        eos_token_id = eos[0]
        bos_token_id = None
        special_token_ids = []

        def __init__(self):
            self.tokens = tokens

        def __call__(self, s):
            return tokenize(s)

    t0 = time.perf_counter()
    tok = LLTokenizer(TokenizerWrapper(_Tok()), eos_token=eos)
    tok_s = time.perf_counter() - t0
    compile_s, step_s = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        m = LLMatcher(tok, grammar, log_level=0)
        compile_s.append(time.perf_counter() - t0)
        assert not m.is_error(), m.get_error()
        buf = np.zeros((len(tokens) + 31) // 32, dtype=np.int32)
        t0 = time.perf_counter()
        for t in out_ids:
            m.unsafe_compute_mask_ptr(buf.ctypes.data, buf.nbytes)
            assert (buf[t // 32] >> (t % 32)) & 1, f"llguidance masks out token {t} of a valid output"
            assert m.consume_token(t), m.get_error()
        step_s.append((time.perf_counter() - t0) / len(out_ids))
        assert m.is_accepting()
    return tok_s, statistics.median(compile_s), statistics.median(step_s)


def bench_xgrammar(tokens, eos, build, out_ids, rounds):
    import xgrammar as xgr

    t0 = time.perf_counter()
    info = xgr.TokenizerInfo([t if not t.startswith(b"\xff") else t[1:] for t in tokens], xgr.VocabType.RAW,
                             vocab_size=len(tokens), stop_token_ids=eos)
    tok_s = time.perf_counter() - t0
    compile_s, step_s = [], []
    for _ in range(rounds):
        compiler = xgr.GrammarCompiler(info, cache_enabled=False)
        t0 = time.perf_counter()
        compiled = build(compiler)
        compile_s.append(time.perf_counter() - t0)
        m = xgr.GrammarMatcher(compiled)
        mask = xgr.allocate_token_bitmask(1, len(tokens))
        t0 = time.perf_counter()
        for t in out_ids:
            m.fill_next_token_bitmask(mask)
            assert m.accept_token(t), f"xgrammar refuses token {t} of a valid output"
        step_s.append((time.perf_counter() - t0) / len(out_ids))
    return tok_s, statistics.median(compile_s), statistics.median(step_s)


def engines(rounds: int) -> None:
    rt, tokens, eos = vocabulary()
    tokenize = lambda s: rt.tokenize(s.decode("utf-8", "replace") if isinstance(s, bytes) else s,  # noqa: E731
                                     add_special=False, parse_special=False)
    print(f"vocabulary: {len(tokens)} tokens (embedded SmolLM2, llama.cpp pieces); median of {rounds} rounds")
    print(f"{'constraint':28} {'engine':11} {'compile ms':>11} {'mask+accept us/token':>21}")
    tok_times = {}
    for name, llg_grammar, xgr_build, out in cases():
        ids = tokenize(out)
        llg = bench_llguidance(tokens, eos, tokenize, llg_grammar, ids, rounds)
        xg = bench_xgrammar(tokens, eos, xgr_build, ids, rounds)
        tok_times = {"llguidance": llg[0], "xgrammar": xg[0]}
        for engine, r in (("llguidance", llg), ("xgrammar", xg)):
            print(f"{name:28} {engine:11} {r[1] * 1e3:11.2f} {r[2] * 1e6:21.1f}")
    print("tokenizer setup (once per model): "
          + ", ".join(f"{k} {v * 1e3:.0f} ms" for k, v in tok_times.items()))
    rt.close()


def decode(rounds: int, n_tokens: int, threads: int) -> None:
    """Decode speed of one row on the llama.cpp runner, free vs constrained, first token to last (the prompt is
    prefilled before the clock starts); the schema's output cannot end before ``n_tokens``."""
    from adaptrix import Engine
    from adaptrix.generation.grammar import Grammar

    engine = Engine(backend="llamacpp", progress=False, threads=threads)
    engine.initialize()
    grammar = Grammar.json_schema({"type": "object", "properties": {"story": {"type": "string", "minLength": 4000}},
                                   "required": ["story"]})
    prepared = engine.prepare_request("Write a long story about a robot, as JSON.", temperature=0,
                                      max_new_tokens=n_tokens)
    runner = engine.runner

    def run(g) -> tuple[float, float]:
        tokens = runner.stream_tokens(prepared.input_ids, prepared.settings, **({"grammar": g} if g else {}))
        next(tokens)  # prefill + first token
        t0, c0, n = time.perf_counter(), time.process_time(), 0
        for _ in tokens:
            n += 1
        assert n == n_tokens - 1, f"the row ended after {n + 1} tokens, not {n_tokens}"
        return n / (time.perf_counter() - t0), (time.process_time() - c0) / n * 1e3

    run(grammar)  # the grammar compiled once, as a server compiles it for its first request
    rates: dict[str, list] = {"free": [], "json_schema": []}
    for _ in range(rounds):
        for name, g in (("free", None), ("json_schema", grammar)):
            rates[name].append(run(g))
    print(f"llama.cpp runner ({runner.runtime.n_threads} threads), greedy, {n_tokens} new tokens, decode only "
          f"(first token to last), median of {rounds} interleaved rounds")
    med = {k: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v)) for k, v in rates.items()}
    for name, (rate, cpu) in med.items():
        print(f"  {name:12} {rate:7.1f} tokens/s  {cpu:6.2f} CPU ms/token")
    print(f"  ratio        {med['json_schema'][0] / med['free'][0]:7.2f}x tokens/s (target >= 0.8); CPU per token "
          f"{med['json_schema'][1] / med['free'][1]:.2f}x")
    engine.cleanup()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1, help="llama.cpp threads (1: steadiest on a shared machine)")
    ap.add_argument("--part", choices=("engines", "decode", "both"), default="both")
    args = ap.parse_args()
    print(f"machine: {cpu_name()}")
    if args.part in ("engines", "both"):
        engines(args.rounds)
    if args.part in ("decode", "both"):
        decode(args.rounds, args.tokens, args.threads)


if __name__ == "__main__":
    sys.exit(main())
