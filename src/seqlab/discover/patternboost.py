"""The PatternBoost loop (Charton, Ellenberg, Wagner, Williamson 2024), and its
GRPO variant.

    generation 0   many short local searches from random greedy starts fill the
                   pool (improve_many; a diverse pool of good constructions, as in
                   the paper, not the few long anneals of the `local` searcher)
    generation g   keep the best `train_fraction` of the pool (+ their symmetric
                   images) -> train the transformer on them, starting from the
                   previous generation's weights -> sample `samples` strings with
                   the cached sampler -> decode -> repair + local search
                   (improve_many) -> merge into the pool (deduplicated)
    grpo searcher  the same, but after the first PatternBoost generation the model
                   is also optimised directly on the score with GRPO (reward: the
                   score of the repaired decoded sample; undecodable: a penalty)

CPU defaults, and why (the paper's are for a GPU: 500k local searches and the
best 50k kept per generation, a 4-layer 8-head 64-wide model trained 20k steps):
a 10-minute budget on 2 cores affords a few generations of ~300 training steps
of a 2-layer 64-wide model (~10-20 s), 512 samples (~1-3 s with the KV cache)
and one local search per sample (most of the time). The pool keeps 2000 distinct
constructions; the model trains on the best half of them.
"""

from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from .. import atomic
from ..config import run_config_from_dict
from ..data.tokenizer import CharTokenizer
from ..sampling import DecodeRule, generate
from ..train import train
from .local import Elite, LocalResult, decode_many, improve_many, open_pool, pool_stats
from .problem import derive_seed


@dataclass
class PatternBoostConfig:
    init_fraction: float = 0.25  # share of the budget for the initial local-search pool
    keep: int = 2000  # distinct constructions kept in the pool
    train_fraction: float = 0.5  # the model trains on this best share of the pool
    augment: bool = True  # add the symmetric images of the training constructions
    first_steps: int = 600  # training steps of generation 1 (from scratch)
    steps: int = 300  # training steps of later generations (weights kept)
    batch_size: int = 32
    lr: float = 1e-3
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 64
    samples: int = 512  # model samples per generation
    temperature: float = 1.0
    # local-search moves per start; None: sized from the measured moves/s so that generation 0
    # makes about `keep` searches in its budget and later generations give the local search
    # `local_share` of their wall clock (an int fixes it, e.g. for reproducible tests)
    moves_per_start: int | None = None
    local_share: float = 0.75
    grpo_steps: int = 20  # grpo searcher: GRPO updates per generation
    grpo_group: int = 16
    grpo_lr: float = 1e-4
    threads: int = 1
    device: str = "cpu"  # the model's: training, sampling and score-RL (CLI: discover --device)


CALIBRATION_MOVES = 20_000  # moves per start of the first batch, which measures the moves/s


class _Throughput:
    """Local-search moves per worker-second, measured over the run so far."""

    def __init__(self, workers: int):
        self.workers, self.moves, self.seconds = workers, 0, 0.0

    def add(self, moves: int, seconds: float) -> None:
        self.moves += moves
        self.seconds += seconds * self.workers

    def moves_for(self, seconds_per_start: float) -> int:
        rate = self.moves / self.seconds if self.seconds > 0 and self.moves > 0 else 1e6
        return int(min(1e10, max(1000, rate * seconds_per_start)))


def _training_lines(problem, elite: Elite, cfg: PatternBoostConfig) -> list[str]:
    ranked = elite.ranked()
    top = ranked[: max(1, int(len(ranked) * cfg.train_fraction))]
    lines = []
    for _, c in top:
        images = problem.symmetries(c) if cfg.augment else [c]
        lines.extend(dict.fromkeys(problem.encode(x) for x in images))  # distinct, order kept
    return lines


