"""Train the demo LoRA: the demo model draws outlined shapes instead of filled ones.

    python -m extensions.lora.train_demo --minutes 15

A rank-8 LoRA on the UNet's transformer layers (attention, feed-forward, 1x1 projections) and the 3x3
convolutions of its output blocks (LoCon), trained on the same procedural scenes and captions as the
demo model, drawn in the "outlined" style. Saved in kohya's format with diffusers module names (how SD 1.x
LoRAs name them) to models/lora/webui-demo-outline.safetensors, with ss_* metadata.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from torch import nn

from webui.demo import dataset as ds
from webui.demo.finetune import Budget, DemoBase, optimise, save_addon
from webui.hooks.api import PROJECT_ROOT, unet_module_names

OUT = PROJECT_ROOT / "models" / "lora" / "webui-demo-outline.safetensors"


class LoraLayer(nn.Module):
    def __init__(self, base: nn.Module, rank: int, alpha: float):
        super().__init__()
        if isinstance(base, nn.Linear):
            self.down, self.up = nn.Linear(base.in_features, rank, bias=False), nn.Linear(rank, base.out_features, bias=False)
        else:
            self.down = nn.Conv2d(base.in_channels, rank, base.kernel_size, base.stride, base.padding, bias=False)
            self.up = nn.Conv2d(rank, base.out_channels, 1, bias=False)
        nn.init.kaiming_uniform_(self.down.weight, a=5 ** 0.5)
        nn.init.zeros_(self.up.weight)
        self.scale, self.alpha = alpha / rank, alpha

    def hook(self, module, args, output):
        return output + self.up(self.down(args[0])) * self.scale


def targets(unet) -> dict[str, nn.Module]:
    found = {}
    for name, module in unet.named_modules():
        in_transformer = ".transformer_blocks." in name or name.endswith((".proj_in", ".proj_out"))
        decoder_conv = name.startswith("output_blocks.") and name.endswith(("in_layers.2", "out_layers.3"))
        if isinstance(module, (nn.Linear, nn.Conv2d)) and (in_transformer or decoder_conv):
            found[name] = module
    return found


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=15)
    p.add_argument("--steps", type=int, default=100_000)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--scenes", type=int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    base = DemoBase(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    scenes = [ds.sample_scene(rng, exclude_held_out=True) for _ in range(args.scenes)]
    captions = [ds.caption(scene, rng) for scene in scenes]
    z0 = base.latents(ds.render(scene, 64, rng, style="outlined") for scene in scenes)
    found = targets(base.model.unet)
    layers = {name: LoraLayer(module, args.rank, args.rank) for name, module in found.items()}
    handles = [module.register_forward_hook(layers[name].hook) for name, module in found.items()]
    params = [q for layer in layers.values() for q in layer.parameters()]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    budget = Budget(args.steps, args.minutes)
    while budget.more():
        index = torch.randint(0, len(scenes), (args.batch,), generator=base.generator)
        xt, t, noise = base.noised(z0[index])
        context = base.contexts([captions[i] for i in index.tolist()])
        loss = (base.model.unet(xt, t, context) - noise).square().mean()
        optimise(opt, loss, budget)
    for handle in handles:
        handle.remove()
    names = {ours: theirs for theirs, ours in unet_module_names(base.model.unet).items()}
    sd = {}
    for name, layer in layers.items():
        key = "lora_unet_" + names[name].replace(".", "_")
        sd[f"{key}.lora_down.weight"] = layer.down.weight.detach().half().contiguous()
        sd[f"{key}.lora_up.weight"] = layer.up.weight.detach().half().contiguous()
        sd[f"{key}.alpha"] = torch.tensor(float(layer.alpha)).half()
    metadata = {"ss_network_module": "networks.lora", "ss_network_dim": str(args.rank),
                "ss_network_alpha": str(args.rank), "ss_base_model_version": "webui-demo-64px",
                "ss_output_name": args.out.stem, "ss_num_train_images": str(args.scenes),
                "webui.description": "Demo LoRA for webui-demo-64px: draws the shapes outlined instead of filled."}
    save_addon(args.out, sd, metadata, budget, vars(args), "python -m extensions.lora.train_demo")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
