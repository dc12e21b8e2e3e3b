"""The term on real diffusers parts: a DDPMScheduler's schedule and prediction type, its integer
timesteps, and UNet1DModel as the denoiser."""

import pytest
import torch
from diffusers import DDPMScheduler, UNet1DModel

from cdp.contraction import ContractionRegularizer, FiniteDifferences
from cdp.diffusion.from_diffusers import (DiffusersDenoiser, prediction_from_scheduler, schedule_from_scheduler,
                                          times_from_timesteps, timesteps_from_times)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
def test_the_schedule_reproduces_the_schedulers_alphas_cumprod_and_add_noise(beta_schedule):
    sch = DDPMScheduler(num_train_timesteps=100, beta_schedule=beta_schedule)
    ours = schedule_from_scheduler(sch)
    assert torch.equal(ours.discretize(100).alphas_cumprod[1:].float(), sch.alphas_cumprod)  # exactly
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.randn(6, 2, 4, generator=g), torch.randn(6, 2, 4, generator=g)
    k = torch.tensor([0, 1, 17, 50, 98, 99])
    t = times_from_timesteps(k, 100)
    assert torch.equal(timesteps_from_times(t, 100), k)
    assert torch.allclose(ours.q_sample(x0, t, noise), sch.add_noise(x0, noise, k), atol=1e-6)


def test_prediction_types():
    assert prediction_from_scheduler(DDPMScheduler(prediction_type="epsilon")) == "eps"
    assert prediction_from_scheduler(DDPMScheduler(prediction_type="sample")) == "x0"
    with pytest.raises(ValueError, match=r"supports prediction_type \['epsilon', 'sample'\], not 'v_prediction'"):
        prediction_from_scheduler(DDPMScheduler(prediction_type="v_prediction"))
    with pytest.raises(ValueError, match="zero-terminal-SNR"):
        schedule_from_scheduler(DDPMScheduler(rescale_betas_zero_snr=True))


def small_unet() -> UNet1DModel:
    return UNet1DModel(in_channels=2, out_channels=2, extra_in_channels=0, block_out_channels=(16, 32),
                       down_block_types=("DownResnetBlock1D", "DownResnetBlock1D"), up_block_types=("UpResnetBlock1D",),
                       mid_block_type="MidResTemporalBlock1D", out_block_type="OutConv1DBlock", act_fn="mish",
                       time_embedding_type="positional", use_timestep_embedding=True, flip_sin_to_cos=False,
                       freq_shift=1.0, layers_per_block=1, norm_num_groups=8)


def test_the_term_on_a_unet1dmodel_is_the_exact_eigenvalue_hinge():
    """gamma * mean(max(lambda_max(sym J_G), -beta)) on diffusers' UNet1DModel (chunks 2 x 4, so
    the exact eigenvalue), by hand from each sample's full Jacobian, through the default finite
    differences and through autograd; gradients reach the UNet."""
    torch.manual_seed(0)
    sch = DDPMScheduler(num_train_timesteps=100, beta_schedule="squaredcos_cap_v2")
    unet = small_unet().double()
    net = DiffusersDenoiser(unet, 100)
    schedule, prediction = schedule_from_scheduler(sch), prediction_from_scheduler(sch)
    reg = ContractionRegularizer(schedule, prediction, gamma=0.5, margin=0.1)
    k = torch.tensor([0, 3, 40, 99])
    x0 = torch.rand(4, 2, 4, dtype=torch.float64) * 2 - 1
    x_t = sch.add_noise(x0, torch.randn_like(x0), k)
    t = times_from_timesteps(k, 100).double()
    term = reg(net, x_t, t)
    f, h = schedule.sampling_ode_coefficients(t, prediction)
    by_hand = []
    for i in range(4):
        J = torch.autograd.functional.jacobian(lambda a: net(a[None], t[i:i + 1])[0].flatten(), x_t[i]).reshape(8, 8)
        lam = f[i] / h[i].abs() + torch.linalg.eigvalsh(torch.sign(h[i]) * 0.5 * (J + J.T))[-1]
        by_hand.append(lam.clamp_min(-0.1))
    assert torch.allclose(term, 0.5 * torch.stack(by_hand).mean(), atol=1e-9)
    assert isinstance(reg.products(net), FiniteDifferences)  # the default for a wrapped module
    autograd = ContractionRegularizer(schedule, prediction, gamma=0.5, margin=0.1, products="autograd")
    assert torch.allclose(autograd(net, x_t, t), term, atol=1e-9)
    grads = torch.autograd.grad(term, list(unet.parameters()), allow_unused=True)
    assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0


def test_a_model_that_changes_the_shape_is_one_clear_line():
    sch = DDPMScheduler(num_train_timesteps=10)
    reg = ContractionRegularizer(schedule_from_scheduler(sch), "eps")
    wrong = DiffusersDenoiser(lambda a, k: a[:, :1], 10)
    with pytest.raises(ValueError, match="fn must map"):
        reg(wrong, torch.randn(3, 2, 4), torch.full((3,), 0.5))
