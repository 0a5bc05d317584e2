"""Turn a training run into shipped weights: ``Resources/Weights/NAME.pt`` + ``.sha256`` + model card.

    python -m SHMoAReg.training.ship RUN --name abdomen-ct [--also-suits same-modality] \
        --command "shmoareg train ..." [--checkpoint best|last] [--evaluation EVAL.md] [--output-dir Resources/Weights]

Takes ``RUN/best.pt`` (the best validation checkpoint; ``--checkpoint last``: the run's final weights, which no
validation Dice chose), stores it in half precision
(the network runs in float32: :func:`SHMoAReg.weights.load_weights` converts back),
adds what a user needs to judge it to the metadata (training grid, validation
history, hardware and load, the command) and writes ``NAME.md``, the model card,
from the run's own ``run.json`` so that every figure in it comes from the run. An
``--evaluation`` file (measured afterwards through ``shmoareg register``) is copied
into the card verbatim.
"""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

__all__ = ["ship", "model_card"]

MAX_BYTES = 10 * 2**20


def _image_only(info: dict, synthesis: dict) -> str:
    """The model card's words for the run's image-only subjects (real images without labels), if it had any."""
    count = info.get("n_image_only_subjects") or 0
    if not count:
        return ""
    names = ", ".join(f"`{_relative(source)}`" for source in info.get("image_only_sources", []))
    return (f", plus {count} real image{'s' if count > 1 else ''} without labels ({names}), each trained against "
            f"itself under two transforms "
            f"with a known displacement ({100 * synthesis.get('image_only_share', 0):.0f} % of the samples)")


