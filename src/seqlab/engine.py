"""One run state for every optimisation loop: pretraining (train.py), every post-training
algorithm (post/runner.py) and discovery's score-RL (discover/score_rl.py).

It owns what the loops used to copy from each other:
- device and autocast choice, torch threads;
- the optimizer (AdamW, weight decay on matrices only) and its learning-rate schedule
  (linear warmup, then cosine decay to `min_lr_ratio * lr`; 1.0 keeps it constant);
- the update step: the loop's forward/backward (any number of micro-batches), the gradient
  sum over data-parallel ranks, clipping, the non-finite stop that names the last good
  checkpoint, the optimizer step;
- the progress bar (rank 0 only);
- the checkpoints (the format is checkpoint.py's), written atomically, that resume
  exactly: the parameters the optimizer updates (only the adapters for LoRA: the frozen
  base is rebuilt by the loop from its starting point), the optimizer state, every RNG
  (torch's, CUDA's, each named generator of the loop), the step and the loop's own small
  JSON state (counters, best value, ...).

Data parallelism (torchrun): the engine joins the process group torchrun describes in the
environment (gloo on CPU, nccl on CUDA). Every loop computes, on each rank, *its share of
the global batch's loss*: its rows' terms divided by the global batch's normaliser (tokens,
rows), so that the shares add up to the one-process loss. The engine sums the gradients
(and the logged loss) over ranks with one all-reduce of a flat buffer after the loop's
backward passes. That is what torch's DistributedDataParallel computes, but DDP hooks only
`forward()` calls of one wrapped module, while the post-training loops run their models
through the sampler, `continuation_logits` and several backward passes per update; one
reduce per update is also what DDP's `no_sync` accumulation reduces to. Rank 0 alone
writes metrics, checkpoints and samples.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from . import atomic
from .checkpoint import (STATE_JSON, STATE_TENSORS, WEIGHTS, latest_checkpoint, load_tensors, load_trained,
                         save_trained, trains_everything)
from .errors import SeqlabError


# ---------------------------------------------------------------- device and precision

def resolve_device(name: str) -> torch.device:
    """`cuda` under torchrun means this process's GPU, cuda:LOCAL_RANK."""
    if name == "cuda" and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        name = f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SeqlabError(f"device '{name}' requested but CUDA is not available on this machine")
    if name == "mps" and not torch.backends.mps.is_available():
        raise SeqlabError("device 'mps' requested but MPS is not available on this machine")
    try:
        return torch.device(name)
    except RuntimeError:
        raise SeqlabError(f"unknown device '{name}' (use cpu, cuda, cuda:N or mps)") from None


def autocast_dtype(dtype: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast on CUDA when supported ('auto'); float32 elsewhere unless asked."""
    if dtype == "float32":
        return None
    if dtype == "bfloat16":
        return torch.bfloat16
    if device.type == "cuda" and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return None


def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------- data parallel ranks

@dataclass(frozen=True)
class Ranks:
    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, n: int, what: str) -> slice:
        """This rank's contiguous slice of a global batch of n items (n must divide evenly:
        then every rank's share is the same size and the global batch means what it does
        in one process)."""
        if n % self.world:
            raise SeqlabError(f"{what} = {n} does not split evenly over {self.world} processes; "
                              f"use a multiple of {self.world}")
        size = n // self.world
        return slice(self.rank * size, (self.rank + 1) * size)

    def split(self, n: int) -> slice:
        """This rank's contiguous part of n items when they need not split evenly (the
        first n % world ranks take one more)."""
        size, extra = divmod(n, self.world)
        start = self.rank * size + min(self.rank, extra)
        return slice(start, start + size + (self.rank < extra))


def ranks(device: torch.device | None = None) -> Ranks:
    """The torchrun process group (joined on first use), or one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Ranks()
    import torch.distributed as dist

    if not dist.is_initialized():
        backend = "nccl" if device is not None and device.type == "cuda" else "gloo"
        dist.init_process_group(backend)
    return Ranks(dist.get_rank(), dist.get_world_size())


