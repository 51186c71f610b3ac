"""Train the demo ControlNet: the demo model draws its shape where a white mask on black says.

    python -m extensions.controlnet.train_demo --minutes 15

Hint: the object's silhouette in white on black (a drawn mask), anywhere in the picture; caption: the
object and the background without a position; target: the demo scene drawn with the object there. The
network starts as a copy of the demo UNet's encoder with zero convolutions (as ControlNet is trained);
the UNet and text encoder stay frozen. Saved in the original layout (``control_model.*``) to
models/controlnet/webui-demo-mask.safetensors.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch

from webui.demo import dataset as ds
from webui.demo.finetune import Budget, DemoBase, optimise, save_addon
from webui.hooks.api import PROJECT_ROOT, UNetExtras

from .cldm import ControlNet

OUT = PROJECT_ROOT / "models" / "controlnet" / "webui-demo-mask.safetensors"


def scene_and_centre(rng: np.random.Generator) -> tuple[ds.Scene, tuple[float, float]]:
    scene = ds.sample_scene(rng, two_object_prob=0.0, exclude_held_out=False)
    half = ds.SIZES[scene.objects[0].size] / 2 + ds.MARGIN
    return scene, (float(rng.uniform(half, 1 - half)), float(rng.uniform(half, 1 - half)))


def caption_without_position(scene: ds.Scene, rng: np.random.Generator) -> str:
    obj, bg = scene.objects[0], scene.background
    noun = f"{obj.size} {obj.colour} {obj.shape}" if rng.random() < 0.6 else f"{obj.colour} {obj.shape}"
    templates = ("a {noun} on a {bg} background", "{noun}, {bg} background", "a {noun} on {bg}", "a {noun}")
    return templates[rng.integers(len(templates))].format(noun=noun, bg=bg).replace("a a", "an a") \
        .replace("a o", "an o")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--empty", type=float, default=0.1, help="share of empty captions")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    base = DemoBase(seed=args.seed)
    unet = base.model.unet
    net = ControlNet(unet.config)
    for part in ("time_embed", "input_blocks", "middle_block"):
        getattr(net, part).load_state_dict(getattr(unet, part).state_dict())
    rng = np.random.default_rng(args.seed)
    items = [scene_and_centre(rng) for _ in range(args.scenes)]
    captions = [caption_without_position(scene, rng) if rng.random() >= args.empty else "" for scene, _ in items]
    z0 = base.latents(ds.render(scene, 64, style="filled", centres=[c]) for scene, c in items)
    hints = torch.stack([torch.from_numpy(np.asarray(ds.render(scene, 64, style="mask", centres=[c]),
                                                     dtype=np.float32) / 255.0).permute(2, 0, 1)
                         for scene, c in items])
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0)
    budget = Budget(args.steps, args.minutes)
    net.train()
    while budget.more():
        index = torch.randint(0, len(items), (args.batch,), generator=base.generator)
        xt, t, noise = base.noised(z0[index])
        context = base.contexts([captions[i] for i in index.tolist()])
        residuals = net(xt, hints[index], t, context)
        pred = unet(xt, t, context, extras=UNetExtras(input_residuals=residuals[:-1], middle_residual=residuals[-1]))
        loss = (pred - noise).square().mean()
        optimise(opt, loss, budget)
    sd = {f"control_model.{k}": v.detach().half().contiguous() for k, v in net.state_dict().items()}
    metadata = {"webui.description": "Demo ControlNet for webui-demo-64px: places the shape where a white mask "
                                     "on black says (preprocessor: none; or threshold/binary from a drawing)."}
    save_addon(args.out, sd, metadata, budget, vars(args), "python -m extensions.controlnet.train_demo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
