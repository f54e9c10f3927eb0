"""Load a folder written by `dpsynth export` into diffusers, adapters included.

Usage (PyTorch, diffusers and safetensors installed; this file on `sys.path`, e.g. copied beside
your code; OUT is the export folder):

    import torch; from dpsynth_loader import load_exported
    unet, scheduler, classes = load_exported("OUT")  # UNet2DModel + adapters, DDPMScheduler, names
    labels = torch.arange(len(classes)); scheduler.set_timesteps(50); n = unet.config.sample_size
    x = torch.randn(len(classes), unet.config.in_channels, n, n)
    for t in scheduler.timesteps: x = scheduler.step(unet(x, t, class_labels=labels).sample, t, x).prev_sample

`x` then holds one image per class in [-1, 1]. `DDIMScheduler.from_pretrained("OUT")` works in
place of the DDPM scheduler. That loop samples without guidance; dpsynth's `--guidance W` is
classifier-free guidance, `eps_null + W * (eps_c - eps_null)` with the null class label
`len(classes)`.

The folder (see `dpsynth export --help` and `crates/cli/src/export_cmd.rs`):
- `config.json`, `diffusion_pytorch_model.safetensors`: a diffusers `UNet2DModel` (for a merged
  LoRA export, already containing the adapters);
- `scheduler_config.json`: the noise schedule (diffusers scheduler keys);
- `classes.json`: class names, class `i` being label `i`;
- only when a class has several class-embedding rows (fine-tuned with `class_init_rows = "each"`):
  `class_rows.json`, for each row (label) the index in `classes.json` of its class;
- only in an unmerged export (LoDA, or LoRA with `--unmerged`):
  - `adapter_config.json`: `kind` ("loda" or "lora"), `rank` r, `alpha`, `activation` ("silu",
    "tanh" or "relu"; LoDA only), `layers` (the adapted modules by their diffusers names);
  - `adapter_model.safetensors`: `adapter.{layer}.A.weight`, `adapter.{layer}.B.weight` and for
    LoDA `adapter.{layer}.D1.{weight,bias}`, `adapter.{layer}.D2.{weight,bias}`.

An adapted layer with weight W and input x returns `W x + (alpha / r) * B(g(A x))` with
`g(u) = u` (LoRA) or `g(u) = u + D2(act(D1 u))` (LoDA). For a conv, `A` convolves with the
layer's stride, padding and dilation and `B`, `D1`, `D2` are 1x1 convs; for a linear layer all
are linear maps. Each adapter is registered as a child module `dpsynth_adapter` of its layer and
added to the layer's output by a forward hook, so `unet.to(...)` moves it along.
"""
import json
import os

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler, UNet2DModel
from safetensors.torch import load_file

ACTIVATIONS = {"silu": F.silu, "tanh": torch.tanh, "relu": F.relu}


class Adapter(torch.nn.Module):
    """One LoRA/LoDA adapter: `x -> scale * B(g(A x))` for the conv or linear layer `base`."""

    def __init__(self, base, weights, scale, activation):
        super().__init__()
        self.conv = isinstance(base, torch.nn.Conv2d)
        if self.conv:
            self.geometry = dict(stride=base.stride, padding=base.padding, dilation=base.dilation)
        self.scale = scale
        self.activation = activation
        self.params = torch.nn.ParameterDict(
            {k.replace(".", "_"): torch.nn.Parameter(w, requires_grad=False) for k, w in weights.items()}
        )

    def _map(self, name, u):
        """Applies the 1x1 conv or linear map `name` (D1, D2 or B)."""
        w, b = self.params[f"{name}_weight"], self.params.get(f"{name}_bias")
        return F.conv2d(u, w, b) if self.conv else F.linear(u, w, b)

    def forward(self, x):
        w = self.params["A_weight"]
        u = F.conv2d(x, w, **self.geometry) if self.conv else F.linear(x, w)
        if "D1_weight" in self.params:
            u = u + self._map("D2", self.activation(self._map("D1", u)))
        return self._map("B", u) * self.scale


def _add_adapter_output(module, args, output):
    return output + module.dpsynth_adapter(args[0])


def attach_adapters(unet, folder):
    """Attaches the adapters of an unmerged export `folder` to `unet`; returns how many."""
    with open(os.path.join(folder, "adapter_config.json")) as f:
        cfg = json.load(f)
    if cfg["kind"] not in ("loda", "lora"):
        raise ValueError(f"{folder}/adapter_config.json: kind {cfg['kind']!r}, not loda or lora")
    weights = load_file(os.path.join(folder, "adapter_model.safetensors"))
    layers = cfg.get("layers") or sorted(
        k[len("adapter.") : -len(".A.weight")] for k in weights if k.endswith(".A.weight")
    )
    scale = cfg["alpha"] / cfg["rank"]
    activation = ACTIVATIONS[cfg["activation"]]
    param = next(unet.parameters())
    for name in layers:
        base = unet.get_submodule(name)
        prefix = f"adapter.{name}."
        own = {k[len(prefix) :]: w.to(param) for k, w in weights.items() if k.startswith(prefix)}
        complete = "A.weight" in own and "B.weight" in own
        if not complete or (cfg["kind"] == "loda") != ("D1.weight" in own):
            raise ValueError(
                f"{folder}/adapter_model.safetensors: incomplete {cfg['kind']} adapter for {name}"
            )
        base.add_module("dpsynth_adapter", Adapter(base, own, scale, activation))
        base.register_forward_hook(_add_adapter_output)
    return len(layers)


def load_exported(folder):
    """Loads `dpsynth export` output: returns (UNet2DModel with adapters attached if the export
    has any, in eval mode and without gradients; DDPMScheduler; the class name of each label).
    A class with several rows (`class_rows.json`) has several labels, each its name."""
    unet = UNet2DModel.from_pretrained(folder).eval().requires_grad_(False)
    if os.path.exists(os.path.join(folder, "adapter_config.json")):
        attach_adapters(unet, folder)
    scheduler = DDPMScheduler.from_pretrained(folder)
    with open(os.path.join(folder, "classes.json")) as f:
        classes = json.load(f)
    rows = os.path.join(folder, "class_rows.json")
    if os.path.exists(rows):
        with open(rows) as f:
            classes = [classes[c] for c in json.load(f)]
    return unet, scheduler, classes
