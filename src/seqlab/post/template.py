"""The reasoning template: system text and tags around working and answer.

Default tags follow the GRPO workshop's style:
    <start_working_out> ... <end_working_out><SOLUTION> ... </SOLUTION>
The tags are special tokens of the tokenizer, so a character model spends one
token on each.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class ReasoningTemplate:
    system: str = ""
    reasoning_start: str = "<start_working_out>"
    reasoning_end: str = "<end_working_out>"
    solution_start: str = "<SOLUTION>"
    solution_end: str = "</SOLUTION>"

    @property
    def tags(self) -> list[str]:
        return [self.reasoning_start, self.reasoning_end, self.solution_start, self.solution_end]

    def prompt(self, question: str) -> str:
        return f"{self.system}{question}{self.reasoning_start}"

    def completion(self, working: str, answer: str) -> str:
        return f"{working}{self.reasoning_end}{self.solution_start}{answer}{self.solution_end}"

    def format_regex(self) -> re.Pattern:
        """Completion shape: working, end tag, solution tags around an answer, nothing after."""
        e = re.escape
        return re.compile(rf"^(.*?){e(self.reasoning_end)}\s*{e(self.solution_start)}(.*?)"
                          rf"{e(self.solution_end)}\s*$", re.DOTALL)

    def extract_answer(self, completion: str) -> str | None:
        m = self.format_regex().match(completion)
        return m.group(2).strip() if m else None
