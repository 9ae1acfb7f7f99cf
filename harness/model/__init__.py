"""3D U-Net model, level-wise freezing and FLOP accounting (imports TensorFlow)."""

from harness.model.flops import forward_flops, training_flops
from harness.model.freeze import apply_freeze, count_params, freeze_all_but_head, freeze_encoder, unfreeze_all
from harness.model.unet import build_unet, encoder_levels, level_of, set_seed

__all__ = [
    "build_unet",
    "set_seed",
    "encoder_levels",
    "level_of",
    "apply_freeze",
    "freeze_encoder",
    "freeze_all_but_head",
    "unfreeze_all",
    "count_params",
    "forward_flops",
    "training_flops",
]
