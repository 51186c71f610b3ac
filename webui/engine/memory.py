"""Where the networks live: all on the device (``normal``), only the one in use (``--medvram``), or block
by block (``--lowvram``); chosen from free VRAM when not asked for.

- ``medvram`` (A1111's): the text encoders, the UNet and the VAE take turns on the device; the one about to
  run is moved there and the others go back to the CPU. VRAM holds the largest network plus its working set.
- ``lowvram``: the weights stay in (pinned) CPU memory; each block (a UNet input / middle / output block, a
  CLIP layer, a piece of the VAE) is copied to the device just before it runs and dropped after, so VRAM
  holds one block's weights plus the working set. The copy is asynchronous from pinned memory (no host
  sync); nothing is copied back, since weights do not change while a block runs.

Both are torch forward hooks on the model's own modules (``register_forward_pre_hook`` /
``register_forward_hook``), installed by ``Offloader.attach`` and removed by ``detach``; the hooks are
excluded from ``torch.compile`` graphs. Weight patches (LoRA) are merged between jobs, when every weight is
where it lives between calls, so they stay with the weights. On a CPU device the modes change nothing but
run the same code.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import torch
from torch import nn

MEMORY_MODES = ("auto", "normal", "medvram", "lowvram")
GiB = 2**30
# room left for activations and the VAE decode's working set, by the family's native image side (measured
# orders of magnitude for fp16 with SDPA: SD 1.x at 512 about 1 GB, SDXL's VAE decode at 1024 about 3.5 GB)
WORKING_MEMORY = {512: int(1.5 * GiB), 768: int(2.5 * GiB), 1024: 4 * GiB}


def choose_memory_mode(free: int, sizes: Mapping[str, int], working: int) -> str:
    """``normal`` when every network fits beside the working set, else ``medvram`` when the largest does,
    else ``lowvram``. ``sizes``: bytes of each network's weights as they will be stored."""
    if sum(sizes.values()) + working <= free:
        return "normal"
    if max(sizes.values(), default=0) + working <= free:
        return "medvram"
    return "lowvram"


def working_memory(native_size: int) -> int:
    return WORKING_MEMORY.get(native_size, WORKING_MEMORY[1024] if native_size > 768 else WORKING_MEMORY[512])


def network_groups(model) -> dict[str, list[nn.Module]]:
    """A model's networks, by the name the offloader gives them (``text``, ``text_2``, ``unet``, ``vae``)."""
    groups = {("text" if i == 0 else f"text_{i + 1}"): [m] for i, m in enumerate(model.text_models)}
    groups["unet"] = [model.unet]
    if model.vae is not None:
        groups["vae"] = [model.vae]
    return groups


def weight_bytes(modules: Iterable[nn.Module]) -> int:
    return sum(t.numel() * t.element_size() for m in modules for t in [*m.parameters(), *m.buffers()])


def blocks(module: nn.Module, limit: int) -> Iterator[nn.Module]:
    """``module``'s children, split further while larger than ``limit`` bytes (ModuleLists into their items):
    the units ``lowvram`` moves one at a time."""
    for child in module.children():
        if weight_bytes([child]) <= limit or not any(True for _ in child.children()):
            yield child
        else:
            yield from blocks(child, limit)


def _direct_tensors(module: nn.Module) -> Iterator[tuple[nn.Module, str, torch.Tensor]]:
    """Parameters and buffers of ``module`` and its submodules, with the module that owns each."""
    for owner in module.modules():
        for name, param in owner._parameters.items():
            if param is not None:
                yield owner, name, param
        for name, buffer in owner._buffers.items():
            if buffer is not None:
                yield owner, name, buffer