class ModelSide:
    """The transformer of the loop: a fixed character vocabulary (the problem's), its
    weights carried from generation to generation."""

    def __init__(self, problem, out: Path, cfg: PatternBoostConfig, seed: int):
        self.problem, self.out, self.cfg, self.seed = problem, out, cfg, seed
        self.tokenizer = CharTokenizer(sorted(set(problem.vocabulary())))
        self.model = None
        self.block_size = 0

    def resume(self, last_logged: int | None = None) -> int:
        """Load the newest generation's model of a run in `out`, up to generation `last_logged`
        (a later one was trained but its generation never finished); returns its generation (0: none)."""
        from ..checkpoint import load_model

        for gdir in sorted(self.out.glob("gen-[0-9][0-9][0-9]"), reverse=True):
            if last_logged is not None and int(gdir.name[4:]) > last_logged:
                continue
            if (gdir / "model").is_dir():
                try:
                    self.model, _, _ = load_model(gdir / "model", "last", device=self.cfg.device)
                except Exception:  # an interrupted generation: fall back to the one before
                    continue
                self.block_size = self.model.max_len
                return int(gdir.name[4:])
        return 0

    def fit(self, lines: list[str], generation: int, deadline: float | None = None) -> dict:
        t0 = time.perf_counter()
        gdir = self.out / f"gen-{generation:03d}"
        if (gdir / "model").exists():  # a generation trained but never logged (a kill, or the budget): again
            shutil.rmtree(gdir / "model")
        gdir.mkdir(parents=True, exist_ok=True)
        data = gdir / "train.txt"
        atomic.write_text(data, "\n".join(lines) + "\n")
        if self.model is None:  # room for samples somewhat longer than today's best
            self.block_size = int(max(len(x) for x in lines) * 1.5) + 2
        cfg = run_config_from_dict({
            "data": {"path": str(data), "val_fraction": 0.02, "val_max": 200},
            "model": {"type": "transformer", "n_layer": self.cfg.n_layer, "n_head": self.cfg.n_head,
                      "n_embd": self.cfg.n_embd, "block_size": self.block_size, "dropout": 0.0},
            "train": {"steps": self.cfg.first_steps if self.model is None else self.cfg.steps,
                      "batch_size": self.cfg.batch_size, "lr": self.cfg.lr, "warmup_steps": 20,
                      "eval_interval": 10**9, "checkpoint_interval": 10**9, "seed": self.seed + generation,
                      "threads": self.cfg.threads, "log_interval": 50, "device": self.cfg.device},
        })
        usable = [x for x in lines if len(x) < self.block_size]
        if len(usable) < len(lines):  # longer than the model's context: leave them out of training
            atomic.write_text(data, "\n".join(usable) + "\n")
        result = train(cfg, gdir / "model", progress=False, tokenizer=self.tokenizer, init_from=self.model,
                       deadline=deadline)
        from ..checkpoint import load_model

        self.model, _, _ = load_model(gdir / "model", "last", device=self.cfg.device)
        return {"train_s": time.perf_counter() - t0, "train_loss": result.get("train_loss")}

    def sample(self, n: int, generator: torch.Generator) -> list[str]:
        tok = self.tokenizer
        self.model.eval()
        with torch.inference_mode():
            gen = generate(self.model, [[tok.bos_id]] * n, self.block_size - 1,
                           DecodeRule(temperature=self.cfg.temperature), tok.eos_id, tok.pad_id, generator=generator)
        return [tok.decode(ids) for ids in gen.rows(strip_eos=True)]


