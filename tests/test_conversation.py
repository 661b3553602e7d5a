"""Formatting and trimming of conversations, with the tiny ChatML tokenizer."""

from __future__ import annotations

import pytest

from adaptrix.errors import ChatTemplateError, ContextOverflowError
from adaptrix.generation.conversation import Conversation, ConversationStore, build_prompt, plain_format

RAISES_ON_SYSTEM = (
    "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for m in messages %}<start_of_turn>{{ m['role'] }}\n{{ m['content'] }}<end_of_turn>\n{% endfor %}"
    "<start_of_turn>model\n"
)


@pytest.fixture(scope="module")
def tok():
    from support.tiny import build_tokenizer

    return build_tokenizer()


def history(n):
    conv = Conversation()
    for i in range(n):
        conv.add_turn(f"question {i} " + "the capital of France is Paris " * 2, f"answer {i}")
    return conv


def test_untrimmed_prompt_matches_template(tok):
    p = build_prompt(tok, "Hi", system="Be brief.")
    expected = tok.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
        tokenize=False, add_generation_prompt=True,
    )
    assert p.text == expected
    assert list(p.input_ids) == tok(expected, add_special_tokens=False)["input_ids"]
    assert p.trimmed_turns == 0 and p.templated and p.stops == ()


def test_trims_fewest_oldest_turns(tok):
    conv = history(10)
    full = build_prompt(tok, "What is 25 times 8?", history=conv.turns())
    budget = len(full.input_ids) - 20
    p = build_prompt(tok, "What is 25 times 8?", history=conv.turns(), budget=budget)
    assert len(p.input_ids) <= budget
    assert p.trimmed_turns >= 1
    kept = [m["content"] for m in p.messages]
    assert kept[-1] == "What is 25 times 8?"  # the current prompt is whole
    assert kept[0].startswith(f"question {p.trimmed_turns} ")  # the oldest turns went first
    assert kept[-2] == "answer 9"  # the newest turn stayed
    # one turn fewer dropped would not fit: the trim is minimal
    fewer = build_prompt(tok, "What is 25 times 8?", history=conv.turns()[p.trimmed_turns - 1 :])
    assert len(fewer.input_ids) > budget


def test_system_prompt_survives_trimming(tok):
    conv = history(6)
    p = build_prompt(tok, "Hi", history=conv.turns(), system="Be brief.", budget=60)
    assert p.messages[0] == {"role": "system", "content": "Be brief."}
    assert p.trimmed_turns == 6


def test_current_prompt_alone_too_long(tok):
    with pytest.raises(ContextOverflowError, match=r"the prompt is \d+ tokens.*context of m is 64.*max_new_tokens=16"):
        build_prompt(tok, "Paris " * 100, budget=48, model_name="m", max_new_tokens=16, context_length=64)


def test_template_refusing_system(tok):
    from copy import deepcopy

    t = deepcopy(tok)
    t.chat_template = RAISES_ON_SYSTEM
    with pytest.raises(ChatTemplateError, match=r"chat template of tiny refuses .*system message.*drop system="):
        build_prompt(t, "Hi", system="Be brief.", model_name="tiny")
    assert "<start_of_turn>user\nHi" in build_prompt(t, "Hi", model_name="tiny").text


def test_real_gemma_template_refuses_system(tok, fixtures_dir):
    from copy import deepcopy

    t = deepcopy(tok)
    t.chat_template = (fixtures_dir / "chat-templates" / "gemma-it.torchtune-tokenizer_config_gemma.jinja").read_text()
    with pytest.raises(ChatTemplateError, match="System role not supported.*drop system="):
        build_prompt(t, "Hi", system="Be brief.", model_name="gemma")


def test_plain_fallback(tok):
    from copy import deepcopy

    t = deepcopy(tok)
    t.chat_template = None
    conv = Conversation()
    conv.add_turn("Hi", "Hello!")
    p = build_prompt(t, "How are you?", history=conv.turns(), system="Be brief.")
    assert p.text == "System: Be brief.\nUser: Hi\nAssistant: Hello!\nUser: How are you?\nAssistant:"
    assert p.text == plain_format(list(p.messages))
    assert not p.templated and p.stops == ("\nUser:",)


def test_store_named_conversations():
    store = ConversationStore()
    store.get("a").add_turn("x", "y")
    store.get("b").add_turn("x", "y")
    assert store.names() == ["a", "b"]
    store.reset("a")
    assert store.names() == ["b"]
    store.reset()
    assert store.names() == []


# -- the same text as transformers' apply_chat_template (the oracle) -----------------------------------------

