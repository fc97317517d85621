"""LoRA and LoCon for SD 1.x/2.x, laid out exactly as kohya sd-scripts' networks/lora.py lays them out.

Each LoRA module wraps one Linear/Conv2d of the model by replacing that layer's `forward` (the base weights are
never touched, so the network can be removed or merged):

    y = W x + multiplier * (alpha / rank) * up(dropout(down(x)))

While training, kohya's three dropouts: network_dropout on down(x)'s neurons, rank_dropout on whole ranks per
sample (the update scaled up to match, as if the rank were smaller), module_dropout skipping the whole update.

Targets (kohya's): every Linear and 1x1 Conv2d inside the UNet's Transformer2DModel blocks and the text encoder's
CLIPAttention/CLIPMLP; with LoCon (`conv_dim`) also the convolutions of ResnetBlock2D/Downsample2D/Upsample2D, where
3x3 convolutions get `conv_dim`/`conv_alpha` and the rest `rank`/`alpha`. Names are
`(prefix + "." + module path).replace(".", "_")` with prefix `lora_unet` or `lora_te`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from lib_sdtrain.errors import ConfigError

UNET_PREFIX = "lora_unet"
TEXT_ENCODER_PREFIX = "lora_te"
UNET_TARGETS = ("Transformer2DModel",)
UNET_CONV_TARGETS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
TEXT_ENCODER_TARGETS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


class LoRAModule(nn.Module):
    """A low-rank update of one Linear or Conv2d layer."""

    def __init__(
        self,
        name: str,
        layer: nn.Linear | nn.Conv2d,
        rank: int,
        alpha: float | None,
        dropout: float = 0.0,
        rank_dropout: float = 0.0,
        module_dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.lora_name = name
        self.rank = rank
        self.rank_dropout = rank_dropout
        self.module_dropout = module_dropout
        self.lora_down: nn.Linear | nn.Conv2d
        self.lora_up: nn.Linear | nn.Conv2d
        if isinstance(layer, nn.Conv2d):
            # The down projection has the layer's kernel; the up projection is 1x1 (kohya's LoCon layout).
            kernel, stride = cast("tuple[int, int]", layer.kernel_size), cast("tuple[int, int]", layer.stride)
            padding = cast("str | tuple[int, int]", layer.padding)  # a Conv2d's are pairs; torch types them as tuples
            self.lora_down = nn.Conv2d(layer.in_channels, rank, kernel, stride, padding, bias=False)
            self.lora_up = nn.Conv2d(rank, layer.out_channels, (1, 1), (1, 1), bias=False)
        else:
            self.lora_down = nn.Linear(layer.in_features, rank, bias=False)
            self.lora_up = nn.Linear(rank, layer.out_features, bias=False)
        nn.init.kaiming_uniform_(self.lora_down.weight, a=math.sqrt(5))
        nn.init.zeros_(self.lora_up.weight)  # starts as a no-op: training begins from the base model exactly
        alpha = float(rank) if not alpha else float(alpha)
        self.alpha: torch.Tensor
        self.register_buffer("alpha", torch.tensor(alpha))
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()
        self.multiplier = 1.0
        self._layer = [layer]  # a list keeps the base layer out of this module's parameters and state dict
        self._base_forward: Callable[[torch.Tensor], torch.Tensor] | None = None

    @property
    def scale(self) -> float:
        return float(self.alpha) / self.rank

    def attach(self) -> None:
        layer = self._layer[0]
        if self._base_forward is None:
            self._base_forward = layer.forward
            vars(layer)["forward"] = self.forward  # an instance attribute: the layer calls this module instead

    def detach_from_layer(self) -> None:
        if self._base_forward is not None:
            vars(self._layer[0])["forward"] = self._base_forward
            self._base_forward = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        assert self._base_forward is not None, "a LoRA module runs only while attached to its layer"
        base = self._base_forward(x)
        if self.multiplier == 0:
            return base
        if self.training and self.module_dropout and torch.rand(()) < self.module_dropout:
            return base
        hidden = self.dropout(self.lora_down(x.to(self.lora_down.weight.dtype)))
        scale = self.scale
        if self.training and self.rank_dropout:
            keep = torch.rand((hidden.shape[0], self.rank), device=hidden.device) > self.rank_dropout
            if hidden.ndim == 3:  # (batch, tokens, rank)
                keep = keep[:, None, :]
            elif hidden.ndim == 4:  # convolutions: (batch, rank, height, width)
                keep = keep[:, :, None, None]
            hidden = hidden * keep
            scale = scale / (1.0 - self.rank_dropout)
        update = self.lora_up(hidden)
        return base + (update * (self.multiplier * scale)).to(base.dtype)

    @torch.no_grad()
    def delta_weight(self) -> torch.Tensor:
        """The change this module makes to its layer's weight (what merging adds)."""
        return self.scaled_update() * self.multiplier

    @torch.no_grad()
    def scaled_update(self) -> torch.Tensor:
        """(alpha / rank) * up @ down in fp32, shaped as the layer's weight: the change at multiplier 1."""
        down, up = self.lora_down.weight.float(), self.lora_up.weight.float()
        if down.ndim == 2:
            delta = up @ down
        elif down.shape[2:] == (1, 1):
            delta = (up.squeeze(-1).squeeze(-1) @ down.squeeze(-1).squeeze(-1))[:, :, None, None]
        else:
            delta = torch.nn.functional.conv2d(down.permute(1, 0, 2, 3), up).permute(1, 0, 2, 3)
        return delta * self.scale


