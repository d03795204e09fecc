"""The checks every model family must pass (docs/adding_a_model_family.md), on a tiny offline pipeline.

Each `tests/pipelines/test_<family>.py` builds its tiny stock pipeline and calls these with the family's stock call
arguments. Tolerances (float32, CPU) are the ones measured for the 2026 families; each check says what it compares.
"""

import copy

import torch
from diffusers import FlowMatchEulerDiscreteScheduler
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict

from diffusers_mixgrpo import GRPOTrainingPipeline, MixODESDEScheduler

PROMPTS = ["a red circle on the left", "a blue square on the right"]

# Tolerances (CPU float32). Measured on the Qwen-Image / FLUX.2 [dev] / [klein] / Z-Image tiny models (2026-12-02):
# stock images 0 (bit-identical, with and without CFG), stock + LoRA 0, prefix sharing 0 except Z-Image 2.5e-6 (the
# prefix runs at batch P instead of P x G, which changes GEMM rounding); the margins cover other CPUs' kernels.
STOCK_IMAGE_ATOL = 1e-5  # empty window vs the stock pipeline's images
SHARING_LATENT_ATOL = 1e-5  # prefix sharing vs none
SHARING_LOGP_ATOL = 1e-4
LORA_IMAGE_ATOL = 1e-5  # stock pipeline + loaded LoRA vs the trained pipeline


def grpo(stock):
    pipe = GRPOTrainingPipeline.from_pipe(stock)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def rollout(pipe, size, guidance, seed=0, prompts=PROMPTS, **kwargs):
    kwargs.setdefault("num_generations", 3)
    kwargs.setdefault("num_inference_steps", 6)
    kwargs.setdefault("sde_window", (1, 2))
    return pipe.rollout(
        prompts,
        height=size,
        width=size,
        guidance_scale=guidance,
        generator=torch.Generator().manual_seed(seed),
        **kwargs,
    )


def check_scheduler_swap_keeps_the_grid(stock, family, size, num_steps=(4, 6, 25)):
    """The windowed sampler built from the stock scheduler's config gives the stock scheduler's grid exactly, with
    the `set_timesteps` arguments the stock pipeline passes (its sigmas, its `mu` rule, its config flags)."""
    pipe = grpo(stock)
    assert pipe.model_family == family
    assert isinstance(pipe.scheduler, MixODESDEScheduler)
    reference = FlowMatchEulerDiscreteScheduler.from_config(stock.scheduler.config)
    noise = pipe.adapter.prepare_noise(1, size, size, torch.Generator().manual_seed(0), "cpu", torch.float32)
    for n in num_steps:
        kwargs = pipe.adapter.timestep_kwargs(noise, n)
        ours = copy.deepcopy(pipe.scheduler)
        ours.set_sde_window(0, 0)
        ours.set_timesteps(**kwargs)
        reference.set_timesteps(**kwargs)
        assert torch.equal(ours.timesteps, reference.timesteps), (n, ours.timesteps, reference.timesteps)
        assert torch.equal(ours.sigmas.float(), reference.sigmas.float()), n


def check_empty_window_matches_stock(stock, size, guidance, stock_kwargs, atol=STOCK_IMAGE_ATOL, steps=6):
    """An ODE rollout (window size 0) gives the stock pipeline's image for the same noise, within `atol`."""
    pipe = grpo(stock)
    noise = pipe.adapter.prepare_noise(1, size, size, torch.Generator().manual_seed(3), "cpu", torch.float32)
    ours = pipe.rollout(PROMPTS[:1], 1, steps, (0, 0), height=size, width=size, latents=noise, guidance_scale=guidance)
    reference = type(stock)(**stock.components, **pipe.adapter.extra_stock_kwargs())
    reference.set_progress_bar_config(disable=True)
    ref = reference(
        prompt=PROMPTS[0],
        height=size,
        width=size,
        num_inference_steps=steps,
        latents=_stock_latents(pipe, noise),
        output_type="pt",
        **stock_kwargs,
    ).images
    assert ours.log_probs.shape == (1, 0)
    err = float((ours.images - ref).abs().max())
    assert err <= atol, f"max |ours - stock| = {err:.2e} > {atol:.0e}"
    return err


def _stock_latents(pipe, noise):
    # FLUX.2 pipelines take the noise before packing (B, C, H, W); the others take their packed layout.
    if pipe.model_family in ("flux2", "flux2_klein"):
        b, seq, c = noise.shape
        side = int(round(seq**0.5))  # the checks use square images
        return noise.transpose(1, 2).reshape(b, c, side, side)
    return noise


def check_on_policy_ratio_is_one(stock, size, guidance):
    pipe = grpo(stock)
    batch = rollout(pipe, size, guidance, max_batch_size=3)
    with torch.no_grad():
        for j, step in enumerate(batch.step_indices):
            for chunk in batch.chunks:
                ratio = torch.exp(pipe.log_prob(batch, step, chunk) - batch.log_probs[chunk, j])
                assert torch.equal(ratio, torch.ones_like(ratio)), (step, ratio)
    return batch


def add_lora(pipe, targets, seed=0):
    torch.manual_seed(seed)
    pipe.denoiser.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=targets, init_lora_weights="gaussian"))