def leave_process_group() -> None:
    """At the end of a torchrun command: wait for every rank (rank 0 writes the results
    last), then close the group (left open, gloo's threads abort the process at exit)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(t: torch.Tensor, r: Ranks) -> torch.Tensor:
    if r.world > 1:
        import torch.distributed as dist

        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def weighted_sum(values: dict, weight: float, r: Ranks) -> dict:
    """sum over ranks of weight * value, for each value that is a number on every rank: a
    global mean from the ranks' local means, each weighted by its share of the global batch
    (its tokens or its rows)."""
    keys = [k for k, v in values.items() if isinstance(v, (int, float))]
    if r.world == 1 or not keys:
        return values
    t = all_reduce_sum(torch.tensor([float(values[k]) * weight for k in keys], dtype=torch.float64), r)
    return {**values, **{k: float(v) for k, v in zip(keys, t)}}


def barrier(r: Ranks) -> None:
    if r.world > 1:
        import torch.distributed as dist

        dist.barrier()


def all_gather_cat(t: torch.Tensor, r: Ranks) -> torch.Tensor:
    """Every rank's tensor (same shape on every rank) concatenated along dim 0, in rank order."""
    if r.world == 1:
        return t
    import torch.distributed as dist

    parts = [torch.empty_like(t) for _ in range(r.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts)


def all_gather_padded(t: torch.Tensor, r: Ranks, pad_value) -> torch.Tensor:
    """Every rank's (n, T_rank, ...) tensor, right-padded with pad_value to the widest T and
    concatenated along dim 0 in rank order (same n on every rank)."""
    if r.world == 1:
        return t
    width = int(max(all_gather_objects(t.size(1), r)))
    if t.size(1) < width:
        pad = t.new_full((t.size(0), width - t.size(1), *t.shape[2:]), pad_value)
        t = torch.cat([t, pad], 1)
    return all_gather_cat(t, r)


def all_gather_objects(obj, r: Ranks) -> list:
    """Every rank's picklable object, in rank order (used for short lists: rewards' texts)."""
    if r.world == 1:
        return [obj]
    import torch.distributed as dist

    out = [None] * r.world
    dist.all_gather_object(out, obj)
    return out


# ---------------------------------------------------------------- optimizer and schedule

@dataclass
class OptimSettings:
    lr: float
    beta1: float = 0.9
    beta2: float = 0.99
    weight_decay: float = 0.0
    grad_clip: float = 1.0  # 0: no clipping
    warmup_steps: int = 0
    steps: int = 1
    min_lr_ratio: float = 1.0

    @classmethod
    def of(cls, cfg) -> "OptimSettings":
        """From a train or post config (they share these key names)."""
        return cls(**{k: getattr(cfg, k) for k in cls.__dataclass_fields__})


def make_optimizer(model: torch.nn.Module, s) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices (dim >= 2: linear and embedding weights) only."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    groups = [{"params": decay, "weight_decay": s.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    # torch's fused kernel: one op per tensor instead of ~10; on a CPU the default per-tensor
    # loop took 0.64 ms per step for a 210k-parameter transformer, fused 0.16 ms (same
    # numbers to 1e-7). Devices or dtypes it does not cover keep the default.
    fused = all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=1e-8, fused=fused or None)


def lr_factor(step: int, s) -> float:
    """Multiplier of the base lr for update number `step` (0-based): warmup, then cosine."""
    if step < s.warmup_steps:
        return (step + 1) / s.warmup_steps
    span = max(1, s.steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Progress:
    """A progress line on stderr (tqdm) with the loop's numbers and ETA."""

    def __init__(self, total: int, initial: int, enabled: bool):
        self.bar = None
        if enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=initial, file=sys.stderr, dynamic_ncols=True,
                            unit="step", leave=True, mininterval=0.1 if sys.stderr.isatty() else 5.0)

    def update(self, n: int, **postfix):
        if self.bar is not None:
            self.bar.update(n)
            if postfix:
                self.bar.set_postfix(postfix, refresh=False)

    def close(self):
        if self.bar is not None:
            self.bar.close()


@dataclass
class Update:
    loss: float  # the global batch's loss (shares summed over ranks)
    grad_norm: float  # before clipping; 0 when nothing was updated
    lr: float
    stepped: bool


# ---------------------------------------------------------------- the engine