@dataclass(frozen=True)
class NetworkSpec:
    rank: int = 4
    alpha: float | None = 1.0
    dropout: float = 0.0
    rank_dropout: float = 0.0
    module_dropout: float = 0.0
    conv_rank: int | None = None  # LoCon: rank of the 3x3 convolutions; None leaves them out
    conv_alpha: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = True
    module_ranks: dict[str, tuple[int, float]] | None = None
    """kohya's dim_from_weights: {lora name: (rank, alpha)} from a LoRA file; only these modules are built, each with
    its own rank and alpha (rank, alpha, conv_rank and conv_alpha are then not used)."""


class LoRANetwork(nn.Module):
    """All LoRA modules of one model. `attach()` hooks them into the model; `detach()` restores it."""

    def __init__(
        self,
        unet: nn.Module,
        text_encoder: nn.Module | None,
        spec: NetworkSpec,
        text_encoder_2: nn.Module | None = None,
        unet_names: Callable[[str], str] | None = None,
    ) -> None:
        """`text_encoder_2` (SDXL's second) makes the text prefixes kohya's lora_te1_/lora_te2_; `unet_names` maps a
        diffusers module path to the one kohya names the module by (SDXL: the SGM path, input_blocks_4_1_...)."""
        super().__init__()
        self.spec = spec
        unet_targets = UNET_TARGETS + (UNET_CONV_TARGETS if spec.conv_rank else ())
        encoders = [e for e in (text_encoder, text_encoder_2) if e is not None] if spec.train_text_encoder else []
        prefixes = text_encoder_prefixes(text_encoder_2 is not None)
        if spec.module_ranks is None:  # before any module is made: a typo'd rank would fill the memory first
            layers = list(target_layers(unet, UNET_PREFIX, unet_targets, unet_names)) if spec.train_unet else []
            for encoder, prefix in zip(encoders, prefixes, strict=False):
                layers += target_layers(encoder, prefix, TEXT_ENCODER_TARGETS)
            check_ranks(layers, spec)
        self.unet_loras = nn.ModuleList(
            _create_modules(unet, UNET_PREFIX, unet_targets, spec, unet_names) if spec.train_unet else []
        )
        te_modules = []
        for encoder, prefix in zip(encoders, prefixes, strict=False):
            te_modules += _create_modules(encoder, prefix, TEXT_ENCODER_TARGETS, spec)
        self.text_encoder_loras = nn.ModuleList(te_modules)

    def modules_by_name(self) -> dict[str, LoRAModule]:
        return {m.lora_name: m for m in self.all_loras()}

    def all_loras(self) -> Iterator[LoRAModule]:
        for module in (*self.text_encoder_loras, *self.unet_loras):
            yield cast(LoRAModule, module)  # the two ModuleLists hold only LoRAModules

    def attach(self) -> LoRANetwork:
        for lora in self.all_loras():
            lora.attach()
        return self

    def detach(self) -> None:
        for lora in self.all_loras():
            lora.detach_from_layer()

    def set_multiplier(self, multiplier: float) -> None:
        for lora in self.all_loras():
            lora.multiplier = multiplier

    @torch.no_grad()
    def apply_max_norm(self, max_norm: float) -> tuple[int, float, float]:
        """kohya's scale_weight_norms (apply_max_norm_regularization): each module whose update (alpha / rank) *
        up @ down has a Frobenius norm above `max_norm` gets up and down multiplied by sqrt(max_norm / norm), so the
        update's norm becomes max_norm. Returns (modules scaled, mean norm, largest norm) after scaling, kohya's
        keys_scaled, average_key_norm and max_key_norm."""
        norms, scaled = [], 0
        for lora in self.all_loras():
            norm = float(lora.scaled_update().norm())
            if norm > max_norm:
                root = math.sqrt(max_norm / norm)
                lora.lora_up.weight.mul_(root)
                lora.lora_down.weight.mul_(root)
                scaled += 1
                norm = max_norm
            norms.append(norm)
        return scaled, sum(norms) / max(len(norms), 1), max(norms, default=0.0)

    def parameter_groups(self, unet_lr: float, text_encoder_lr: float) -> list[dict]:
        groups = []
        if len(self.text_encoder_loras):
            groups.append({"params": list(self.text_encoder_loras.parameters()), "lr": text_encoder_lr})
        if len(self.unet_loras):
            groups.append({"params": list(self.unet_loras.parameters()), "lr": unet_lr})
        return groups

    def kohya_state_dict(self) -> dict[str, torch.Tensor]:
        """`<name>.lora_down.weight`, `<name>.lora_up.weight`, `<name>.alpha` for every module."""
        return {
            f"{lora.lora_name}.{key}": value for lora in self.all_loras() for key, value in lora.state_dict().items()
        }

    def load_kohya_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        from lib_sdtrain.errors import SDTrainError

        ours = self.kohya_state_dict()
        missing = sorted(set(ours) - set(state))
        unexpected = sorted(set(state) - set(ours))
        if missing or unexpected:
            raise SDTrainError(
                f"The LoRA does not fit this model and these settings: {len(missing)} tensors missing "
                f"(e.g. {missing[:2]}), {len(unexpected)} unexpected (e.g. {unexpected[:2]})."
            )
        wrong = [k for k in ours if state[k].shape != ours[k].shape]
        if wrong:
            raise SDTrainError(f"The LoRA does not fit these settings: {_shape_mismatch(wrong, state, ours)}.")
        for lora in self.all_loras():
            lora.load_state_dict({k: state[f"{lora.lora_name}.{k}"] for k in lora.state_dict()})

    @torch.no_grad()
    def merge_into_model(self) -> None:
        """Add every module's update to its layer's weight (to bake a LoRA into a checkpoint), then detach."""
        for lora in self.all_loras():
            weight = lora._layer[0].weight
            weight += lora.delta_weight().to(weight.dtype).reshape(weight.shape)
        self.detach()


