"""Expert utilisation on validation pairs: which SHMoE expert wins where, and which MoA heads are chosen.

Per SHMoE layer (decoder level ``l``, resolution ``1/2**l``) and displacement direction
(z, y, x = tensor axes, see :mod:`SHMoAReg.conventions`): the fraction of voxels where
each expert (kernel size) has the largest gate, and its mean gate - over all voxels and
per organ label (the fixed image's label at each coarse voxel, nearest sample at the
coarse voxel centre). Per MoA layer: the fraction of tokens that select each head.
Writes ``experts.json``, ``experts.md`` and ``experts.png``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

__all__ = ["analyse", "run", "markdown", "figure"]


def _coarse_labels(labels: torch.Tensor, level: int, shape) -> torch.Tensor:
    f = 2**level
    out = labels[f // 2 :: f, f // 2 :: f, f // 2 :: f] if f > 1 else labels
    pad = [max(0, s - o) for s, o in zip(shape, out.shape)]
    out = torch.nn.functional.pad(out, (0, pad[2], 0, pad[1], 0, pad[0]))
    return out[: shape[0], : shape[1], : shape[2]]


def label_name(label: int, label_values: list[int], label_names: dict) -> str:
    """The name of class ``label`` (1..L) of training-run label maps: their classes are the original label ids
    ``label_values`` renumbered 1..L (:func:`SHMoAReg.training.dataset.preprocess`), names are keyed by the ids."""
    original = label_values[label - 1] if label_values and 1 <= label <= len(label_values) else label
    return label_names.get(str(original), str(original))


@torch.no_grad()
def analyse(model, pairs: dict, label_names: dict[int, str], label_values: list[int] | None = None) -> dict:
    """Accumulate expert counts and gate sums over all pairs (see the module docstring). ``label_values``: the
    original label id of each class 1..L of the pairs' label maps (the weights' metadata)."""
    kernels = list(model.config.kernel_sizes)
    layers: dict[int, dict] = {}
    moa: list[np.ndarray] = []
    for i in range(len(pairs["fixed"])):
        output = model(pairs["fixed"][i : i + 1].float(), pairs["moving"][i : i + 1].float())
        for gates, level in zip(output.gates, output.gate_levels):
            g = gates[0]  # (3, E, d, h, w)
            labels = _coarse_labels(pairs["fixed_labels"][i].long(), level, g.shape[2:])
            dominant = g.argmax(dim=1)  # (3, d, h, w)
            entry = layers.setdefault(level, {})
            for label in [None] + sorted(set(labels.unique().tolist())):
                mask = torch.ones_like(labels, dtype=torch.bool) if label is None else labels == label
                stats = entry.setdefault("all" if label is None else int(label), {
                    "voxels": 0, "wins": np.zeros((3, len(kernels))), "gate_sum": np.zeros((3, len(kernels)))})
                stats["voxels"] += int(mask.sum())
                for e in range(len(kernels)):
                    stats["wins"][:, e] += (dominant[:, mask] == e).sum(dim=1).numpy()
                    stats["gate_sum"][:, e] += g[:, e][:, mask].sum(dim=1).numpy()
        moa.append(np.stack([r.selection_frequency.numpy() for r in output.routing]) if output.routing else np.zeros((0, 0)))
    result = {"kernel_sizes": kernels, "directions": ["z", "y", "x"], "pairs": len(pairs["fixed"]), "shmoe": [],
              "moa_selection_frequency": np.mean(moa, axis=0).tolist() if moa and moa[0].size else []}
    for level in sorted(layers, reverse=True):
        per_label = {}
        for label, s in layers[level].items():
            n = max(s["voxels"], 1)
            name = "all voxels" if label == "all" else (
                "unlabelled" if label == 0 else label_name(label, label_values or [], label_names))
            per_label[name] = {"voxels": s["voxels"], "win_fraction": (s["wins"] / n).tolist(),
                               "mean_gate": (s["gate_sum"] / n).tolist()}
        result["shmoe"].append({"level": level, "resolution": f"1/{2**level}", "labels": per_label})
    return result


def markdown(result: dict) -> str:
    k = result["kernel_sizes"]
    lines = [f"Pairs: {result['pairs']}. Experts = kernel sizes {k}. Cells: win fraction / mean gate per expert.", ""]
    for layer in result["shmoe"]:
        lines += [f"### SHMoE layer at resolution {layer['resolution']} (decoder level {layer['level']})", "",
                  "| label | voxels | " + " | ".join(f"{d}: k={e}" for d in result["directions"] for e in k) + " |",
                  "|---|---|" + "---|" * (3 * len(k))]
        for name, s in layer["labels"].items():
            cells = [f"{s['win_fraction'][d][e]:.2f} / {s['mean_gate'][d][e]:.2f}" for d in range(3) for e in range(len(k))]
            lines.append(f"| {name} | {s['voxels']} | " + " | ".join(cells) + " |")
        lines.append("")
    if result["moa_selection_frequency"]:
        heads = len(result["moa_selection_frequency"][0])
        lines += ["### MoA head-selection frequency (fraction of tokens choosing each head; rows sum to top-k)", "",
                  "| MoA layer | " + " | ".join(f"head {h}" for h in range(heads)) + " |", "|---|" + "---|" * heads]
        for i, row in enumerate(result["moa_selection_frequency"]):
            lines.append(f"| {i} | " + " | ".join(f"{v:.2f}" for v in row) + " |")
    return "\n".join(lines) + "\n"


def figure(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    layers, k = result["shmoe"], result["kernel_sizes"]
    fig, axes = plt.subplots(2, max(len(layers), 2), figsize=(4 * max(len(layers), 2), 7.5))
    for ax, layer in zip(axes[0], layers):
        wins = np.array(layer["labels"]["all voxels"]["win_fraction"])  # (3, E)
        for e in range(len(k)):
            ax.bar(np.arange(3) + (e - (len(k) - 1) / 2) * 0.25, wins[:, e], 0.25, label=f"k={k[e]}")
        ax.set_xticks(range(3), [f"direction {d}" for d in result["directions"]])
        ax.set_ylim(0, 1)
        ax.set_title(f"SHMoE {layer['resolution']}: expert win fraction", fontsize=9)
        ax.legend(fontsize=7)
    finest = layers[-1]
    names = [n for n in finest["labels"] if n != "all voxels"]
    matrix = np.array([np.array(finest["labels"][n]["mean_gate"]).reshape(-1) for n in names])
    image = axes[1][0].imshow(matrix, aspect="auto", cmap="viridis")
    axes[1][0].set_yticks(range(len(names)), names, fontsize=6)
    axes[1][0].set_xticks(range(matrix.shape[1]), [f"{d}{e}" for d in result["directions"] for e in k], fontsize=7)
    axes[1][0].set_title(f"mean gate per label, layer {finest['resolution']} (direction+kernel)", fontsize=9)
    fig.colorbar(image, ax=axes[1][0])
    if result["moa_selection_frequency"]:
        moa = np.array(result["moa_selection_frequency"])
        image = axes[1][1].imshow(moa, aspect="auto", cmap="magma")
        axes[1][1].set_yticks(range(len(moa)))
        axes[1][1].set_xticks(range(moa.shape[1]))
        axes[1][1].set_xlabel("head")
        axes[1][1].set_ylabel("MoA layer")
        axes[1][1].set_title("MoA head-selection frequency", fontsize=9)
        fig.colorbar(image, ax=axes[1][1])
    for ax in list(axes[0][len(layers):]) + list(axes[1][2:]):
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(weights: str, pairs_path: str | None, output_dir: Path, device: str = "auto") -> dict:
    from ..errors import InputError
    from ..weights import load_weights

    source = Path(weights)
    if source.is_dir():
        # an ablation variant's folder shares its parent's pairs
        pairs_path = pairs_path or next((str(f / "val_pairs.pt") for f in (source, source.parent)
                                         if (f / "val_pairs.pt").is_file()), str(source / "val_pairs.pt"))
        source = source / "best.pt"
        if not source.is_file():
            raise InputError(f"{weights}: a run folder must hold best.pt (train first)")
    if pairs_path is None or not Path(pairs_path).is_file():
        raise InputError(f"validation pairs {str(pairs_path)!r} not found; pass --pairs RUN/val_pairs.pt")
    model, info = load_weights(str(source), "cpu")
    pairs = torch.load(pairs_path, weights_only=True)
    result = analyse(model, pairs, info.metadata.get("label_names", {}), info.metadata.get("label_values"))
    result.update({"weights": info.path, "sha256": info.sha256, "pairs_file": str(pairs_path)})
    output_dir.mkdir(parents=True, exist_ok=True)
    (output_dir / "experts.json").write_text(json.dumps(result, indent=1))
    (output_dir / "experts.md").write_text(markdown(result), encoding="utf-8")
    figure(result, output_dir / "experts.png")
    print(f"expert utilisation of {info.name} on {result['pairs']} pairs: {output_dir}/experts.md, experts.png")
    return result
