"""Knowledge distillation: a student learns from a teacher that shares its tokenizer.

Two modes, as in Qwen3's strong-to-weak distillation (Qwen3 technical report, 2025):

offpolicy  sequence-level KD (Kim & Rush 2016): the teacher samples `group_size`
           completions of every prompt once, before training (temperature
           `temperature`); the student is fine-tuned on them with SFT's loss
               loss = - sum_{b,t} m_{b,t} log pi_S(y_{b,t} | y_{b,<t}) / sum m
onpolicy   GKD (Agarwal et al. 2024, "On-Policy Distillation of Language Models"): at
           every step the student samples completions (`batch_size` prompts,
           temperature `temperature`) and learns the teacher's whole next-token
           distribution at each of its own tokens:
               loss = sum_{b,t} m_{b,t} D(p_T(. | y_<t), p_S(. | y_<t)) / sum m
           with D set by `divergence`:
               forward   KL(p_T || p_S) = sum_v p_T(v) (log p_T(v) - log p_S(v))
               reverse   KL(p_S || p_T) = sum_v p_S(v) (log p_S(v) - log p_T(v))
               jsd       GKD's generalised Jensen-Shannon divergence, beta = `jsd_beta`:
                         M = beta p_T + (1 - beta) p_S,
                         JSD_beta = beta KL(p_T || M) + (1 - beta) KL(p_S || M)
           The samples carry no gradient (GKD, like TRL's GKDTrainer, does not
           backpropagate through sampling); the student's distribution does.

m marks completion tokens up to and including the end token; the teacher and student
distributions are at temperature 1. Logged: the loss, the forward KL to the teacher on the
step's tokens (on-policy: the student's own, every step, from the loss's own logits;
off-policy: the teacher's samples, every `samples_every` steps, since it costs a teacher
forward), completion lengths, and samples.jsonl as the RL algorithms do.
"""

from __future__ import annotations

import json

import torch
import torch.nn.functional as F

from ..errors import SeqlabError

DIVERGENCES = ("forward", "reverse", "jsd")


def token_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, kind: str = "forward",
                     beta: float = 0.5) -> torch.Tensor:
    """Per-position divergence (B, T) between the two next-token distributions (B, T, V)."""
    lt = F.log_softmax(teacher_logits.float(), -1)
    ls = F.log_softmax(student_logits.float(), -1)
    if kind == "forward":
        return (lt.exp() * (lt - ls)).sum(-1)
    if kind == "reverse":
        return (ls.exp() * (ls - lt)).sum(-1)
    if kind == "jsd":
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd beta must be in (0, 1), got {beta}")
        # log M = log(beta p_T + (1 - beta) p_S), computed in log space
        lm = torch.logsumexp(torch.stack([lt + torch.log(torch.tensor(beta)),
                                          ls + torch.log(torch.tensor(1.0 - beta))]), 0)
        return beta * (lt.exp() * (lt - lm)).sum(-1) + (1 - beta) * (ls.exp() * (ls - lm)).sum(-1)
    raise ValueError(f"unknown divergence {kind!r} ({', '.join(DIVERGENCES)})")


def distill_loss(teacher_logits, student_logits, mask, kind: str = "forward", beta: float = 0.5,
                 n_tokens: torch.Tensor | None = None) -> torch.Tensor:
    """Token mean of the divergence over the mask (n_tokens: the normaliser, default this
    batch's mask sum; data-parallel: the global batch's)."""
    d = token_divergence(teacher_logits, student_logits, kind, beta)
    n = mask.sum() if n_tokens is None else n_tokens
    return (d * mask).sum() / n.clamp(min=1)


def same_tokenizer(student_tok, teacher_tok, teacher: str) -> None:
    if student_tok.to_dict() != teacher_tok.to_dict():
        raise SeqlabError(f"config key 'post.teacher': {teacher} has another tokenizer than the student; "
                          f"distillation compares their next-token distributions, so they must share one")