def _shape_mismatch(keys: list[str], theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> str:
    """What differs, in the options' terms where it is a rank: "saved with network_dim 16, this run has 8"."""
    ranks = [k for k in keys if k.endswith(".lora_down.weight")]
    if ranks:
        key = ranks[0]
        option = "conv_dim" if ours[key].dim() == 4 and ours[key].shape[-1] > 1 else "network_dim"
        return (
            f"it was saved with {option} {theirs[key].shape[0]}, this run has {option} {ours[key].shape[0]} "
            f"({len(ranks)} modules differ, e.g. {key.split('.')[0]})"
        )
    key = keys[0]
    return f"{key} is {tuple(theirs[key].shape)} there and {tuple(ours[key].shape)} here ({len(keys)} tensors differ)"


def _create_modules(
    root: nn.Module, prefix: str, targets: tuple[str, ...], spec: NetworkSpec, names: Callable[[str], str] | None = None
) -> list[LoRAModule]:
    loras = []
    for lora_name, child in target_layers(root, prefix, targets, names):
        if spec.module_ranks is not None:  # dim_from_weights: the file's modules, ranks and alphas
            if lora_name in spec.module_ranks:
                loras.append(LoRAModule(lora_name, child, *spec.module_ranks[lora_name], *_dropouts(spec)))
            continue
        if child.__class__.__name__ == "Linear" or child.kernel_size == (1, 1):
            rank, alpha = spec.rank, spec.alpha
        elif spec.conv_rank:
            rank, alpha = spec.conv_rank, spec.conv_alpha
        else:
            continue
        loras.append(LoRAModule(lora_name, child, rank, alpha, *_dropouts(spec)))
    return loras


def check_ranks(layers: list[tuple[str, nn.Linear | nn.Conv2d]], spec: NetworkSpec) -> None:
    """Refuse a rank above the width of every layer it would train (network_dim 10000 for 100): an update up @ down
    has at most min(in, out) ranks, so the extra ones add nothing but memory, and such a rank can take gigabytes.
    Ranks between one layer's width and another's are kept, as kohya keeps them."""
    widest = {"network_dim": 0, "conv_dim": 0}
    for _, layer in layers:
        if isinstance(layer, nn.Linear):
            option, fan_in, fan_out = "network_dim", layer.in_features, layer.out_features
        else:
            option = "network_dim" if layer.kernel_size == (1, 1) else "conv_dim"
            fan_in, fan_out = layer.in_channels * math.prod(layer.kernel_size), layer.out_channels
        widest[option] = max(widest[option], min(fan_in, fan_out))
    for option, rank in (("network_dim", spec.rank), ("conv_dim", spec.conv_rank)):
        if rank and widest[option] and rank > widest[option]:
            raise ConfigError(
                f"{option} {rank} is above the width of every layer it trains in this model (at most "
                f"{widest[option]}): the ranks above it would add nothing but memory. Choose {option} <= "
                f"{widest[option]} (common values: 4 to 128)."
            )


def _dropouts(spec: NetworkSpec) -> tuple[float, float, float]:
    return spec.dropout, spec.rank_dropout, spec.module_dropout


def target_layers(
    root: nn.Module, prefix: str, targets: tuple[str, ...], names: Callable[[str], str] | None = None
) -> Iterator[tuple[str, nn.Linear | nn.Conv2d]]:
    """(kohya name, layer) for every Linear and Conv2d inside the modules whose class is one of `targets`; `names`
    maps a module path to the one kohya names it by."""
    for name, module in root.named_modules():
        if module.__class__.__name__ not in targets:
            continue
        for child_name, child in module.named_modules():
            # kohya compares class names exactly: subclasses of Linear/Conv2d (e.g. quantised layers) are skipped
            if child.__class__.__name__ in ("Linear", "Conv2d"):
                path = f"{name}.{child_name}"
                yield f"{prefix}.{names(path) if names else path}".replace(".", "_"), child


def text_encoder_prefixes(two_encoders: bool) -> list[str]:
    """kohya's text-encoder prefixes: lora_te for SD 1.x/2.x, lora_te1 and lora_te2 for SDXL's two."""
    return [f"{TEXT_ENCODER_PREFIX}{i}" for i in (1, 2)] if two_encoders else [TEXT_ENCODER_PREFIX]


def model_target_layers(
    unet: nn.Module,
    text_encoder: nn.Module | None,
    text_encoder_2: nn.Module | None = None,
    unet_names: Callable[[str], str] | None = None,
) -> dict[str, nn.Linear | nn.Conv2d]:
    """Every layer a kohya LoRA or LoCon for this model may change, by kohya name (see LoRANetwork)."""
    layers = dict(target_layers(unet, UNET_PREFIX, UNET_TARGETS + UNET_CONV_TARGETS, unet_names))
    encoders = [e for e in (text_encoder, text_encoder_2) if e is not None]
    for encoder, prefix in zip(encoders, text_encoder_prefixes(text_encoder_2 is not None), strict=False):
        layers.update(target_layers(encoder, prefix, TEXT_ENCODER_TARGETS))
    return layers


def ranks_from_weights(state: dict[str, torch.Tensor]) -> dict[str, tuple[int, float]]:
    """{lora name: (rank, alpha)} of a kohya LoRA state dict, as kohya's create_network_from_weights reads them: the
    rank is lora_down's first dimension, the alpha the file's (the rank when the file has none, as old LoRAs)."""
    ranks = {k.split(".")[0]: int(v.shape[0]) for k, v in state.items() if k.endswith(".lora_down.weight")}
    alphas = {k.split(".")[0]: float(v) for k, v in state.items() if k.endswith(".alpha")}
    return {name: (rank, alphas.get(name, float(rank))) for name, rank in ranks.items()}
