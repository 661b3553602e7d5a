"""The family says how its models chat (``chat_behaviour`` hook), and every backend asks it (issue 16, item 5).

The case that used to split the backends: a DeepSeek-R1-Distill-Qwen GGUF.
Its architecture is Qwen2 (detection: family ``qwen``) and its chat template
opens a ``<think>`` span for the answer; the transformers loader hid nothing
(the qwen plugin thought only Qwen3 thinks) while the llama.cpp backend, which
sniffed the template itself, hid the thought. One tiny random Qwen2 model with
the R1-Distill template runs on both backends (transformers: its HF folder;
llama.cpp: its float32 GGUF), its output forced as in ``test_thinking_backends``.
"""

from __future__ import annotations

import pytest

from adaptrix import ChatBehaviour
from adaptrix.errors import PluginError
from adaptrix.plugins.host import PluginHost, get_host
from support.forced import engines_per_backend, force_output
from support.tiny_gguf import build_tiny_gguf

BACKENDS = ["transformers", "llamacpp"]
QUESTION = "What is 2+2?"
#: What an R1 distill writes after the prompt's "<think>\n": the thought, its closing tag, the answer.
OUTPUT = "The user asks 2+2. That is 4.\n</think>\n\nThe answer is 4."
THINK = [["<think>", "</think>"]]


def r1_distill_template(fixtures_dir) -> str:
    """DeepSeek-R1-Distill's template as its GGUFs carry it, updated to open the thought for the model.

    The fixture is the template Ollama's deepseek-r1 GGUF (an R1 distill) embeds; DeepSeek's updated
    tokenizer_config ends the generation prompt with ``<think>\\n`` instead of nothing.
    """
    path = fixtures_dir / "chat-templates" / "deepseek-r1-8b.ollama-gguf.jinja"
    if not path.is_file():
        pytest.skip(f"{path} not found")
    template = path.read_text(encoding="utf-8")
    prompt_end = "{{'<｜Assistant｜>'}}{% endif %}"
    assert template.endswith(prompt_end)
    return template.replace(prompt_end, "{{'<｜Assistant｜><think>\\n'}}{% endif %}")


@pytest.fixture(scope="module")
def r1_files(fixtures_dir, tmp_path_factory):
    """``(hf_folder, gguf_path)``: a tiny Qwen2 with R1's turn and think tokens and the R1-Distill template."""
    import json

    pytest.importorskip("gguf")
    hf, gguf_path = build_tiny_gguf(
        "qwen2", tmp_path_factory.mktemp("r1-distill"), chat_template=r1_distill_template(fixtures_dir),
        extra_tokens=("<think>", "</think>", "<｜User｜>", "<｜Assistant｜>"),
    )
    # The template writes {{ bos_token }}; the GGUF names config.bos_token_id (<|endoftext|>) as its BOS, so the
    # HF tokenizer must too, as a real model's two files agree.
    config = hf / "tokenizer_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "bos_token": "<|endoftext|>"}))
    return hf, gguf_path


@pytest.fixture(scope="module")
def r1(r1_files, one_thread):
    """``r1(backend) -> Engine`` on the tiny R1 distill, loaded once per backend."""
    yield from engines_per_backend(*r1_files)


def test_r1_distill_is_formatted_the_same_on_both_backends(r1):
    ref, cpp = r1("transformers"), r1("llamacpp")
    assert (ref.family, cpp.family) == ("qwen", "qwen")  # a Qwen2 architecture, whatever the name says
    a, b = (e.prepare_request(QUESTION, max_new_tokens=8).prompt for e in (ref, cpp))
    assert a.text == b.text == "<|endoftext|><｜User｜>What is 2+2?<｜Assistant｜><think>\n"
    assert list(a.input_ids) == list(b.input_ids)


def test_r1_distill_thinks_in_hidden_spans_on_both_backends(r1):
    infos = [r1(b).get_model_info() for b in BACKENDS]
    for info in infos:
        assert info["hidden_spans"] == THINK
        assert info["chat_template_kwargs"] == {}  # no switch in R1's template: it always thinks


@pytest.mark.parametrize("backend", BACKENDS)
def test_r1_distill_answer_hides_the_thought(r1, backend, monkeypatch):
    engine = r1(backend)
    force_output(engine, monkeypatch, OUTPUT)
    r = engine.generate_detailed(QUESTION, max_new_tokens=100)
    assert (r.text, r.finish_reason) == ("The answer is 4.", "eos")
    assert "".join(engine.stream(QUESTION, max_new_tokens=100)) == "The answer is 4."
    shown = engine.generate(QUESTION, show_thinking=True, max_new_tokens=100)
    assert shown == OUTPUT  # the prompt opened the span: the output holds the thought and its closing tag


# -- the hook's answers, through the plugin host ----------------------------------------------------------


def ask(family, config=None, template=None, **family_options):
    answer, _ = get_host().call_family(
        "chat_behaviour", family, config=config, template=template, family_options=family_options
    )
    return answer


@pytest.fixture(scope="module")
def templates(fixtures_dir):
    def read(name):
        path = fixtures_dir / "chat-templates" / name
        if not path.is_file():
            pytest.skip(f"{path} not found")
        return path.read_text(encoding="utf-8")

    return read


