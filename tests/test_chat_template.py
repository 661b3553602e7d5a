"""adaptrix.generation.chat_template renders every real chat template exactly as transformers does (the oracle)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from adaptrix.errors import ChatTemplateError
from adaptrix.generation.chat_template import ChatTemplate, render_chat_template

SYSTEM = {"role": "system", "content": "You are terse. Answer in one line."}
CONVERSATIONS = {
    "single": [{"role": "user", "content": "What is 2+2? Ünïcödé 🙂 <b>&</b>"}],
    "system": [SYSTEM, {"role": "user", "content": "Name a prime."}],
    "multi-turn": [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. How can I help?"},
        {"role": "user", "content": "Tell me a fact."},
    ],
    "system+multi-turn": [
        SYSTEM,
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Again?"},
    ],
}
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        },
    }
]


#: Whitespace control that the fixtures barely exercise: indented block tags (lstrip_blocks) and loop controls.
INDENTED = (
    "{{ bos_token }}\n    {% for m in messages %}\n    {% if m.role == 'system' %}{% continue %}{% endif %}\n"
    "<{{ m.role }}>{{ m.content | trim }}</{{ m.role }}>\n    {% endfor %}\n"
    "    {% if add_generation_prompt %}<assistant>{% endif %}"
)


def _templates(fixtures_dir):
    paths = sorted((fixtures_dir / "chat-templates").glob("*.jinja"))
    if not paths:
        pytest.skip("no chat templates in the shared fixtures")
    return [(p.name, p.read_text(encoding="utf-8")) for p in paths] + [("indented", INDENTED)]


@pytest.fixture(scope="module")
def oracle_tokenizer():
    """A transformers tokenizer whose only job is apply_chat_template (rendering needs no vocabulary)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<unk>", "<s>", "</s>", "<pad>"])}
    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
    )


def _transformers(tok, template, messages, **kwargs):
    try:
        return "ok", tok.apply_chat_template(messages, chat_template=template, tokenize=False, **kwargs)
    except Exception as exc:  # the oracle's refusal
        return "refused", type(exc).__name__


def _ours(tok, template, messages, **kwargs):
    try:
        return "ok", render_chat_template(template, messages, special_tokens=tok.special_tokens_map, **kwargs)
    except ChatTemplateError as exc:
        return "refused", exc


@pytest.mark.parametrize("generation_prompt", [True, False])
def test_every_fixture_template_renders_as_transformers_renders_it(fixtures_dir, oracle_tokenizer, generation_prompt):
    checked = refused = 0
    for template_name, template in _templates(fixtures_dir):
        for conv_name, messages in CONVERSATIONS.items():
            for extra in ({}, {"enable_thinking": False}, {"tools": TOOLS}):
                kwargs = {"add_generation_prompt": generation_prompt, **extra}
                want = _transformers(oracle_tokenizer, template, messages, **kwargs)
                got = _ours(oracle_tokenizer, template, messages, **kwargs)
                where = f"{template_name} / {conv_name} / {extra}"
                assert got[0] == want[0], f"{where}: transformers {want}, adaptrix {got}"
                if want[0] == "ok":
                    assert got[1] == want[1], where
                    checked += 1
                else:
                    refused += 1
    assert checked > 100
    assert refused > 0  # the fixtures include templates that refuse a system message


def test_a_refused_system_message_is_a_chat_template_error_naming_the_model(fixtures_dir):
    template = (fixtures_dir / "chat-templates" / "mistral-7b-instruct-v0.1.jinja").read_text(encoding="utf-8")
    chat = ChatTemplate(template, {"bos_token": "<s>", "eos_token": "</s>"}, name="mistral.gguf")
    with pytest.raises(ChatTemplateError, match=r"mistral\.gguf.*drop system="):
        chat.render(CONVERSATIONS["system"])
    # Without the system message the same template renders.
    assert chat.render(CONVERSATIONS["single"]).startswith("<s>[INST]")


def test_thinking_switch_reaches_the_template(fixtures_dir):
    template = (fixtures_dir / "chat-templates" / "qwen3-0.6b.jinja").read_text(encoding="utf-8")
    off = render_chat_template(template, CONVERSATIONS["single"], enable_thinking=False)
    on = render_chat_template(template, CONVERSATIONS["single"])
    assert off.endswith("<think>\n\n</think>\n\n") and not on.endswith("</think>\n\n")


def test_special_tokens_are_variables_and_kwargs_override_them():
    template = "{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}{{ eos_token }}"
    chat = ChatTemplate(template, {"bos_token": "<B>", "eos_token": "<E>"})
    assert chat.render([{"role": "user", "content": "x"}]) == "<B>x<E>"
    assert chat.render([{"role": "user", "content": "x"}], eos_token="!") == "<B>x!"


def test_tojson_keeps_unicode_and_html_like_transformers():
    out = render_chat_template("{{ messages[0] | tojson }}", [{"role": "user", "content": "é <a>"}])
    assert out == '{"role": "user", "content": "é <a>"}'


def test_broken_templates_and_empty_conversations_are_clear_errors():
    with pytest.raises(ChatTemplateError, match="not valid jinja2"):
        render_chat_template("{% for m in messages %}", [{"role": "user", "content": "x"}], name="m.gguf")
    with pytest.raises(ChatTemplateError, match="empty conversation"):
        render_chat_template("{{ 1 }}", [])


def test_the_sandbox_holds():
    with pytest.raises(ChatTemplateError, match="SecurityError"):
        render_chat_template("{{ messages.__class__.__mro__ }}", [{"role": "user", "content": "x"}])


def test_rendering_imports_no_transformers():
    code = (
        "import sys; from adaptrix.generation.chat_template import render_chat_template as r;"
        "r('{{ messages[0].content }}', [{'role': 'user', 'content': 'x'}]);"
        "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
