"""Formatting and trimming of conversations, with the tiny ChatML tokenizer."""

from __future__ import annotations

import pytest

from adaptrix.conversation import ConversationStore, Conversation, build_prompt, plain_format
from adaptrix.errors import ChatTemplateError, ContextOverflowError

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
    with pytest.raises(ChatTemplateError, match=r"chat template of tiny refuses a system message.*drop system="):
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