class _Streamed:
    """One lowvram block: its tensors are replaced by device copies for a call, then by the originals."""

    def __init__(self, module: nn.Module, device: torch.device):
        self.module, self.device = module, device
        self.originals: list[tuple[nn.Module, str, torch.Tensor]] | None = None   # set while on the device

    def load(self, *_args) -> None:
        if self.originals is not None:        # already there (a re-entrant call)
            return
        self.originals = []
        for owner, name, tensor in _direct_tensors(self.module):
            if tensor.device == self.device and tensor.device.type != "cpu":
                continue                            # small tensors kept on the device for good
            copy = tensor.data.to(self.device, non_blocking=True, copy=True)
            self.originals.append((owner, name, tensor.data))
            _set(owner, name, copy)

    def unload(self, *_args) -> None:
        if self.originals is None:
            return
        for owner, name, original in self.originals:
            _set(owner, name, original)
        self.originals = None


def _set(owner: nn.Module, name: str, data: torch.Tensor) -> None:
    if name in owner._parameters:
        owner._parameters[name].data = data
    else:
        owner._buffers[name] = data


class Offloader:
    """Keeps the attached models' networks where the mode says (see the module's docstring)."""

    def __init__(self, device: torch.device, offload: torch.device | str = "cpu"):
        self.device, self.offload = torch.device(device), torch.device(offload)
        self.mode = "normal"
        self.resident: str | None = None                # medvram: the group now on the device
        self._groups: dict[str, list[nn.Module]] = {}
        self._streamed: list[_Streamed] = []
        self._handles: list = []

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, models: Iterable, mode: str) -> None:
        """Hook ``models`` (the resident model and its refiner) for ``mode``; ``normal`` puts every network on
        the device. Replaces what was attached before."""
        self.detach()
        self.mode = mode
        models = [m for m in models if m is not None]
        if mode == "normal":
            for model in models:
                for name, modules in network_groups(model).items():
                    for module in modules:
                        module.to(self.device)
            return
        for index, model in enumerate(models):
            for name, modules in network_groups(model).items():
                key = name if index == 0 else f"{name}@{index}"
                self._groups[key] = modules
                if mode == "medvram":
                    self._hook_group(key, modules)
                else:
                    self._stream(modules)

    def _hook_group(self, key: str, modules: list[nn.Module]) -> None:
        @torch.compiler.disable
        def bring(*_args):
            self.bring(key)
        for module in modules:
            module.to(self.offload)
            # a network without forward (the VAE: encode / decode call its children) is entered through those
            entries = list(module.children()) if type(module).forward is nn.Module.forward else [module]
            for entry in entries:
                self._handles.append(entry.register_forward_pre_hook(bring))

    def bring(self, key: str) -> None:
        """medvram: ``key``'s networks onto the device, every other group off it."""
        if self.resident == key:
            return
        for other, modules in self._groups.items():
            if other != key:
                for module in modules:
                    module.to(self.offload)
        for module in self._groups[key]:
            module.to(self.device)
        self.resident = key

    def _stream(self, modules: list[nn.Module]) -> None:
        pin = self.device.type == "cuda"
        for network in modules:
            network.to(self.offload)
            if pin:
                for owner, name, tensor in _direct_tensors(network):
                    _set(owner, name, tensor.data.pin_memory())
            limit = max(weight_bytes([network]) // 16, 1)
            covered = set()
            for block in blocks(network, limit):
                streamed = _Streamed(block, self.device)
                self._streamed.append(streamed)
                covered.update(id(t) for _, _, t in _direct_tensors(block))
                self._handles.append(block.register_forward_pre_hook(torch.compiler.disable(streamed.load)))
                self._handles.append(block.register_forward_hook(torch.compiler.disable(streamed.unload),
                                                                 always_call=True))
            for owner, name, tensor in _direct_tensors(network):   # outside every block: kept on the device
                if id(tensor) not in covered:
                    _set(owner, name, tensor.data.to(self.device))

    def release(self) -> None:
        """Put every streamed block back (after a call that raised); medvram keeps its resident group."""
        for streamed in self._streamed:
            streamed.unload()

    def detach(self) -> None:
        """Remove the hooks (the networks stay where they are)."""
        self.release()
        for handle in self._handles:
            handle.remove()
        self._handles, self._groups, self._streamed, self.resident = [], {}, [], None
        self.mode = "normal"
