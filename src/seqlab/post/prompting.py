"""How post-training turns a data row's prompt into token ids, and where a completion ends.

    plain  <bos> prompt                                           completion <eos>
    chat   template([system], user: prompt) + generation prompt  completion <end of turn>

Chat applies when `post.chat_template` is true, the default for a policy whose tokenizer
has a chat template (an imported instruct model): a pretrained chat model answers in
its own turn format, so its prompts must be what its chat template makes of them, and a
completion ends with the token the template closes an assistant turn with (ChatML's
<|im_end|>, Llama 3's <|eot_id|>, ...), which is also where sampling stops. The config's
`system` text becomes the system message (the workshop's reasoning-format instructions);
reward functions still see the row's own prompt text.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..data.tokenizer import Tokenizer
from ..errors import SeqlabError

_SENTINEL = "\u2063seqlab-reply\u2063"  # text no template adds by itself


@dataclass(frozen=True)
class PromptFormat:
    tokenizer: Tokenizer
    chat: bool
    system: str
    end_id: int  # the token that ends a completion: eos, or the chat template's end of turn

    def prompt_ids(self, prompt: str) -> list[int]:
        if not self.chat:
            return self.tokenizer.encode_prompt(prompt)
        from ..generate_text import chat_prompt_ids

        return chat_prompt_ids(self.tokenizer, self.messages(prompt))

    def messages(self, prompt: str) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + \
            [{"role": "user", "content": prompt}]

    def pair(self, prompt: str, completion: str, max_len: int | None,
             add_end: bool = True) -> tuple[list[int], list[int]]:
        """Token ids of prompt + completion [+ end] and the completion mask (same length)."""
        self.tokenizer.check_encodable(prompt + completion, "example")
        p = self.prompt_ids(prompt)
        c = self.tokenizer.encode(completion) + ([self.end_id] if add_end else [])
        ids = p + c
        if max_len is not None and len(ids) > max_len + 1:
            raise SeqlabError(f"example of {len(ids)} tokens does not fit the model's context ({max_len})")
        return ids, [0] * len(p) + [1] * len(c)


def turn_end_id(tokenizer: Tokenizer) -> int:
    """The special token the chat template puts right after an assistant message's text
    (eos when it puts none there)."""
    from ..data.chat import render_chat

    text = render_chat(tokenizer.chat_template, [{"role": "user", "content": "hi"},
                                                 {"role": "assistant", "content": _SENTINEL}],
                       add_generation_prompt=False, special_tokens=tokenizer.special_tokens)
    after = text.partition(_SENTINEL)[2]
    for special in sorted(tokenizer.specials, key=len, reverse=True):
        if after.lstrip(" ").startswith(special):
            ids = tokenizer.encode(special)
            if len(ids) == 1:
                return ids[0]
    return tokenizer.eos_id


def prompt_format(tokenizer: Tokenizer, chat_template: bool | None, system: str) -> PromptFormat:
    """chat_template None: chat when the tokenizer has a template."""
    has_template = bool(getattr(tokenizer, "chat_template", None))
    chat = has_template if chat_template is None else chat_template
    if chat and not has_template:
        raise SeqlabError("config key 'post.chat_template': the policy's tokenizer has no chat template "
                          "(set it to false, or import a chat model with seqlab import)")
    return PromptFormat(tokenizer, chat, system, turn_end_id(tokenizer) if chat else tokenizer.eos_id)