def run_distill(cfg, progress: bool = True) -> dict:
    """Distil cfg.teacher into cfg.policy (the student) on {"prompt": ...} JSONL."""
    from ..checkpoint import load_model
    from ..engine import all_gather_objects, all_reduce_sum, weighted_sum
    from ..engine import ranks as process_ranks
    from ..sampling import DecodeRule, generate
    from .common import device_of
    from .data import completion_batch, load_jsonl
    from .prompting import prompt_format
    from .runner import load_policy, optimise, prepare_out
    from .sft import sft_update_loss

    if not cfg.teacher:
        raise SeqlabError("config key 'post.teacher' is required: the run to distil from")
    if cfg.divergence == "jsd" and not 0.0 < cfg.jsd_beta < 1.0:
        raise SeqlabError(f"config key 'post.jsd_beta': must be in (0, 1), got {cfg.jsd_beta}")
    if cfg.temperature <= 0:
        raise SeqlabError("config key 'post.temperature': distillation samples, so it must be > 0")
    student, tok, _ = load_policy(cfg, drop_dropout=True)
    device = device_of(student)
    teacher, teacher_tok, _ = load_model(cfg.teacher, "best", device=str(device))
    same_tokenizer(tok, teacher_tok, cfg.teacher)
    for p in teacher.parameters():
        p.requires_grad_(False)
    rows = load_jsonl(cfg.data, ("prompt",), tok)
    fmt = prompt_format(tok, cfg.chat_template, cfg.system)
    prompt_ids = [fmt.prompt_ids(r["prompt"]) for r in rows]
    out = prepare_out(cfg, f"distill-{cfg.mode}")
    ranks = process_ranks()
    g = torch.Generator().manual_seed(cfg.seed)
    rule = DecodeRule(temperature=cfg.temperature)
    samples_path = out / "samples.jsonl"
    mine = ranks.shard(cfg.batch_size, "post.batch_size")

    def log_samples(step, prompts_text, completions):  # the first two of each rank's rows
        gathered = all_gather_objects((prompts_text, completions), ranks)
        if ranks.main and cfg.samples_every and step % cfg.samples_every == 0:
            with open(samples_path, "a", encoding="utf-8") as f:
                for texts, comps in gathered:
                    for p, c in zip(texts[:2], comps[:2]):
                        f.write(json.dumps({"step": step, "prompt": p, "completion": c}) + "\n")

    def forward_kl(ids, mask):
        with torch.no_grad():
            return distill_loss(teacher(ids[:, :-1])[0], student(ids[:, :-1])[0], mask, "forward")

    if cfg.mode == "offpolicy":
        # the teacher's completions, once: group_size per prompt (random numbers drawn for
        # all of them, so they do not depend on the world size)
        teacher.eval()
        teacher_rows = []  # (ids, completion mask, prompt's row)
        for i in range(0, len(prompt_ids), 64):
            which = [j for j in range(i, min(i + 64, len(prompt_ids))) for _ in range(cfg.group_size)]
            chunk = [prompt_ids[j] for j in which]
            gen = generate(teacher, chunk, cfg.max_new_tokens, rule, fmt.end_id, tok.pad_id, generator=g)
            for j, p, c in zip(which, chunk, gen.rows(strip_eos=False)):  # the end token is learned too
                teacher_rows.append((p + c, [0] * len(p) + [1] * len(c), j))

        def step_fn(step):
            from .data import pad_batch

            idx = torch.randint(len(teacher_rows), (cfg.batch_size,), generator=g).tolist()
            batch = [teacher_rows[i] for i in idx[mine]]
            ids, mask = pad_batch([(r[0], r[1]) for r in batch], tok.pad_id, device)
            n_tokens = all_reduce_sum(mask[:, 1:].sum().double(), ranks)
            loss = sft_update_loss(student, ids, mask, n_tokens, cfg.micro_batch)
            share = float(mask[:, 1:].sum() / n_tokens.clamp(min=1))
            # the teacher's forward costs as much as the update (more for a large teacher):
            # the KL diagnostic every samples_every steps only
            logged = bool(cfg.samples_every) and step % cfg.samples_every == 0
            kl = float(forward_kl(ids, mask[:, 1:])) if logged else None
            stats = weighted_sum({"kl": kl, "completion_len": float(mask.sum(1).mean())}, share, ranks)
            log_samples(step, [rows[r[2]]["prompt"] for r in batch],
                        [tok.decode([t for t, m in zip(r[0], r[1]) if m]) for r in batch])
            return loss, stats
    else:
        def step_fn(step):
            pick = torch.randint(len(rows), (cfg.batch_size,), generator=g).tolist()
            prompts = [prompt_ids[i] for i in pick]
            gen = generate(student, prompts, cfg.max_new_tokens, rule, fmt.end_id, tok.pad_id, generator=g,
                           shard=mine)
            ids, mask, _ = completion_batch(prompts[mine], gen, tok.pad_id)
            with torch.no_grad():
                t_logits = teacher(ids[:, :-1])[0]
            s_logits = student(ids[:, :-1])[0]
            n_tokens = all_reduce_sum(mask.sum().double(), ranks)
            loss = distill_loss(t_logits, s_logits, mask, cfg.divergence, cfg.jsd_beta, n_tokens)
            share = float(mask.sum() / n_tokens.clamp(min=1))
            if cfg.divergence == "forward":  # the loss is the forward KL already (a global share of it)
                kl = float(loss.detach()) / max(share, 1e-12) if share > 0 else 0.0
            else:  # one more pass over (B, T, V) for the diagnostic
                with torch.no_grad():
                    kl = float(distill_loss(t_logits, s_logits, mask, "forward"))
            stats = weighted_sum({"kl": kl, "completion_len": float(gen.lengths.float().mean())}, share, ranks)
            log_samples(step, [rows[i]["prompt"] for i in pick[mine]],
                        [tok.decode(c) for c in gen.rows(strip_eos=True)])
            return loss, stats

    title = f"distillation ({cfg.mode}{', ' + cfg.divergence if cfg.mode == 'onpolicy' else ''})"
    stats = optimise(student, cfg, out, ["loss", "kl", "completion_len"], step_fn, progress, title, ("loss", "kl"),
                     generator=g)
    return {"algorithm": "distill", "mode": cfg.mode, "step": stats["steps_done"], "loss": stats["loss"],
            "kl": stats.get("kl"), "run": str(out)}
