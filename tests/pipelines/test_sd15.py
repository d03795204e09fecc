"""Stable Diffusion 1.5 (`StableDiffusionPipeline`) on MixDDIMSDEScheduler: the family contract on a tiny SD1.5 UNet,
with epsilon and with v-prediction."""

from family_contract import FamilyContract

from diffusers_mixgrpo import GRPOTrainingPipeline, MixDDIMSDEScheduler
from diffusers_mixgrpo.utils.tiny_models import build_tiny_sd_pipeline


class TestSD15EpsilonContract(FamilyContract):
    family = "sd15"
    guidance = 5.0
    stock_guidances = (5.0, 1.0)
    lora_targets = ["to_q", "to_k", "to_v", "to_out.0"]
    mix_scheduler = MixDDIMSDEScheduler
    prediction_type = "epsilon"
    stock_atol = 1e-6  # measured 0 (CFG 5 and none; v-prediction too)
    lora_atol = 1e-6  # measured 0
    prefix_atol = (
        1e-4  # measured 0 here; up to 2.9e-5 on the 2-core Intel Xeon CI (the UNet convolutions' thread split)
    )
    prefix_logp_atol = 1e-4  # measured 0 here; kept with the latents' margin above (CI Xeon rounding)

    def build_stock(self, seed=0):
        return build_tiny_sd_pipeline(seed=seed, prediction_type=self.prediction_type)


class TestSD15VPredictionContract(TestSD15EpsilonContract):
    lora_targets = ["to_q", "to_k", "to_v"]
    prediction_type = "v_prediction"


def test_swap_keeps_the_ddim_grid():
    stock = build_tiny_sd_pipeline()
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    for n in (6, 25, 50):
        stock.scheduler.set_timesteps(n)
        pipe.scheduler.set_timesteps(n)
        assert pipe.scheduler.timesteps.tolist() == stock.scheduler.timesteps.tolist()