class Engine:
    """The optimizer, schedule, update step and checkpoints of one loop's `trained` module.

    `generators`: the loop's named sampling/batching RNGs, saved and restored with every
    checkpoint. `run_dir`: where checkpoints go (None: the loop keeps none, e.g. score-RL
    inside a discovery run). `hint`: what the non-finite stop tells the user to change."""

    def __init__(self, trained: torch.nn.Module, settings: OptimSettings, *, device: torch.device | None = None,
                 amp: torch.dtype | None = None, run_dir: str | Path | None = None,
                 generators: dict[str, torch.Generator] | None = None, keep: int = 1,
                 hint: str = "lower the learning rate"):
        self.trained = trained
        self.settings = settings
        self.device = device or torch.device("cpu")
        self.amp = amp  # autocast dtype for update()'s compute (autocast_dtype); None: full precision
        self.ranks = ranks(self.device)
        self.opt = make_optimizer(trained, settings)
        self.params = [p for p in trained.parameters() if p.requires_grad]
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.generators = generators or {}
        self.keep = keep
        self.hint = hint
        self.last_good: Path | None = latest_checkpoint(self.run_dir) if self.run_dir else None

    # the update step ----------------------------------------------------------
    def update(self, step: int, compute: Callable[[], torch.Tensor]) -> Update:
        """One optimizer update at schedule position `step` (0-based).

        `compute()` returns this rank's share of the loss. A tensor with a graph is
        backpropagated here; a loop that accumulates micro-batches backpropagates them
        itself and returns the value. No gradient on any rank (e.g. a rejection round that
        kept nothing) means no update: AdamW's momentum and weight decay would still move
        the weights."""
        s = self.settings
        lr = s.lr * lr_factor(step, s)
        for g in self.opt.param_groups:
            g["lr"] = lr
        self.opt.zero_grad(set_to_none=True)
        with self.autocast():
            loss = compute()
        if loss.requires_grad:
            loss.backward()
        loss_value, has_grad = self._reduce(loss.detach())
        if not math.isfinite(loss_value):
            self._stop(step, f"loss={loss_value}")
        if not has_grad:
            return Update(loss_value, 0.0, lr, False)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, s.grad_clip if s.grad_clip > 0 else math.inf))
        if not math.isfinite(grad_norm):
            self._stop(step, f"gradient norm={grad_norm}")
        self.opt.step()
        return Update(loss_value, grad_norm, lr, True)

    def autocast(self):
        """The precision context of the loop's forward passes (a no-op in full precision)."""
        return torch.autocast(self.device.type, dtype=self.amp or torch.float32, enabled=self.amp is not None)

    def _reduce(self, loss: torch.Tensor) -> tuple[float, bool]:
        """Sum gradients and the loss over ranks (one flat buffer); any gradient anywhere?
        A parameter no rank computed a gradient for keeps none, as in one process (AdamW
        skips it: no weight decay, no momentum step)."""
        local_grad = any(p.grad is not None for p in self.params)
        if self.ranks.world == 1:
            return float(loss), local_grad
        dtype = self.params[0].dtype
        flags = torch.tensor([float(p.grad is not None) for p in self.params], dtype=dtype, device=loss.device)
        flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in self.params]
                         + [flags, loss.reshape(1).to(dtype)])
        all_reduce_sum(flat, self.ranks)
        n = len(self.params)
        had_grad = flat[-1 - n:-1] > 0
        offset = 0
        for p, has in zip(self.params, had_grad.tolist()):
            size = p.numel()
            p.grad = flat[offset: offset + size].view_as(p).clone() if has else None
            offset += size
        return float(flat[-1]), bool(had_grad.any())

    def _stop(self, step: int, what: str):
        where = (f"the last good checkpoint is {self.last_good}" if self.last_good
                 else "no checkpoint was written yet")
        raise SeqlabError(f"non-finite loss or gradient at step {step + 1} ({what}); stopped, {where}; "
                          f"{self.hint} and --resume")

    # checkpoints ----------------------------------------------------------------
    def save(self, step: int, loop_state: dict | None = None, whole_model: bool = False) -> Path | None:
        """A checkpoint at `step` (rank 0 writes; the others return None). `whole_model`: the
        trained module is the run's model itself, so the checkpoint's weights load as one
        (`checkpoint.load_model(run, "last")`)."""
        if not self.ranks.main or self.run_dir is None:
            return None
        root = self.run_dir / "checkpoints"
        name = f"step-{step:08d}"
        with atomic.atomic_dir(root / name) as tmp:
            save_trained(self.trained, tmp / WEIGHTS)
            torch.save(self._rng_and_optimizer(), tmp / STATE_TENSORS)
            whole = whole_model and trains_everything(self.trained)
            (tmp / STATE_JSON).write_text(json.dumps({"step": step, "whole_model": whole, "loop": loop_state or {}},
                                                     indent=2), encoding="utf-8")
        atomic.write_text(root / "latest", name + "\n")
        old = sorted(p for p in root.glob("step-*") if p.is_dir() and p.name != name)
        for p in old[: max(0, len(old) - (self.keep - 1))]:
            shutil.rmtree(p, ignore_errors=True)
        self.last_good = root / name
        return root / name

    def _rng_and_optimizer(self) -> dict:
        state = {"optimizer": self.opt.state_dict(), "torch_rng": torch.get_rng_state(),
                 "generators": {k: g.get_state() for k, g in self.generators.items()}}
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def restore(self) -> tuple[int, dict]:
        """Load the newest checkpoint into the trained module, optimizer and RNGs; returns
        (step, the loop's state)."""
        path = latest_checkpoint(self.run_dir) if self.run_dir else None
        if path is None:
            raise SeqlabError(f"{self.run_dir}: nothing to resume (no checkpoint found)")
        load_trained(self.trained, path / WEIGHTS)
        extra = load_tensors(path / STATE_TENSORS)
        self.opt.load_state_dict(extra["optimizer"])
        torch.set_rng_state(extra["torch_rng"])
        if self.device.type == "cuda" and "cuda_rng" in extra:
            torch.cuda.set_rng_state(extra["cuda_rng"], self.device)
        for k, g in self.generators.items():
            if k in extra["generators"]:
                g.set_state(extra["generators"][k])
        state = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        self.last_good = path
        return state["step"], state["loop"]