REAL_TOKENIZERS = ("qwen3-4b-composite", "qwen2.5-composite", "phi3-vision-ortgenai")
CONVERSATIONS = {
    "one turn": ([], None, "What is 25 times 8?"),
    "system": ([], "Be brief.", "Hi"),
    "history": ([[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello! <b>&</b> ünï"}]],
                "Answer in French.", "And Paris?"),
}


@pytest.fixture(scope="module")
def real_tokenizers(fixtures_dir):
    from transformers import AutoTokenizer

    out = {}
    for name in REAL_TOKENIZERS:
        folder = fixtures_dir / "tokenizers" / name
        if not folder.is_dir():
            pytest.skip(f"{folder} not found")
        out[name] = AutoTokenizer.from_pretrained(folder)
    return out


def _oracle(tok, messages, **kwargs):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **kwargs)


def _messages(history, system, prompt):
    head = [{"role": "system", "content": system}] if system else []
    return head + [m for turn in history for m in turn] + [{"role": "user", "content": prompt}]


@pytest.mark.parametrize("which", REAL_TOKENIZERS)
@pytest.mark.parametrize("case", sorted(CONVERSATIONS))
def test_real_tokenizer_prompt_equals_transformers(real_tokenizers, which, case):
    tok = real_tokenizers[which]
    history, system, prompt = CONVERSATIONS[case]
    p = build_prompt(tok, prompt, history=history, system=system, model_name=which)
    assert p.templated
    assert p.text == _oracle(tok, _messages(history, system, prompt))
    assert list(p.input_ids) == tok(p.text, add_special_tokens=False)["input_ids"]


def test_qwen3_template_kwargs_equal_transformers(real_tokenizers):
    tok = real_tokenizers["qwen3-4b-composite"]
    for thinking in (True, False):
        p = build_prompt(tok, "2+2?", template_kwargs={"enable_thinking": thinking})
        assert p.text == _oracle(tok, [{"role": "user", "content": "2+2?"}], enable_thinking=thinking)


def test_split_answer_equals_transformers(real_tokenizers):
    from adaptrix.generation.conversation import split_answer

    for which, tok in real_tokenizers.items():
        messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]
        prompt, answer = split_answer(tok, messages, model_name=which)
        assert prompt + answer == tok.apply_chat_template(messages, tokenize=False), which
        assert prompt == _oracle(tok, messages[:1])


def _fixture_templates(fixtures_dir):
    return sorted((fixtures_dir / "chat-templates").glob("*.jinja"))


def test_every_fixture_template_equals_transformers(real_tokenizers, fixtures_dir):
    """23 real templates, rendered with the Phi-3 tokenizer's special tokens (bos <s>): same text, or both refuse."""
    from copy import deepcopy

    base = real_tokenizers["phi3-vision-ortgenai"]
    templates = _fixture_templates(fixtures_dir)
    assert len(templates) >= 20
    refused = 0
    for path in templates:
        tok = deepcopy(base)
        tok.chat_template = path.read_text(encoding="utf-8")
        for case, (history, system, prompt) in CONVERSATIONS.items():
            try:
                expected = _oracle(tok, _messages(history, system, prompt))
            except Exception:
                with pytest.raises(ChatTemplateError, match="drop system=" if system else "failed"):
                    build_prompt(tok, prompt, history=history, system=system, model_name=path.name)
                refused += 1
                continue
            got = build_prompt(tok, prompt, history=history, system=system, model_name=path.name).text
            assert got == expected, f"{path.name} / {case}"
    assert refused >= 1  # the gemma templates refuse a system message, in both renderers
    bos_templates = [p for p in templates if "bos_token" in p.read_text(encoding="utf-8")]
    assert bos_templates  # so the special tokens above are really exercised


def test_tiny_model_tokenizer_equals_transformers(tiny_model):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model("qwen3"))
    for history, system, prompt in CONVERSATIONS.values():
        p = build_prompt(tok, prompt, history=history, system=system)
        assert p.text == _oracle(tok, _messages(history, system, prompt))


def test_special_tokens_are_template_variables(tok):
    from copy import deepcopy

    from adaptrix.generation.conversation import special_tokens

    t = deepcopy(tok)
    t.chat_template = "{{ bos_token }}|{{ eos_token }}|{{ pad_token }}|{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert special_tokens(t)["eos_token"] == "<|im_end|>"
    assert build_prompt(t, "Hi").text == _oracle(t, [{"role": "user", "content": "Hi"}])
    assert build_prompt(t, "Hi").text.split("|")[1] == "<"  # eos_token "<|im_end|>" rendered in place


def test_no_transformers_apply_chat_template_call(tok, monkeypatch):
    """Formatting goes through adaptrix.generation.chat_template, the module the llama.cpp backend renders with."""
    from copy import deepcopy

    t = deepcopy(tok)

    def boom(*a, **k):
        raise AssertionError("apply_chat_template called")

    monkeypatch.setattr(t, "apply_chat_template", boom)
    assert build_prompt(t, "Hi", system="Be brief.").text.endswith("<|im_start|>assistant\n")


def test_formatting_imports_no_transformers():
    """The llama.cpp path formats prompts with a tokenizer-like codec: nothing here may pull in transformers."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from adaptrix.generation.conversation import build_prompt\n"
        "class Codec:\n"
        "    chat_template = \"{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{% endfor %}\"\n"
        "    special_tokens_map = {'bos_token': '<s>', 'eos_token': '</s>'}\n"
        "    def __call__(self, text, add_special_tokens=True):\n"
        "        return {'input_ids': [ord(c) for c in text]}\n"
        "p = build_prompt(Codec(), 'Hi', system='Be brief.')\n"
        "print(p.text)\n"
        "print([m for m in ('torch', 'transformers', 'peft') if m in sys.modules])\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.splitlines()
    assert out == ["<s><|system|>Be brief.<|user|>Hi", "[]"]
