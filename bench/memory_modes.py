"""Weights each memory mode keeps on the GPU, computed from the networks' shapes (built on the meta device:
nothing is allocated) with the same grouping and block split the engine uses (``webui.engine.memory``).

This is the weights' part of VRAM only; activations and the VAE decode's working set come on top (measured
by ``bench/bench_gpu.py`` on a GPU). Runs anywhere in a second.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))


def networks(model: str) -> dict[str, torch.nn.Module]:
    import transformers

    from webui.engine.unet import UNetModel
    from webui.engine.vae import AutoencoderKL
    with torch.device("meta"):
        if model == "sd15":
            import bench_sd15 as b
            return {"text": transformers.CLIPTextModel(transformers.CLIPTextConfig(**b.CLIP_L)),
                    "unet": UNetModel(b.sd15_unet_config()), "vae": AutoencoderKL(b.sd15_vae_config())}
        import bench_sdxl as b
        a = b.arch(False)
        g = a.bigg            # OpenCLIP bigG, as the loader converts it
        bigg = transformers.CLIPTextConfig(vocab_size=a.clip_l["vocab_size"], hidden_size=g.width,
                                           num_hidden_layers=g.layers, num_attention_heads=g.heads,
                                           intermediate_size=g.mlp, projection_dim=g.proj, hidden_act="gelu")
        return {"text": transformers.CLIPTextModel(transformers.CLIPTextConfig(**a.clip_l)),
                "text_2": transformers.CLIPTextModelWithProjection(bigg),
                "unet": UNetModel(a.unet), "vae": AutoencoderKL(a.vae)}


def gb(n: int | float) -> str:
    return f"{n / 1e9:.2f}"


def main() -> None:
    from webui.engine import memory
    from webui.engine.layers import Conv2d, Linear
    print("| model (fp16) | normal | --medvram | --lowvram | --fp8 (normal) | --fp8 --medvram |")
    print("|---|---:|---:|---:|---:|---:|")
    for model in ("sd15", "sdxl"):
        nets = {k: v.half() for k, v in networks(model).items()}
        sizes = {k: memory.weight_bytes([v]) for k, v in nets.items()}
        low = 0
        for net in nets.values():
            pieces = list(memory.blocks(net, max(memory.weight_bytes([net]) // 16, 1)))
            in_blocks = sum(memory.weight_bytes([p]) for p in pieces)
            low = max(low, max(memory.weight_bytes([p]) for p in pieces) + memory.weight_bytes([net]) - in_blocks)
        fp8_saved = sum(m.weight.numel() for m in nets["unet"].modules() if isinstance(m, (Linear, Conv2d)))
        fp8 = dict(sizes, unet=sizes["unet"] - fp8_saved)
        print(f"| {model.upper()}-size | {gb(sum(sizes.values()))} | {gb(max(sizes.values()))} | {gb(low)} "
              f"| {gb(sum(fp8.values()))} | {gb(max(fp8.values()))} |")


if __name__ == "__main__":
    main()