def run_patternboost(problem, out: Path, seconds: float, seed: int = 0, workers: int | None = None,
                     cfg: PatternBoostConfig | None = None, init: list | None = None, target: float | None = None,
                     progress: Callable[[dict], None] | None = None, pool_out: Path | None = None,
                     use_grpo: bool = False, last_logged: int | None = None, ray: str | None = None) -> LocalResult:
    """PatternBoost (or, with use_grpo, PatternBoost + GRPO on the score) for `seconds`
    of wall clock. Returns the pool as a LocalResult; `progress` gets one dict per
    generation (generation 0 is the initial local search). A resumed run (`init`, the
    pool) goes on from the model of generation `last_logged` (None: the newest)."""
    cfg = cfg or PatternBoostConfig()
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    end = t0 + seconds
    out.mkdir(parents=True, exist_ok=True)
    log: list[dict] = []

    def emit(entry: dict, elite: Elite) -> None:
        stats = pool_stats([s for s, _ in elite.items.values()])
        entry = {**entry, "seconds": round(time.perf_counter() - t0, 3), "pool_size": stats["size"],
                 "mean": stats["mean"], "median": stats["median"], "top20": stats["top20"], "max": stats["max"],
                 "best": elite.best_score(), "scores": sorted(s for s, _ in elite.items.values())}
        log.append(entry)
        if pool_out is not None:
            elite.write(pool_out)
        if progress is not None:
            progress(entry)

    def reached() -> bool:
        best = elite.best_score()
        return target is not None and best is not None and best >= target

    elite = Elite(problem, cfg.keep)
    elite.add(init or [])
    side = ModelSide(problem, out, cfg, seed)
    generation = side.resume(last_logged) if init else 0  # a resumed run keeps its pool and its model
    g = torch.Generator().manual_seed(derive_seed(seed, generation))
    moves = 0
    with open_pool(problem, workers, ray) as pool:
        speed = _Throughput(pool.workers)

        def search(starts, seed_, moves_per_start, deadline):
            stats: dict = {}
            t = time.perf_counter()
            res = improve_many(problem, starts, seed=seed_, moves_per_start=moves_per_start, pool=pool,
                               target=target, deadline=deadline, stats=stats)
            speed.add(stats.get("moves", 0), time.perf_counter() - t)
            return res, stats.get("moves", 0)

        if not init:  # a resumed run has its pool (generation 0 ended before it was saved)
            init_end = t0 + seconds * cfg.init_fraction
            # the pool's first fill: about cfg.keep searches share the initial budget
            per_start_s = seconds * cfg.init_fraction * pool.workers / max(1, cfg.keep)
            found, batch = 0, 0
            while batch == 0 or (time.perf_counter() < init_end and not reached()):
                m = cfg.moves_per_start or (CALIBRATION_MOVES if batch == 0 else speed.moves_for(per_start_s))
                improved, done = search([None] * cfg.samples, derive_seed(derive_seed(seed, 7919), batch), m,
                                        init_end)
                moves += done
                found += len(improved)
                elite.add(improved)
                batch += 1
            emit({"generation": 0, "moves": moves, "local_s": round(time.perf_counter() - t0, 2), "train_s": 0.0,
                  "sample_s": 0.0, "grpo_s": 0.0, "new": found, "distinct": len(elite.items),
                  "valid_before_repair": None, "decodable": None, "novelty": None, "moves_per_start": m}, elite)
        while time.perf_counter() < end and not reached():
            lines = [x for x in _training_lines(problem, elite, cfg) if x]
            if not lines:  # every kept construction encodes to "" (e.g. n = 1): nothing for a model to learn
                break
            generation += 1
            # training may use the model's share of what is left, so that sampling and the local
            # search still run and the generation is logged inside the budget
            left = end - time.perf_counter()
            fit = side.fit(lines, generation,
                           deadline=time.perf_counter() + max(1.0, left * (1.0 - cfg.local_share)))
            grpo_s = 0.0
            if use_grpo and generation > 1 and time.perf_counter() < end:
                from .score_rl import grpo_on_score

                t1 = time.perf_counter()
                grpo_on_score(side, problem, cfg, g, deadline=end)
                grpo_s = time.perf_counter() - t1
            if time.perf_counter() >= end:
                break
            t1 = time.perf_counter()
            strings = side.sample(cfg.samples, g)
            sample_s = time.perf_counter() - t1
            decoded, bad = decode_many(problem, strings)
            valid = [c for c in decoded if problem.is_valid(c)]
            novel = sum(problem.key(c) not in elite.items for c in valid)
            # the local search gets local_share of the generation's wall clock
            model_s = fit["train_s"] + grpo_s + sample_s
            local_budget = model_s * cfg.local_share / max(1e-6, 1.0 - cfg.local_share)
            m = cfg.moves_per_start or speed.moves_for(local_budget * pool.workers / max(1, len(decoded)))
            t1 = time.perf_counter()
            improved, done = search(decoded, seed * 1_000_003 + generation, m, end)
            local_s = time.perf_counter() - t1
            moves += done
            new = elite.add(improved)
            emit({"generation": generation, "moves": moves, "local_s": round(local_s, 2),
                  "train_s": round(fit["train_s"], 2), "sample_s": round(sample_s, 2), "grpo_s": round(grpo_s, 2),
                  "new": len(improved), "distinct": new,
                  "valid_before_repair": len(valid) / len(strings), "decodable": 1 - bad / len(strings),
                  "novelty": novel / len(valid) if valid else 0.0, "moves_per_start": m}, elite)
    ranked = elite.ranked()
    return LocalResult(best=[c for _, c in ranked], scores=[s for s, _ in ranked], log=log, moves=moves,
                       seconds=time.perf_counter() - t0)
