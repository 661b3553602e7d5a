"""Every mistake a user can make at the library level is an adaptrix error naming the field and value,
never a raw TypeError/ValueError/RuntimeError, and the engine loses nothing."""

from __future__ import annotations

import json
import shutil
import struct

import pytest

torch = pytest.importorskip("torch")

PROMPT = "What is machine learning?"
GREEDY = dict(max_new_tokens=6, temperature=0, raw=True)


def _rewrite_header(path, change):
    data = path.read_bytes()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    change(header)
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + data[8 + n :])


@pytest.fixture(scope="module")
def setup(tiny_model, tmp_path_factory, one_thread):
    from adaptrix import Engine
    from support.adapters import edit_config, make_adapter

    model_dir = tiny_model("qwen3")
    root = tmp_path_factory.mktemp("bad")
    adir = root / "adapters"
    good = make_adapter(model_dir, adir / "good", seed=1)
    make_adapter(model_dir, adir / "other", seed=2)
    shutil.copytree(good, adir / "bad_shape")
    st = adir / "bad_shape" / "adapter_model.safetensors"
    _rewrite_header(st, lambda h: h[next(k for k in h if k != "__metadata__")].update(shape=["x", 4]))
    shutil.copytree(good, adir / "targets_5")
    edit_config(adir / "targets_5", target_modules=5)
    shutil.copytree(good, adir / "rank_text")
    edit_config(adir / "rank_text", r="8")
    shutil.copytree(good, root / "outside" / "secret")
    engine = Engine(str(model_dir), adapters_dir=str(adir), progress=False)
    engine.initialize()
    engine.load_adapter("good", activate=False)
    yield engine, root
    engine.cleanup()


def _engine_empty():
    from adaptrix import Engine

    Engine("")


CASES = {
    # adapter files
    "safetensors shape not integers": (
        lambda e, r: e.load_adapter("bad_shape"), "AdapterFormatError", r"tensor '.*' has shape \['x', 4\]"),
    "target_modules: 5": (lambda e, r: e.load_adapter("targets_5"), "AdapterFormatError", r"'target_modules' is 5"),
    "r: '8'": (lambda e, r: e.load_adapter("rank_text"), "AdapterFormatError", r"'r' is '8'.*positive whole number"),
    "name escaping adapters_dir": (
        lambda e, r: e.load_adapter("../outside/secret"), "AdapterNotFoundError", r"'\.\./outside/secret' not found"),
    # sampling settings
    "temperature nan": (lambda e, r: e.generate(PROMPT, temperature=float("nan")), "GenerationError",
                        r"temperature must be a finite number, got nan"),
    "temperature inf": (lambda e, r: e.generate(PROMPT, temperature=float("inf")), "GenerationError",
                        r"temperature must be a finite number, got inf"),
    "repetition_penalty nan": (lambda e, r: e.generate(PROMPT, repetition_penalty=float("nan")), "GenerationError",
                               r"repetition_penalty must be a finite number, got nan"),
    "30-digit seed": (lambda e, r: e.generate(PROMPT, seed=10**30, temperature=0.7), "GenerationError",
                      r"seed must be a whole number from 0 to 2\*\*64-1, got 1000000000000000000000000000000"),
    "stream with nan": (lambda e, r: e.stream(PROMPT, top_p=float("nan")), "GenerationError", r"top_p.*nan"),
    # text
    "lone surrogate in the prompt": (lambda e, r: e.generate("hi \ud800 there"), "GenerationError",
                                     r"'\\ud800' at character 3, a lone UTF-16 surrogate"),
    "lone surrogate in a batch": (lambda e, r: e.generate_batch(["ok", "\udfff"]), "GenerationError",
                                  r"prompts\[1\] holds '\\udfff'"),
    "lone surrogate in the system prompt": (lambda e, r: e.generate(PROMPT, system="\ud800"), "GenerationError",
                                            r"system holds '\\ud800'"),
    # adapters API
    "composition weight nan": (lambda e, r: e.compose_adapters({"good": float("nan")}, name="m1"), "AdapterError",
                               r"weight of 'good' must be a finite number, got nan"),
    "composition weight inf": (lambda e, r: e.compose_adapters({"good": 1.0, "other": float("inf")}, name="m2"),
                               "AdapterError", r"weight of 'other' must be a finite number, got inf"),
    "switch_adapter(123)": (lambda e, r: e.switch_adapter(123), "AdapterError", r"got 123"),
    "adapter=123 per call": (lambda e, r: e.generate(PROMPT, adapter=123), "AdapterError", r"got 123"),
    "max_loaded_adapters='2'": (lambda e, r: e.configure_adapters(max_loaded_adapters="2"), "AdapterError",
                                r"max_loaded_adapters must be a positive whole number or None, got '2'"),
    "max_adapter_bytes=-1": (lambda e, r: e.configure_adapters(max_adapter_bytes=-1), "AdapterError",
                             r"max_adapter_bytes .* got -1"),
    # the engine
    "Engine('')": (lambda e, r: _engine_empty(), "ModelConfigError", r"model_id '' names no model"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_clear_adaptrix_error_and_loses_nothing(setup, case, monkeypatch):
    from adaptrix import errors

    engine, root = setup
    monkeypatch.chdir(root.parent)  # relative paths are read against the working directory, never adapters_dir
    before = engine.generate(PROMPT, **GREEDY)
    loaded = engine.get_model_info()["adapters_loaded"]
    action, error, message = CASES[case]
    with pytest.raises(getattr(errors, error), match=message) as info:
        result = action(engine, root)
        if hasattr(result, "__next__"):
            next(result)
    assert isinstance(info.value, errors.AdaptrixError)
    assert engine.get_model_info()["adapters_loaded"] == loaded
    assert engine.active_adapter is None
    assert engine.generate(PROMPT, **GREEDY) == before


def test_a_broken_adapter_does_not_hide_the_others(setup):
    """Listing and validating a folder with broken adapters: the good ones stay usable."""
    engine, _ = setup
    rows = {r["name"]: r for r in engine.list_adapters()}
    assert {"good", "other", "targets_5", "rank_text", "bad_shape"} <= set(rows)
    for name in ("targets_5", "rank_text", "bad_shape"):
        report = engine.validate_adapter(name)
        assert not report.ok and name in report.errors[0]
    assert engine.validate_adapter("other").ok
    assert engine.load_adapter("other", activate=False) is True
    engine.unload_adapter("other")


def test_explicit_folders_still_load_and_bare_names_stay_inside_adapters_dir(setup, monkeypatch):
    from adaptrix.errors import AdapterNotFoundError

    engine, root = setup
    secret = root / "outside" / "secret"
    monkeypatch.chdir(root / "outside")
    with pytest.raises(AdapterNotFoundError, match=r"'secret' not found in adapters_dir .*available: bad_shape, good"):
        engine.load_adapter("secret")  # a folder of that name in the working directory is not a name
    assert engine.load_adapter("./secret", activate=False) is True  # an explicit path still works
    engine.unload_adapter("secret")
    assert engine.load_adapter(str(secret), name="abs", activate=False) is True
    engine.unload_adapter("abs")
