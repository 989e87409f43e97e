"""LoRA through PEFT: the learner trains low-rank adapters on a frozen base model.

The frozen reference is the same network with its adapters switched off (no second copy of the weights), and
the rollout engines receive merged weights (W + scale * B @ A under the base model's own names), so vLLM serves
a plain model and nothing in the rollout path knows about adapters.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from engine.base.errors import UserError

ADAPTER = "default"  # PEFT's name for the one adapter a model gets


def add_adapters(lm: nn.Module, settings) -> nn.Module:
    """Injects LoRA layers into `lm` in place (model.lora: r, alpha, dropout, target_modules) and freezes
    everything else; returns the PEFT wrapper, whose save_pretrained writes the adapter folder."""
    from peft import LoraConfig, get_peft_model

    targets = list(settings.target_modules)
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                        target_modules=targets[0] if targets == ["all-linear"] else targets)
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in lm.named_modules()
                     if isinstance(m, nn.Linear) and m is not lm.get_output_embeddings()})
    hint = f"Hint: this model's Linear layers are {linear}, or use [all-linear]."
    try:
        model = get_peft_model(lm, config)
    except ValueError as err:  # PEFT: "Target modules {...} not found in the base model"
        if "not found" not in str(err):
            raise
        raise UserError(f"model.lora.target_modules={targets} matches no Linear layer of this model. {hint}") from None
    from peft.tuners.lora import Linear as LoraLinear

    others = [name for name, m in lora_layers(lm) if not isinstance(m, LoraLinear)]
    if others or not isinstance(lm.get_output_embeddings(), nn.Linear):
        # embeddings, convolutions or the output head: the merge and the fused head take Linear layers only
        raise UserError(f"model.lora.target_modules={targets} puts adapters on layers that are not hidden Linear "
                        f"layers ({others or 'the output head'}). {hint}")
    return model


def lora_layers(lm: nn.Module) -> list[tuple[str, nn.Module]]:
    from peft.tuners.lora import LoraLayer

    return [(name, m) for name, m in lm.named_modules() if isinstance(m, LoraLayer)]


class AdaptersOff:
    """The frozen reference of a LoRA learner: the policy's own scoring model, called with every adapter
    switched off, so it computes the base model exactly."""

    def __init__(self, scoring_model: nn.Module):
        self.scoring_model = scoring_model
        self.layers = [m for _, m in lora_layers(scoring_model)]

    def __call__(self, *args, **kwargs):
        # PEFT's public switch (disable_adapter) also flips the adapters' requires_grad, which would drop
        # the gradient hooks DeepSpeed put on them: set only the flag its LoRA forward reads.
        for layer in self.layers:
            layer._disable_adapters = True
        training = self.scoring_model.training
        self.scoring_model.eval()  # a reference without dropout, as a frozen copy would be
        try:
            return self.scoring_model(*args, **kwargs)
        finally:
            self.scoring_model.train(training)
            for layer in self.layers:
                layer._disable_adapters = False

    def eval(self):
        return self


def is_lora_layer(module: nn.Module) -> bool:
    return hasattr(module, "lora_A") and hasattr(module, "base_layer")


def merged_weights(layer: nn.Module) -> tuple[list[tuple[str, nn.Parameter]], list[nn.Parameter], Callable]:
    """A LoRA layer as the plain layer it stands for: its base's (name, parameter)s, the adapter parameters
    the merge also needs, and a function giving the merged tensors under those names (call it while all
    are gathered under ZeRO-3)."""
    base = layer.base_layer
    own = [("weight", base.weight)] + ([("bias", base.bias)] if base.bias is not None else [])
    adapters = [layer.lora_A[ADAPTER].weight, layer.lora_B[ADAPTER].weight]

    def values() -> list[Tensor]:
        with torch.no_grad():
            merged = base.weight + layer.get_delta_weight(ADAPTER).to(base.weight.dtype)
        return [merged] + ([base.bias.detach()] if base.bias is not None else [])

    return own, adapters, values


def adapter_state(peft_model: nn.Module) -> dict[str, Tensor]:
    """The adapters' weights under PEFT's names (what adapter_model.safetensors holds)."""
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(peft_model).items()}


def trainable(model: nn.Module) -> list[nn.Parameter]:
    """What the optimizer steps: everything in full fine-tuning, the adapters alone with LoRA."""
    return [p for p in model.parameters() if p.requires_grad]
