"""How the DSTS router behaves at initialisation, on each backbone: the measurement behind the
default ``model.dsts.tau`` (docs/routing.md).

Random weights, training mode (BatchNorm on the batch's statistics), ``N`` neurons in ``L`` layers,
a batch of generated clips of several classes (noise clips all look alike and say nothing about
routing). Per layer: the mean normalized entropy of ``selection_probs`` (1: a coin toss, 0: one
neuron), and the largest share of the batch that the argmax (the evaluation routing) sends to one
neuron.

    python -m pipeline.probe_routing --taus 0.5 1 2 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import math

import torch

from dsts.config import Config, DSTSConfig, ModelConfig
from dsts.data.dives import class_specs
from dsts.data.render import render_clip
from dsts.data.transforms import normalize
from dsts.model import build_model
from pipeline._cli import run


def generated_clips(count: int, frames: int = 16, size: int = 64, seed: int = 0) -> torch.Tensor:
    """``(count, 3, frames, size, size)``: clips of every class of the generated benchmark in turn."""
    specs = class_specs()
    clips = [
        normalize(torch.from_numpy(render_clip(specs[i % len(specs)], (seed, 99, i), frames, size)))
        for i in range(count)
    ]
    return torch.stack(clips)


def probe(
    backbone: str, clips: torch.Tensor, tau: float, seed: int, neurons: int = 4, layers: int = 2
) -> list[dict]:
    """Per layer: ``entropy`` (mean normalized entropy of selection_probs) and ``max_share`` (the
    argmax's largest share of the batch)."""
    channels = 64 if backbone == "small3d" else 512
    cfg = Config(
        model=ModelConfig(
            backbone=backbone,
            dsts=DSTSConfig(channels=channels, num_neurons=neurons, num_layers=layers, tau=tau),
        )
    )
    torch.manual_seed(seed)
    model = build_model(cfg, num_classes=16).train()
    inputs: dict[int, torch.Tensor] = {}
    for j, layer in enumerate(model.dsts.layers):
        layer.register_forward_pre_hook(lambda m, args, j=j: inputs.__setitem__(j, args[0].detach()))
    with torch.no_grad():
        model(clips)
    out = []
    for j, layer in enumerate(model.dsts.layers):
        with torch.no_grad():
            probs = layer.selection_probs(inputs[j])
        entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1).mean().item() / math.log(neurons)
        share = torch.bincount(probs.argmax(-1), minlength=neurons).max().item() / len(probs)
        out.append({"entropy": entropy, "max_share": share})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipeline.probe_routing",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--backbones", nargs="+", default=["small3d", "r2plus1d_18"])
    parser.add_argument("--taus", nargs="+", type=float, default=[0.5, 1.0, 2.0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--clips", type=int, default=32)
    args = parser.parse_args()
    clips = generated_clips(args.clips)
    print(
        "| backbone | tau | seed | layer 0 entropy | layer 0 argmax max share | layer 1 entropy | layer 1 argmax max share |"
    )
    print("|---|---|---|---|---|---|---|")
    for backbone in args.backbones:
        for tau in args.taus:
            for seed in args.seeds:
                cells = [
                    f"{v['entropy']:.3f} | {v['max_share']:.2f}" for v in probe(backbone, clips, tau, seed)
                ]
                print(f"| {backbone} | {tau:g} | {seed} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    run(main)
