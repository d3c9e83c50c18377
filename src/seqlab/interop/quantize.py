"""`seqlab quantize RUN --out RUN_Q --bits 8|4 [--group-size G] [--keep-budget F]`.

Weight-only quantization of a transformer run (models/quant.py has the formats and
kernels). The result is an ordinary run directory: config.json and tokenizer.json as
the source's, best.safetensors with the quantized layers, and quantization.json with
the layout ({layer: bits}) and the report; `sample`, `eval`, `chat`, `heatmap` and the
benchmarks load it like any run.

A 4-bit layer whose inputs the group size does not divide goes to 8 bits (reported as
fallback_8bit; llama.cpp falls back the same way).

The output head: with --bits 4 it is quantized to 8 bits unless `--head-bits 4` says
otherwise. llama.cpp's 4-bit files do the same (SmolLM2's Q4_1 GGUF keeps token_embd, the
tied head, in Q8_0), and measured on SmolLM2-135M the 49,152 x 576 head alone at 4 bits
took the top-1 agreement with float32 from 96% to 80%.

Dynamic (mixed) precision, `--keep-budget F`: quantizing every layer to the same low
precision hurts some layers far more than others. Each layer's sensitivity is measured
as the KL divergence from the float32 model's next-token distribution to the model with
that layer alone quantized, averaged over the calibration tokens. The most sensitive
layers are kept one step up (8 bits when --bits 4, float32 when --bits 8) while the kept
layers hold at most F of the quantizable weights; the report lists every layer's KL and
which were kept.

Calibration text: `--calibration FILE` (one example per line), else sequences sampled
from the float32 model itself (its own distribution is what the quantized model should
keep). The report's KL and top-1 agreement are measured on the same tokens.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
import torch.nn.functional as F

from .. import atomic
from ..checkpoint import QUANTIZATION, load_model, load_quantization, save_best
from ..errors import SeqlabError
from ..models.quant import INT4_GROUP_SIZES, QuantLinear, fit_layout, quantizable_linears, quantize_model


def calibration_batch(model, tok, path: str | None, n: int = 16, max_tokens: int = 64, seed: int = 0):
    """(ids (B, T), mask (B, T-1) of the positions whose next token counts)."""
    from ..sampling import DecodeRule, generate

    limit = min(max_tokens, model.max_len or max_tokens)
    if path:
        from ..data.lines import read_lines

        rows = [tok.encode_prompt(line)[:limit] for line in read_lines(Path(path))[:n]]
    else:
        gen = generate(model, [[tok.bos_id]] * n, limit - 1, DecodeRule(temperature=1.0), tok.eos_id, tok.pad_id,
                       generator=torch.Generator().manual_seed(seed))
        rows = [[tok.bos_id] + r for r in gen.rows()]
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T - 1)
    for b, r in enumerate(rows):
        ids[b, :len(r)] = torch.tensor(r)
        mask[b, :len(r) - 1] = 1.0
    if mask.sum() == 0:
        raise SeqlabError("quantize: the calibration text gives no tokens to measure on")
    return ids, mask


@torch.no_grad()
def log_probs(model, ids: torch.Tensor) -> torch.Tensor:
    logits, _ = model(ids[:, :-1])
    return F.log_softmax(logits.float(), -1)


def agreement(ref_lp: torch.Tensor, lp: torch.Tensor, mask: torch.Tensor) -> dict:
    """Mean KL(float32 || quantized) per token and the top-1 agreement, over the mask."""
    kl = (ref_lp.exp() * (ref_lp - lp)).sum(-1)
    n = mask.sum()
    top1 = (ref_lp.argmax(-1) == lp.argmax(-1)).float()
    return {"kl": float((kl * mask).sum() / n), "top1_agreement": float((top1 * mask).sum() / n)}


def sensitivities(model, names: list[str], layout: dict[str, int], group_size: int, ids, mask,
                  ref_lp) -> dict[str, float]:
    """KL to float32 with each layer alone quantized to its bits in `layout` (the others float32)."""
    out = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        lin = getattr(parent, child)
        setattr(parent, child, QuantLinear.from_linear(lin, layout[name], group_size))
        try:
            out[name] = agreement(ref_lp, log_probs(model, ids), mask)["kl"]
        finally:
            setattr(parent, child, lin)
    return out


def choose_kept(sens: dict[str, float], sizes: dict[str, int], budget: float) -> list[str]:
    """The most sensitive layers, in order, while their weights fit in `budget` of the total
    (a layer that does not fit is skipped; a smaller, less sensitive one may still fit)."""
    total, used, kept = sum(sizes.values()), 0, []
    for name in sorted(sens, key=lambda n: -sens[n]):
        if used + sizes[name] <= budget * total:
            kept.append(name)
            used += sizes[name]
    return kept


def file_bytes(path: Path) -> int:
    return Path(path).stat().st_size


def quantize_run(src: str | Path, out: str | Path, bits: int, group_size: int = 32, keep_budget: float = 0.0,
                 calibration: str | None = None, samples: int = 16, head_bits: int | None = None, log=None,
                 source_name: str | None = None) -> dict:
    src, out = Path(src), Path(out)
    if bits not in (4, 8):
        raise SeqlabError(f"quantize: --bits must be 8 or 4, got {bits}")
    if group_size not in INT4_GROUP_SIZES:
        raise SeqlabError(f"quantize: --group-size must be one of {', '.join(map(str, INT4_GROUP_SIZES))} "
                          f"(what the 4-bit kernel takes), got {group_size}")
    if not 0.0 <= keep_budget < 1.0:
        raise SeqlabError(f"quantize: --keep-budget must be in [0, 1), got {keep_budget}")
    from ..models.lora import has_adapter

    if has_adapter(src):
        raise SeqlabError(f"{src}: a LoRA run kept as base + adapter; quantize its base run (the adapter "
                          f"stays float on top of it), or a merged run")
    if load_quantization(src) is not None:
        raise SeqlabError(f"{src}: already quantized; quantize the float run it came from")
    if out.exists() and any(out.iterdir()):
        raise SeqlabError(f"{out} already exists and is not empty; choose another --out")
    model, tok, _ = load_model(src)
    names = quantizable_linears(model)
    head_bits = head_bits if head_bits is not None else (8 if bits == 4 else bits)
    if head_bits not in (4, 8):
        raise SeqlabError(f"quantize: --head-bits must be 8 or 4, got {head_bits}")
    gs = group_size if 4 in (bits, head_bits) else 0
    layout, fallback = fit_layout(model, {n: head_bits if n == "lm_head" else bits for n in names}, group_size)
    sizes = {n: model.get_submodule(n).weight.numel() for n in names}
    params = sum(p.numel() for p in model.parameters())  # the float model's (tied weights once)
    ids, mask = calibration_batch(model, tok, calibration, n=samples)
    ref_lp = log_probs(model, ids)
    report: dict = {"bits": bits, "head_bits": head_bits, "group_size": gs, "keep_budget": keep_budget,
                    "calibration": calibration or f"{samples} samples of the float32 model",
                    "calibration_tokens": int(mask.sum()), "fallback_8bit": fallback}
    if keep_budget > 0:
        if log:
            log(f"measuring the sensitivity of {len(names)} layers on {int(mask.sum())} tokens")
        sens = sensitivities(model, names, layout, group_size, ids, mask, ref_lp)
        kept = choose_kept(sens, sizes, keep_budget)
        kept_bits = {}
        for n in kept:  # one step up: 4 -> 8 bits, 8 -> float32
            kept_bits[n] = 8 if layout[n] == 4 else 32
            if kept_bits[n] == 32:
                layout.pop(n)
            else:
                layout[n] = 8
        report["sensitivity_kl"] = {n: round(v, 6) for n, v in sorted(sens.items(), key=lambda kv: -kv[1])}
        report["kept"] = {n: {"bits": kept_bits[n], "kl_alone": round(sens[n], 6), "weights": sizes[n]}
                          for n in kept}
        report["kept_share"] = sum(sizes[n] for n in kept) / sum(sizes.values())
    quantize_model(model, layout, group_size)
    report.update(agreement(ref_lp, log_probs(model, ids), mask))
    with atomic.atomic_dir(out) as tmp:
        for name in ("config.json", "tokenizer.json"):
            shutil.copyfile(src / name, tmp / name)
        save_best(tmp, model, {"quantized_from": str(src), "bits": bits})
        atomic.write_json(tmp / QUANTIZATION, {"bits": bits, "group_size": gs, "layers": layout,
                                               "source": source_name or str(src), "report": report})
    report.update(out=str(out), source=source_name or str(src), params=params, bytes=file_bytes(out / "best.safetensors"),
                  source_bytes=file_bytes(src / "best.safetensors") if (src / "best.safetensors").exists() else None,
                  layers={b: sum(1 for v in layout.values() if v == b) for b in sorted(set(layout.values()))},
                  float_layers=len(names) - len(layout))
    return report


def import_quantized(src: str, out: str | Path, log=None) -> dict:
    """`seqlab import SRC --keep-quantized`: the model as a 4-bit run (group 32, head at 8
    bits) without a float32 run on disk. For a GGUF file's Q4_1 and Q4_0 blocks of 32 this
    is the file's own grid: the 4-bit quantizer takes each group's minimum and maximum, which
    for a block that spans its range (every block of SmolLM2's file) gives back the block's
    own 4-bit values (tested); only its scale and offset are rounded from float16 to the
    kernel's bfloat16. Q8_0 tensors (SmolLM2's head) are re-quantized per output channel."""
    import tempfile

    from .importer import import_model

    out = Path(out)
    if (out / "config.json").exists():
        raise SeqlabError(f"{out} already holds a run; choose another --out")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.float.") as tmp:
        r = import_model(src, Path(tmp) / "run")
        q = quantize_run(Path(tmp) / "run", out, 4, 32, log=log, source_name=str(r["source"]))
    return {**r, "out": str(out), "bytes": q["bytes"],
            "quantized": {k: q[k] for k in ("bits", "head_bits", "group_size", "kl", "top1_agreement",
                                            "fallback_8bit")}}