def _history_table(history: list[dict]) -> str:
    lines = ["| step | training min | s / step | load (1 min) | train loss | train Dice loss | known-field EPE (vox) | "
             "val Dice | val Dice, recursive passes | val Dice before | val SDlogJ | val folding % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in history:
        def value(key: str, fmt: str = "{:.3f}") -> str:
            return fmt.format(row[key]) if row.get(key) is not None else ""
        lines.append(f"| {row['step']} | {row['train_seconds'] / 60:.1f} | {value('seconds_per_step')} | "
                     f"{value('load_avg_1min', '{:.2f}')} | {value('train_loss')} | {value('train_dice_loss')} | "
                     f"{value('train_known_epe')} | {value('val_dice')} | {value('val_dice_passes')} | {value('val_dice_before')} | "
                     f"{value('val_sdlogj')} | {100 * row.get('val_folding', 0.0):.3f} |")
    return "\n".join(lines)


def _contrast(synthesis: dict) -> str:
    """The contrast prior's sentence, if the run used one (:mod:`.contrast`)."""
    if not synthesis.get("contrast_prior") or not synthesis.get("contrast_prior_prob"):
        return ""
    return (f"; {100 * synthesis['contrast_prior_prob']:.0f} % rendered instead with the `{synthesis['contrast_prior']}` "
            f"contrast prior (labels of one tissue share an intensity, tissues in their usual order, each tissue and "
            f"the overall contrast jittered, nothing outside the labels)")


def _inter_subject(info: dict) -> str:
    """How the inter-subject pairs were supervised: by label Dice and similarity, or also by a teacher (:mod:`.teacher`)."""
    teacher = info.get("teacher")
    if not teacher:
        return "supervised by label Dice and similarity only"
    return (f"supervised by a teacher field as well as label Dice and similarity: the {teacher.get('pairs')} ordered "
            f"subject pairs were registered once by their label maps (a label-driven optimisation on the training grid, "
            f"Dice {teacher.get('dice_before', float('nan')):.3f} after centring -> {teacher.get('dice', float('nan')):.3f}, "
            f"folding at most {100 * teacher.get('max_folding', 0.0):.2f} %, {teacher.get('seconds', 0) / 60:.1f} min), "
            f"and the network regresses that answer through the patches' random transforms (end-point error on the "
            f"fixed subject's label box)")


def _initialised(train: dict) -> str:
    """The sentence saying which weights the run started from, if not from a random network."""
    if not train.get("init_weights"):
        return ""
    start = Path(train["init_weights"]).name  # a shipped name, or a file named without the machine's folders
    return (f"\n- Started from the weights `{start}` (earlier runs; their training is in the git history "
            f"of this card and below), not from a random network; the steps and minutes above are this run's.")


def _cascade(train: dict) -> str:
    """The sentence on cascade steps (``--cascade-share``), if the run had any."""
    share = train.get("cascade_share") or 0.0
    if not share:
        return ""
    return (f"\n- Cascade steps: {100 * share:.0f} % of the steps train the second pass, on the moving image warped by the "
            f"network's own first pass (as `register --network-passes` applies it; `training/cascade.py`).")


def _relative(path) -> str:
    """``path`` relative to the repository root when it lies inside it (cards must not name a machine's folders)."""
    root = Path(__file__).resolve().parents[2]
    # inside the repository, else beside it (the shared data, as the cards' commands name it)
    for base, prefix in ((root, Path()), (root.parent, Path(".."))):
        if base == base.parent:  # never relative to the file system's root
            continue
        try:
            return str(prefix / Path(path).resolve().relative_to(base))
        except (TypeError, ValueError):
            continue
    return str(path)


def _folding_term(train: dict) -> str:
    """The folding penalty's part of the card's loss line; empty for runs without it (and those before it existed)."""
    weight = train.get("w_folding") or 0.0
    return f"`{weight} *` folding penalty (mean of relu(0.1 - det J)) + " if weight else ""


def _command_load(info: dict) -> str:
    """The 1-minute load average when the training command began (before preprocessing and teacher fields), if
    recorded: whether the machine was idle."""
    load = info.get("load_avg_at_command_start")
    return "" if not load else f"load average {load[0]:.2f} when the command started (before preprocessing), "


def model_card(name: str, info: dict, sha256: str, size: int, command: str, evaluation: str = "") -> str:
    """The model card (Markdown) of shipped weights, from the run's ``run.json`` content ``info``."""
    train, synthesis = info.get("train", {}), info.get("synthesis", {})
    history = info.get("history", [])
    best = info.get("validation", {})
    suits = [info.get("preset")] + list(info.get("also_suits_presets") or [])
    loads = [row["load_avg_1min"] for row in history if row.get("load_avg_1min") is not None]
    per_step = [row["seconds_per_step"] for row in history if row.get("seconds_per_step") is not None]
    network = info.get("network", {})
    minutes = (history[-1]["train_seconds"] if history else 0) / 60  # the run's training time
    return f"""# Model card: `{name}` weights

| | |
|---|---|
| file | `{name}.pt` ({size / 2**20:.2f} MB, float16 tensors; sha256 `{sha256}`, checked on every load) |
| network | SHMoAReg (MoA encoder: {network.get('num_heads')} attention heads as experts, top-{network.get('top_k')}; SHMoE decoder: kernel sizes {network.get('kernel_sizes')} mixed per direction) - {info.get('parameters', '?')} parameters, variant `{info.get('variant')}` |
| presets | used by default with `--preset {suits[0]}`{'; also accepted with ' + ', '.join(f'`--preset {p}`' for p in suits[1:]) if suits[1:] else ''} |
| network grid | {info.get('spacing_mm')} mm isotropic (`spacing_mm`); `register` resamples the pair to it, runs the network, then instance optimisation refines on the preset's grid |
| training data | {info.get('n_training_subjects')} subjects of `{_relative(info.get('dataset'))}` (label maps; images synthesised from them){_image_only(info, synthesis)}, {len(info.get('validation_pairs', []))} held-out validation pairs of subjects never used for training |
| labels | {len(info.get('label_values', []))}: {', '.join(str(v) for v in (info.get('label_names') or {}).values())} |
| training | {history[-1]['step'] if history else '?'} optimiser steps (batch {train.get('batch_size')}, patch {info.get('patch')} voxels), {minutes:.1f} min of training on {info.get('hardware')}; {min(per_step) if per_step else float('nan'):.2f}-{max(per_step) if per_step else float('nan'):.2f} s per step; {_command_load(info)}load average {min(loads) if loads else float('nan'):.2f}-{max(loads) if loads else float('nan'):.2f} during training (the training process itself uses both cores: ~2) |
| {info.get('checkpoint', 'best')} checkpoint | step {info.get('step')} (after {info.get('train_seconds', 0) / 60:.1f} min): validation Dice {best.get('val_dice', float('nan')):.3f} (before registration {best.get('val_dice_before', float('nan')):.3f}), SDlogJ {best.get('val_sdlogj', float('nan')):.3f}, folding {100 * best.get('val_folding', 0.0):.3f} % |

## Recipe

- Loss: `{train.get('w_similarity')} * {train.get('similarity')}` similarity + `{train.get('w_smoothness')} * {train.get('smoothness')}` smoothness + `{train.get('w_dice')} *` label Dice (labels blurred by sigma {train.get('dice_sigmas')} voxels, averaged) + `{train.get('w_known')} *` end-point error on pairs with a known displacement + {_folding_term(train)}`{train.get('w_balance')} *` MoA balance + `{train.get('w_gate_balance')} *` SHMoE gate balance + `{train.get('w_z')} *` router z-loss.
- Adam, learning rate {train.get('learning_rate')} ({train.get('lr_schedule', 'constant')} schedule), seed {train.get('seed')}.{_initialised(train)}{_cascade(train)}
- Pairs: every sample synthesised from the label maps (SynthMorph-style: one random intensity per label and per background shape, blur, bias field, noise; {100 * synthesis.get('plain_background', 0):.0f} % on an untextured background){_contrast(synthesis)}. {100 * synthesis.get('intra_subject', 0):.0f} % are one subject under two transforms, made so that the displacement is known exactly (up to {synthesis.get('known_displacement_vox')} voxels: small rotation and scaling plus a smooth field) and supervised directly; the others are inter-subject pairs (random affine up to {synthesis.get('rotation_deg')} deg, {100 * synthesis.get('scale', 0):.0f} % scale, {synthesis.get('translation_vox')} voxels, smooth deformation up to {synthesis.get('displacement_vox')} voxels), {_inter_subject(info)}.

Reproduce (from the repository root, with `../shared/data` present; on an otherwise idle machine):

```bash
{command}
python -m SHMoAReg.training.ship RUN --name {name} {' '.join(f'--also-suits {p}' for p in suits[1:])}{' --checkpoint last' if info.get('checkpoint') == 'last' else ''} --command "..."
```

## Validation curve

![learning curve]({name}.learning_curve.png)

{_history_table(history)}

{evaluation}

## Intended use and limits

- Intended: a fast, smooth first estimate of a deformable registration of two {'abdominal CTs' if suits[0] == 'abdomen-ct' else 'brain T1 MRIs'} (inter-subject or follow-up) after SHMoAReg's affine pre-alignment, refined by a short instance optimisation, which is the default.
- Trained on {info.get('n_training_subjects')} label maps only, on 2 CPU cores ({minutes:.0f} min in this run{' after the earlier runs it started from' if train.get('init_weights') else ''}): far less than published registration networks. It learns to move structures by up to a few network voxels ({info.get('spacing_mm')} mm each); fine detail comes from the instance optimisation. Do not use the network alone (`--iterations 0`) for anything but a quick look.
- Not a medical device. Check every result (Dice/HD95 where labels exist, the Jacobian map, the warped image) before relying on it.
"""


def _final_weights(run: Path, model, metadata: dict, history: list[dict]) -> dict:
    """Load ``RUN/last.pt``'s weights into ``model``; the metadata of ``best.pt`` with the final step's figures."""
    from .checkpoint import load_state

    saved = load_state(run / "last.pt")
    model.load_state_dict(saved["model"])
    state = saved["state"]
    last = next((row for row in reversed(history) if row.get("step") == state["step"]), {})
    validation = {k: v for k, v in last.items() if k.startswith("val_")}
    return {**metadata, "step": state["step"], "epoch": state.get("epoch"), "train_seconds": state["train_seconds"],
            "validation": validation}


def ship(run: Path, name: str, output_dir: Path, command: str, also_suits: list[str], evaluation: str = "",
         checkpoint: str = "best") -> Path:
    """Write ``output_dir/NAME.pt`` (+ ``.sha256``), ``NAME.md`` and ``NAME.learning_curve.png`` from ``run``'s
    ``best.pt`` or, with ``checkpoint="last"``, its final weights (``last.pt``)."""
    from ..weights import load_weights, save_weights

    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    info = json.loads((run / "run.json").read_text())
    model, weights_info = load_weights(run / "best.pt")
    chosen = weights_info.metadata
    if checkpoint == "last":
        chosen = _final_weights(run, model, chosen, info.get("history", []))
    metadata = {**chosen, "also_suits_presets": also_suits, "history": info.get("history", []), "checkpoint": checkpoint,
                "command": command, "parameters": sum(p.numel() for p in model.parameters())}
    path = output_dir / f"{name}.pt"
    digest = save_weights(model, path, weights_info.preset, metadata, half=True)
    size = path.stat().st_size
    if size > MAX_BYTES:
        path.unlink()
        raise ValueError(f"{path}: {size / 2**20:.1f} MB is over the {MAX_BYTES / 2**20:.0f} MB limit for shipped weights")
    if (run / "learning_curve.png").is_file():
        shutil.copyfile(run / "learning_curve.png", output_dir / f"{name}.learning_curve.png")
    card = model_card(name, {**info, **metadata}, digest, size, command, evaluation)
    (output_dir / f"{name}.md").write_text(card, encoding="utf-8")
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m SHMoAReg.training.ship", description=__doc__.split("\n\n")[0])
    parser.add_argument("run", type=Path, help="a training run folder (run.json, best.pt, learning_curve.png)")
    parser.add_argument("--name", required=True, help="shipped name, e.g. abdomen-ct")
    parser.add_argument("--also-suits", action="append", default=[], help="another preset these weights suit")
    parser.add_argument("--command", required=True, help="the training command, for the model card")
    parser.add_argument("--evaluation", type=Path, help="Markdown with measured results to put in the card")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best",
                        help="best.pt (best validation Dice, default) or the run's final weights (last.pt)")
    parser.add_argument("--output-dir", type=Path, default=Path(__file__).resolve().parents[2] / "Resources" / "Weights")
    args = parser.parse_args(argv)
    evaluation = args.evaluation.read_text(encoding="utf-8") if args.evaluation else ""
    path = ship(args.run, args.name, args.output_dir, args.command, args.also_suits, evaluation, args.checkpoint)
    print(f"wrote {path}, {path.with_name(path.name + '.sha256').name}, {args.name}.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
