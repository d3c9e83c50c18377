"""Chat templates: render a Hugging Face chat template (the Jinja2 string in tokenizer_config.json's
"chat_template" or a GGUF's tokenizer.chat_template) to exactly the text transformers'
`tokenizer.apply_chat_template(messages, tokenize=False)` gives, without importing transformers
(seqlab must not depend on it at run time).

Mirrors transformers 5.x utils/chat_template_utils.py (`_compile_jinja_template`, `render_jinja_template`):
ImmutableSandboxedEnvironment(trim_blocks, lstrip_blocks) with loopcontrols and the `{% generation %}` tag;
its `tojson` (no HTML escaping, ensure_ascii=False); globals `raise_exception`, `strftime_now` and the
restricted `dict` and `namespace`; variables messages (None-valued keys dropped, reasoning aliased to
`reasoning_content`/`thinking`), tools, documents, add_generation_prompt, the special-token strings
(bos_token, ...) and extra keywords. Not mirrored: tools as Python functions, batches,
continue_final_message, assistant-token masks.
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache

import jinja2
from jinja2 import nodes
from jinja2.ext import Extension, loopcontrols
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..errors import SeqlabError

ROLES = ("system", "user", "assistant", "tool")

# Plain ChatML, for models that ship no template.
DEFAULT_CHATML = (
    "{% for message in messages %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_REASONING_FIELDS = ("reasoning_content", "thinking", "reasoning")


class _Generation(Extension):
    """`{% generation %}...{% endgeneration %}` (transformers' assistant-mask tag) renders its body as is."""

    tags = {"generation"}

    def parse(self, parser):
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

    def _body(self, caller):
        return caller()


class _Dict:
    """The template's `dict`: construction only, no attribute access to the builtin type."""

    def __call__(self, *args, **kwargs):
        return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
        return dict.fromkeys(*args, **kwargs)


def _check_name(name):
    if isinstance(name, str) and name.startswith("_"):
        raise jinja2.exceptions.SecurityError(f"namespace attribute {name!r} starts with an underscore")
    return name


class _Namespace(jinja2.utils.Namespace):
    """Jinja's `namespace`, refusing underscore-prefixed attributes as transformers' does."""

    def __init__(*args, **kwargs):  # the signature trick of jinja's Namespace, so namespace(self=...) works
        jinja2.utils.Namespace.__init__(args[0], {_check_name(k): v for k, v in dict(*args[1:], **kwargs).items()})

    def __setitem__(self, name, value):
        jinja2.utils.Namespace.__setitem__(self, _check_name(name), value)


def _raise_exception(message):
    raise SeqlabError(str(message))


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


@lru_cache(maxsize=None)
def _compile(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[_Generation, loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals.update(raise_exception=_raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt),
                       dict=_Dict(), namespace=_Namespace)
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise SeqlabError(f"chat template: {' '.join(str(e.message).split())} (line {e.lineno})") from None


def _normalize(i: int, message: dict) -> dict:
    if not isinstance(message, dict):
        raise SeqlabError(f"chat: message {i} is a {type(message).__name__}, not a dict")
    message = {k: v for k, v in message.items() if v is not None}
    reasoning = next((message[k] for k in _REASONING_FIELDS if message.get(k) is not None), None)
    return message if reasoning is None else {"thinking": reasoning, **message, "reasoning_content": reasoning}


def check_messages(messages) -> None:
    """Each message is a dict with a role in ROLES and a str content; else one SeqlabError line."""
    if not isinstance(messages, (list, tuple)) or not messages:
        raise SeqlabError("chat: messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise SeqlabError(f"chat: message {i} is a {type(m).__name__}, not a dict with 'role' and 'content'")
        if not isinstance(m.get("role"), str) or m["role"] not in ROLES:
            raise SeqlabError(f"chat: message {i} has role {m.get('role')!r}; expected one of {', '.join(ROLES)}")
        if not isinstance(m.get("content"), str):
            raise SeqlabError(f"chat: message {i} ({m['role']}) has content {type(m.get('content')).__name__}, not str")


def render_chat(template: str, messages: list[dict], add_generation_prompt: bool = True,
                special_tokens: dict[str, str] | None = None, **extra) -> str:
    """The text `apply_chat_template(messages, tokenize=False, add_generation_prompt=...)` gives for a
    tokenizer whose special tokens are `special_tokens` ({"bos_token": "<s>", ...}). `extra` reaches the
    template as variables (tools=[schema, ...], documents=[...], enable_thinking=False, ...) and wins over
    special tokens of the same name. Messages are not validated here: use check_messages for that."""
    if not messages:
        raise SeqlabError("chat: no messages to render")
    compiled = _compile(template)
    variables = {"tools": None, "documents": None, **(special_tokens or {}), **extra}
    try:
        return compiled.render(messages=[_normalize(i, m) for i, m in enumerate(messages)],
                               add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.TemplateError as e:
        raise SeqlabError(f"chat template: {' '.join(str(e).split())}") from None
