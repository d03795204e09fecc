"""Stable Diffusion 3 (`StableDiffusion3Pipeline`): the family contract on a tiny SD3 (three text encoders, true CFG)."""

from family_contract import FamilyContract

from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd3_pipeline


class TestSD3Contract(FamilyContract):
    family = "sd3"
    guidance = 4.0
    stock_guidances = (5.0, 1.0)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    stock_atol = 1e-6  # measured 0 (CFG 5 and none)
    lora_atol = 1e-6  # measured 0
    prefix_atol = 2e-5  # measured 1.3e-6 (images; latents 1.1e-6)
    prefix_logp_atol = 1e-6  # measured 6e-8

    def build_stock(self, seed=0):
        return build_tiny_sd3_pipeline(seed=seed)
