"""Command line: train one configuration, print progress and the per-layer result, write metrics + checkpoint.

    python -m ouvae.train --preset paper-mlp-4x40 --rho 0.9 --dataset mnist --epochs 30 --out runs/x

Any Config field is an option (`--latent-dims 4x40`, `--beta-schedule cosine`, ...). The budget is `--epochs`
or `--steps`. The output folder receives `config.json`, `metrics.jsonl` (one line per evaluation),
`metrics.json` (the final evaluation, with explicit `top_kl` / `top_active_units`) and `checkpoint.pt`;
`--resume` continues from that checkpoint.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from . import __version__
import torch

from .checkpoint import CHECKPOINT_FILE, CheckpointFormatError
from .config import Config, ConfigError, PRESETS, add_config_arguments, format_latent_dims, overrides_from_args
from .data import DataError
from .memory import reset_peak_memory
from .records import BOUND_MODEL_NAMES, bound_model, results_row
from .trainer import Trainer, TrainingStalled, pick_device


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m ouvae.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="demo", help=f"named preset, one of {sorted(PRESETS)} (default: demo)")
    p.add_argument("--out", default=None, help="output folder (default: runs/<preset>-rho<rho>-seed<seed>)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")
    p.add_argument("--quiet", action="store_true", help="print only the final table")
    p.add_argument("--version", action="version", version=f"ouvae {__version__}")
    add_config_arguments(p)
    return p


def format_layer_table(metrics: dict[str, Any]) -> str:
    """Per-layer KL and active units, top layer first (the appendix's order) and labelled."""
    kls, aus = metrics["layer_kl"], metrics["layer_active_units"]
    lines = ["layer            KL (nats)   active units"]
    for l in reversed(range(len(kls))):
        name = f"z{l + 1}" + (" (top)" if l == len(kls) - 1 else "")
        lines.append(f"{name:<14} {kls[l]:>11.4f}   {aus[l]:>12d}")
    return "\n".join(lines)


def format_progress(m: dict[str, Any]) -> str:
    return (f"epoch {m['epoch']:>4}  step {m['step']:>7}  ELBO {m['elbo']:9.3f}  L_{m['iw_k']} {m['iw_bound']:9.3f}  "
            f"top KL {m['top_kl']:7.4f}  top AU {m['top_active_units']:>3}  AU {m['layer_active_units']}  "
            f"{m['time_per_epoch_s']:.2f}s/epoch" + (f"  skipped {m['skipped_steps']}" if m["skipped_steps"] else ""))


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        overrides = overrides_from_args(args)
        cfg = Config.from_preset(args.preset, **overrides)
        out = Path(args.out or f"runs/{cfg.preset}-rho{cfg.rho:g}-seed{cfg.seed}")
        # This process is the run's owner: it sets the thread count and starts the run's memory peak.
        if cfg.num_threads is not None:
            torch.set_num_threads(cfg.num_threads)
        reset_peak_memory(pick_device(cfg.device))

        def report(trainer: Trainer, metrics: dict[str, Any]) -> None:
            with open(out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(metrics) + "\n")
            trainer.save_checkpoint(out)
            if not args.quiet:
                print(format_progress(metrics), flush=True)

        if args.resume:
            if not (out / CHECKPOINT_FILE).is_file():
                raise FileNotFoundError(f"--resume: no {CHECKPOINT_FILE} in {out}; run without --resume first")
            trainer = Trainer.from_checkpoint(out, callback=report, **overrides)  # e.g. a larger --epochs
        else:
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.jsonl").unlink(missing_ok=True)
            trainer = Trainer(cfg, callback=report)
        (out / "config.json").write_text(json.dumps(trainer.cfg.to_dict(), indent=2))
        if not args.quiet:
            c = trainer.cfg
            print(f"ouvae {__version__}: {c.preset} on {c.dataset} ({trainer.data.split_note}, "
                  f"{trainer.data.binarization} binarization), latents {format_latent_dims(c.latent_dims)}, "
                  f"rho={c.rho} K={c.smooth_samples} smooth={c.smooth} ({c.smooth_space} reading), {trainer.total_steps} steps on "
                  f"{trainer.device}", flush=True)
        final = trainer.fit()
    except (ConfigError, DataError, TrainingStalled, CheckpointFormatError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = results_row(trainer.cfg, trainer.data, final)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    model = bound_model(trainer.cfg)
    print(f"\nfinal ({final['split']} split, rho_eval={trainer.cfg.effective_rho_eval}): "
          f"ELBO {final['elbo']:.3f}  L_{final['iw_k']} {final['iw_bound']:.3f} nats, bounds on log p(x) of "
          f"{BOUND_MODEL_NAMES[model]}")
    if final["smoothed_elbo"] != final["elbo"]:
        print(f"smoothed training objective {final['smoothed_elbo']:.3f} nats (KL {final['smoothed_kl_total']:.3f}): "
              f"no bound on log p(x) in the posterior reading")
    print(format_layer_table(final))
    print(f"top layer: KL {final['top_kl']:.4f} nats, {final['top_active_units']}/{trainer.cfg.top_dim} active units")
    print(f"wrote {out / 'metrics.json'} and {out / CHECKPOINT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
