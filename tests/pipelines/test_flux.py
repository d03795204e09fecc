"""FLUX.1 (`FluxPipeline`): the family contract on a tiny FLUX.1 (packed latents, embedded guidance, dynamic shift)."""

from family_contract import FamilyContract

from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline


class TestFluxContract(FamilyContract):
    family = "flux"
    guidance = 3.5
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    stock_atol = 1e-6  # measured 0 (bit-identical)
    lora_atol = 1e-6  # measured 0
    prefix_atol = 1e-6  # measured 0 (latents, images; 1 and 2 threads)
    prefix_logp_atol = 1e-6  # measured 0

    def build_stock(self, seed=0):
        return build_tiny_flux_pipeline(seed=seed)