def check_lora_gradients(stock, size, guidance, targets, unused=()):
    """`log_prob` backpropagates into every LoRA weight except those of `unused` modules (name substrings): a
    dual-stream transformer discards its last block's text-stream output, so that LoRA gets no gradient."""
    pipe = grpo(stock)
    add_lora(pipe, targets)
    batch = rollout(pipe, size, guidance, num_generations=2)
    pipe.log_prob(batch, batch.step_indices[0]).sum().backward()
    lora = [p for n, p in pipe.denoiser.named_parameters() if "lora_" in n and not any(u in n for u in unused)]
    assert lora and all(p.grad is not None for p in lora)
    assert sum(float(p.grad.abs().sum()) for p in lora if p.grad is not None) > 0
    assert all(p.grad is None for n, p in pipe.denoiser.named_parameters() if "lora" not in n)
    pipe.denoiser.zero_grad(set_to_none=True)
    return pipe, batch


def check_saved_lora_reproduces_in_stock(build_stock, size, guidance, targets, stock_kwargs, tmp_path):
    """Train a step (a normalised gradient step on the log-prob), save with the family's `save_lora_weights`, load into a fresh
    stock pipeline with `load_lora_weights`: its images equal the trained pipeline's ODE rollout."""
    from diffusers.utils import convert_state_dict_to_diffusers

    pipe = grpo(build_stock())
    add_lora(pipe, targets)
    lora = [p for n, p in pipe.denoiser.named_parameters() if "lora_" in n]
    batch = rollout(pipe, size, guidance, num_generations=2)
    (-pipe.log_prob(batch, batch.step_indices[0]).mean()).backward()
    # one step of a tiny model's GRPO gradient moves the images by < 1e-6; use a large normalised step so that
    # the LoRA visibly changes the images and the comparison below is not vacuous
    with torch.no_grad():
        for p in lora:
            if p.grad is not None:
                p -= 0.3 * p.grad / (p.grad.norm() + 1e-12)
    layers = get_peft_model_state_dict(pipe.denoiser)  # what the trainer saves (peft keys for these loaders)
    if pipe.adapter.lora_legacy_keys:
        layers = convert_state_dict_to_diffusers(layers)
    pipe.save_lora_weights(str(tmp_path), transformer_lora_layers=layers, safe_serialization=True)

    noise = pipe.adapter.prepare_noise(1, size, size, torch.Generator().manual_seed(5), "cpu", torch.float32)
    ours = pipe.rollout(PROMPTS[:1], 1, 4, (0, 0), height=size, width=size, latents=noise, guidance_scale=guidance)
    fresh = build_stock()
    fresh.set_progress_bar_config(disable=True)
    kw = dict(prompt=PROMPTS[0], height=size, width=size, num_inference_steps=4, output_type="pt", **stock_kwargs)
    before = fresh(latents=_stock_latents(pipe, noise), **kw).images
    fresh.load_lora_weights(str(tmp_path))
    after = fresh(latents=_stock_latents(pipe, noise), **kw).images
    assert float((after - before).abs().max()) > 1e-4, "the LoRA step changed nothing: the check would be vacuous"
    err = float((after - ours.images).abs().max())
    assert err <= LORA_IMAGE_ATOL, f"stock + LoRA differs from the trained pipeline by {err:.2e}"
    return err


def check_prefix_sharing(stock, size, guidance):
    """Window start 4, size 2, G = 3, N = 6: the 4 prefix steps run once per prompt instead of 3 times."""
    pipe = grpo(stock)
    kw = dict(num_generations=3, num_inference_steps=6, sde_window=(4, 2))
    shared = rollout(pipe, size, guidance, share_prefix=True, **kw)
    unshared = rollout(pipe, size, guidance, share_prefix=False, **kw)
    torch.testing.assert_close(shared.latents, unshared.latents, rtol=0, atol=SHARING_LATENT_ATOL)
    torch.testing.assert_close(shared.log_probs, unshared.log_probs, rtol=0, atol=SHARING_LOGP_ATOL)
    torch.testing.assert_close(shared.images, unshared.images, rtol=0, atol=SHARING_LATENT_ATOL)
    assert unshared.nfe == len(PROMPTS) * 3 * 6
    assert shared.nfe == len(PROMPTS) * (4 + 3 * 2)
    return float((shared.latents - unshared.latents).abs().max())


def check_gradient_checkpointing(stock, size, guidance, targets):
    """`enable_gradient_checkpointing` (the shipped configs turn it on) leaves the log-prob and its LoRA gradients
    unchanged: the backward re-runs the same forward."""
    pipe = grpo(stock)
    add_lora(pipe, targets)
    batch = rollout(pipe, size, guidance, num_generations=2)
    step = batch.step_indices[0]

    def logp_and_grads():
        pipe.denoiser.zero_grad(set_to_none=True)
        logp = pipe.log_prob(batch, step)
        logp.sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in pipe.denoiser.named_parameters() if p.grad is not None}

    plain, plain_grads = logp_and_grads()
    pipe.enable_gradient_checkpointing()
    try:
        ckpt, ckpt_grads = logp_and_grads()
    finally:
        pipe.disable_gradient_checkpointing()
    torch.testing.assert_close(ckpt, plain, rtol=0, atol=1e-6)
    assert ckpt_grads.keys() == plain_grads.keys() and plain_grads
    for name, grad in plain_grads.items():
        torch.testing.assert_close(ckpt_grads[name], grad, rtol=1e-4, atol=1e-6, msg=name)
