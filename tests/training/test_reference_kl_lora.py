"""The reference KL with LoRA (`kl_type: reference`): the reference policy is the base model with the adapter switched
off (no second copy of the model), its log-prob is the base model's exactly, and the KL pulls the LoRA back."""

import copy

import torch

from diffusers_mixgrpo import GRPOTrainingPipeline
from diffusers_mixgrpo.training.model_setup import reference_policy
from diffusers_mixgrpo.utils.tiny_models import build_tiny_flux_pipeline
from testing_utils import brightness, tiny_config, tiny_flux_trainer

PROMPTS = ["a red circle on the left", "a blue square on the right"]


def make_config(tmp_path, **overrides):
    values = dict(
        method="mixgrpo", num_inference_steps=4, num_generations=4, sample_prompts_per_device=2, window_size=2,
        learning_rate=3e-3, max_train_steps=1, seed=3,
    )  # fmt: skip
    return tiny_config(tmp_path / "run", **{**values, **overrides})


def _logp_and_mean(pipe, batch, t):
    with torch.no_grad():
        out = [pipe.log_prob(batch, t, chunk, return_stats=True) for chunk in batch.chunks]
    return torch.cat([o[0] for o in out]), torch.cat([o[1] for o in out])


def test_the_reference_policy_is_the_base_model_exactly_and_the_lora_comes_back(tmp_path):
    trainer = tiny_flux_trainer(make_config(tmp_path, max_train_steps=2), PROMPTS)
    trainer.train_step()
    trainer.train_step()  # the LoRA B matrices start at 0: two steps make the adapter change the output
    batch = trainer._rollout(2)
    base = GRPOTrainingPipeline.from_pipe(build_tiny_flux_pipeline(seed=0))  # the same weights, no adapter
    base.scheduler = copy.deepcopy(trainer.pipeline.scheduler)  # the run's SDE settings (eta, sde_type)
    t = batch.step_indices[0]
    tuned_logp, _ = _logp_and_mean(trainer.pipeline, batch, t)
    base_logp, base_mean = _logp_and_mean(base, batch, t)
    assert not torch.equal(tuned_logp, base_logp)
    with reference_policy(trainer.pipeline.denoiser):
        ref_logp, ref_mean = _logp_and_mean(trainer.pipeline, batch, t)
    assert torch.equal(ref_logp, base_logp) and torch.equal(ref_mean, base_mean)  # bit for bit
    assert torch.equal(_logp_and_mean(trainer.pipeline, batch, t)[0], tuned_logp)  # the adapter is back on


def test_the_reference_kl_keeps_no_copy_of_the_model(tmp_path):
    plain = tiny_flux_trainer(make_config(tmp_path / "a"), PROMPTS)
    kl = tiny_flux_trainer(make_config(tmp_path / "b", kl_type="reference", kl_coeff=0.1), PROMPTS)

    def tensors(trainer):
        found = {}
        for module in (trainer.pipeline.denoiser, trainer.model):
            for p in module.parameters():
                found[p.data_ptr()] = p.numel()
        return sum(found.values())

    assert tensors(kl) == tensors(plain)
    assert not any(isinstance(v, torch.nn.Module) for k, v in vars(kl).items() if k not in vars(plain))


def test_the_kl_gradient_moves_the_lora_back_toward_the_base(tmp_path):
    # Train the LoRA away from the base on brightness, then one plain gradient step on the loss with every advantage
    # 0 (no policy gradient) and the reference KL alone: on the same batch, the KL to the base falls.
    trainer = tiny_flux_trainer(make_config(tmp_path, max_train_steps=2), PROMPTS)
    trainer.train_step()
    trainer.train_step()
    trainer.config.kl_type, trainer.config.kl_coeff = "reference", 1.0
    batch = trainer._rollout(2)
    t, idx, zeros = batch.step_indices[0], batch.chunks[0], torch.zeros(batch.batch_size)
    params = [p for n, p in trainer.pipeline.denoiser.named_parameters() if "lora" in n]
    sgd = torch.optim.SGD(params, lr=1e-2)
    first = trainer._window_step_loss(batch, t, idx, zeros, None)
    assert float(first.policy_loss.detach()) == 0.0 and float(first.kl.detach()) > 0
    sgd.zero_grad()
    first.loss.backward()
    sgd.step()
    second = trainer._window_step_loss(batch, t, idx, zeros, None)
    assert float(second.kl.detach()) < float(first.kl.detach())


def test_with_the_kl_the_lora_stays_closer_to_the_base(tmp_path):
    # The same run (seed, prompts, brightness reward) with and without kl_type="reference": after 4 steps the adapter
    # moved the policy less from the base, measured as the reference KL of one fresh rollout's first window step.
    def run(sub, **kl):
        config = make_config(tmp_path / sub, max_train_steps=4, **kl)
        trainer = tiny_flux_trainer(config, PROMPTS, rewards={brightness: 1.0})
        for _ in range(4):
            trainer.train_step()
        trainer.config.kl_type, trainer.config.kl_coeff = "reference", 1e-12  # measure the KL, train nothing more
        batch = trainer._rollout(4)
        out = trainer._window_step_loss(batch, batch.step_indices[0], batch.chunks[0], torch.zeros(8), None)
        return float(out.kl.detach())

    kl_off = run("off")
    kl_on = run("on", kl_type="reference", kl_coeff=20.0)
    assert kl_on < 0.5 * kl_off  # measured: 5.7e-7 with the KL, 2.3e-6 without (ratio 0.25)