def test_qwen3_thinks_with_a_switch_off_unless_asked(templates):
    config, template = {"model_type": "qwen3"}, templates("qwen3-0.6b.jinja")
    off, on = ask("qwen", config, template), ask("qwen", config, template, enable_thinking=True)
    assert (off.thinking, off.hidden_spans) == (True, (("<think>", "</think>"),))
    assert off.template_kwargs == {"enable_thinking": False}
    assert on.template_kwargs == {"enable_thinking": True}
    assert off.end_of_turn_tokens == ("<|im_end|>",)


def test_qwen2_thinks_only_when_its_template_does(templates):
    plain = ask("qwen", {"model_type": "qwen2"}, templates("qwen2.5-7b-instruct.jinja"))
    assert (plain.thinking, plain.hidden_spans, plain.template_kwargs) == (False, (), {})
    distill = ask("qwen", {"model_type": "qwen2"}, templates("deepseek-r1-8b.ollama-gguf.jinja"))
    assert (distill.thinking, distill.hidden_spans, distill.template_kwargs) == (True, (("<think>", "</think>"),), {})


def test_deepseek_r1_thinks_and_v3_does_not(templates):
    # R1's original template mentions only '</think>' (it strips earlier thoughts there)
    r1 = ask("deepseek", {"model_type": "deepseek_v3"}, templates("deepseek-r1.jinja"))
    assert (r1.thinking, r1.hidden_spans, r1.template_kwargs) == (True, (("<think>", "</think>"),), {})
    chatml = ask("deepseek", {"model_type": "deepseek_v3"}, templates("qwen2.5-7b-instruct.jinja"))
    assert (chatml.thinking, chatml.hidden_spans) == (False, ())


def test_a_family_without_the_hook_gets_the_generic_chat(templates):
    assert "chat_behaviour" not in get_host().record("mistral").hooks
    plain = ask("mistral", {"model_type": "mistral"}, templates("mistral-7b-instruct-v0.3-tools.jinja"))
    assert plain == ChatBehaviour()
    thinker = ask("mistral", {"model_type": "mistral"}, templates("qwen3-0.6b.jinja"))
    # the think span is hidden, and the template's own thinking default applies (no enable_thinking passed)
    assert (thinker.thinking, thinker.hidden_spans, thinker.template_kwargs) == (True, (("<think>", "</think>"),), {})


def test_end_of_turn_tokens_are_the_familys(templates):
    assert ask("llama", {"model_type": "llama"}, templates("llama-3.1-8b-instruct.jinja")).end_of_turn_tokens == (
        "<|eot_id|>", "<|eot|>", "<|im_end|>")
    assert ask("gemma", {"model_type": "gemma2"}, None).end_of_turn_tokens == ("<end_of_turn>",)
    assert ask("phi", {"model_type": "phi3"}, None).end_of_turn_tokens == ("<|end|>",)


class _Tok:
    chat_template = "{{ messages }}"
    unk_token_id = None

    def convert_tokens_to_ids(self, token):
        return {"<|im_end|>": 7}.get(token)


def test_a_plugin_answer_that_is_not_a_chat_behaviour_names_the_plugin():
    from adaptrix import hookimpl
    from adaptrix.plugins import family_chat

    class Broken:
        @hookimpl
        def detect_family(self, config):
            return "brokenchat"

        @hookimpl
        def chat_behaviour(self, template):
            return {"hidden_spans": [["<think>", "</think>"]]}

    host = PluginHost(environ={}, strict=True)
    host.register(Broken(), "brokenchat")
    host.detect("x", {"model_type": "brokenchat"})
    with pytest.raises(PluginError, match=r"plugin 'brokenchat': hook chat_behaviour\('brokenchat'\) must return an "
                                          r"adaptrix.ChatBehaviour or None, got \{'hidden_spans'"):
        family_chat.ask(host, "brokenchat", None, _Tok())


def test_end_of_turn_tokens_outside_the_vocabulary_are_dropped():
    from adaptrix import hookimpl
    from adaptrix.plugins import family_chat

    class Chat:
        @hookimpl
        def detect_family(self, config):
            return "eotfam"

        @hookimpl
        def chat_behaviour(self, template):
            assert template == "{{ messages }}"  # the tokenizer's template reaches the family
            return ChatBehaviour(end_of_turn_tokens=("<|im_end|>", "<|eot_id|>"))

    host = PluginHost(environ={}, strict=True)
    host.register(Chat(), "eotfam")
    host.detect("x", {"model_type": "eotfam"})
    assert family_chat.ask(host, "eotfam", None, _Tok()).end_of_turn_tokens == ("<|im_end|>",)


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(thinking_default=True), "thinking_default is set but thinking is False"),
        (dict(thinking=True, chat_template_kwargs={"enable_thinking": False}), "give its default as thinking_default"),
        (dict(hidden_spans=[("<think>",)]), r"hidden_spans must be \(open, close\) pairs"),
    ],
)
def test_a_chat_behaviour_that_contradicts_itself_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        ChatBehaviour(**fields)
