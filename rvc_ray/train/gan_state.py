"""The typed GAN training state of one worker: the generator side and the adversary.

:class:`Adversary` owns D, its optimizer and per-epoch scheduler (and the fp16 GradScaler, shared with G's
update: one ``scaler.update()`` per iteration, in ``g_step``); it runs the D step on detached fakes and
returns the generator's adversarial terms with D read-only (audiocraft's ``AdversarialLoss``). Gradient
isolation is that of :mod:`rvc_ray.train.steps`: every update backpropagates into its own optimizer's
parameters only (``backward(inputs=...)``), and D's forward for G's loss runs under DDP's ``no_sync()``.

:class:`GeneratorState` is the same for G, and :class:`GANState` holds both. Each model is kept un-wrapped
(``model``: what checkpoints save, so the state-dict keys never carry DDP's ``module.`` prefix) beside the
module the steps run (``wrapped``: the DDP wrapper, or the model itself for one worker).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn

from rvc_ray.train import metric_names as names
from rvc_ray.train import steps

if TYPE_CHECKING:
    import torch

    from rvc_ray.config import RunConfig
    from rvc_ray.data.batch import RVCBatch
    from rvc_ray.model.synthesizer import Synthesizer

__all__ = ["Adversary", "GANState", "GeneratorState", "build_gan_state", "wrap_models"]

Scheduler = Any  # torch.optim.lr_scheduler.LRScheduler (ExponentialLR); None in tests that never step epochs


@dataclass
class GeneratorState:
    """G, its optimizer and per-epoch scheduler; ``wrapped`` is what the steps run (DDP or ``model``)."""

    model: Synthesizer
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    wrapped: nn.Module | None = None

    @property
    def module(self) -> nn.Module:
        """The module the steps run: the DDP wrapper once :func:`wrap_models` set it, else the model."""
        return self.wrapped if self.wrapped is not None else self.model

    def step(self, adversary: Adversary, gpass: steps.GeneratorPass, settings: steps.StepSettings) -> dict[str, float]:
        """One G update (:func:`~rvc_ray.train.steps.g_step`) on the adversary's terms; D's gradients (left by
        its own step) are released afterwards, whatever happens."""
        try:
            return steps.g_step(adversary.generator_terms(gpass, settings), self.optimizer, gpass, settings, adversary.scaler)
        finally:
            adversary.release_gradients()


@dataclass
class Adversary:
    """D with its optimizer, per-epoch scheduler and the fp16 GradScaler (None for fp32/bf16)."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Scheduler
    scaler: torch.amp.GradScaler | None = None
    wrapped: nn.Module | None = None

    @property
    def module(self) -> nn.Module:
        """The module the steps run: the DDP wrapper once :func:`wrap_models` set it, else the model."""
        return self.wrapped if self.wrapped is not None else self.model

    def step(self, gpass: steps.GeneratorPass, settings: steps.StepSettings) -> dict[str, float]:
        """One D update on (real, detached fake): :func:`~rvc_ray.train.steps.d_step`; G gets no gradient."""
        return steps.d_step(self.module, self.optimizer, gpass, settings, self.scaler)

    def generator_terms(self, gpass: steps.GeneratorPass, settings: steps.StepSettings) -> dict[str, Tensor]:
        """``loss/g/adv`` and ``loss/g/fm`` for G's update, D read-only (no D parameter gradient)."""
        return steps.adversarial_terms(self.module, gpass, settings)

    def release_gradients(self) -> None:
        """Drop D's parameter gradients (after G's update: they are not needed until the next D step)."""
        self.model.zero_grad(set_to_none=True)


@dataclass
class GANState:
    """Both sides of the GAN on one worker."""

    generator: GeneratorState
    adversary: Adversary

    @property
    def scaler(self) -> torch.amp.GradScaler | None:
        """The fp16 GradScaler of both updates (held by the adversary), None otherwise."""
        return self.adversary.scaler

    def train_step(
        self, batch: RVCBatch, settings: steps.StepSettings, *, check_batch: bool = True
    ) -> dict[str, float]:
        """One GAN iteration: generator forward, the adversary's D step on detached fakes, then G's step.

        Returns the merged metrics plus ``skipped`` (1.0: an update of this iteration was skipped) and
        ``skipped/scaler`` (1.0: the fp16 GradScaler skipped it). A bad batch raises
        :class:`~rvc_ray.train.health.BadBatchError` (policy "raise") or returns ``{"skipped": 1.0}`` without
        any forward (policy "skip"; under DDP every rank must then skip the same batch).
        ``check_batch=False``: the caller already checked it (the loop agrees on it across workers).
        """
        problem = steps.find_batch_problem(batch) if check_batch else None
        if problem is not None:
            steps.handle_problem(problem, settings, steps.BadBatchError)
            return {names.SKIPPED: 1.0}
        gpass = steps.generator_forward(self.generator.module, batch, settings)
        metrics = self.adversary.step(gpass, settings)
        metrics.update(self.generator.step(self.adversary, gpass, settings))
        metrics[names.SKIPPED] = max(metrics[names.SKIPPED_D], metrics[names.SKIPPED_G])
        metrics[names.SKIPPED_SCALER] = max(metrics.pop(names.SKIPPED_D_SCALER), metrics.pop(names.SKIPPED_G_SCALER))
        return metrics

    def step_schedulers(self) -> None:
        """End of an epoch: decay both learning rates (RVC's per-epoch ExponentialLR)."""
        self.generator.scheduler.step()
        self.adversary.scheduler.step()

    @property
    def learning_rate(self) -> float:
        """G's current learning rate (the ``learning_rate`` metric)."""
        return float(self.generator.optimizer.param_groups[0]["lr"])


def build_gan_state(cfg: RunConfig, settings: steps.StepSettings, device: torch.device | str) -> GANState:
    """Fresh G and D of ``cfg.model`` on ``device`` with their AdamW optimizers, ExponentialLR schedulers and
    (fp16 only) the GradScaler; seed torch before calling it for a reproducible initialisation."""
    from rvc_ray.model.build import build_discriminator, build_generator

    gen = build_generator(cfg.model, cfg.audio).to(device)
    disc = build_discriminator(cfg.model).to(device)
    opt_g, opt_d = steps.build_optimizers(gen, disc, cfg.optim)
    sched_g, sched_d = steps.build_schedulers(opt_g, opt_d, cfg.optim)
    return GANState(
        GeneratorState(gen, opt_g, sched_g),
        Adversary(disc, opt_d, sched_d, scaler=steps.build_grad_scaler(settings)),
    )


def wrap_models(gen: nn.Module, disc: nn.Module, *, always: bool = False) -> tuple[nn.Module, nn.Module]:
    """Each model in its own DDP wrapper (none for one worker, unless ``always`` =
    ``train.use_ddp_for_one_worker``); every parameter of G gets a gradient each step, so no
    ``find_unused_parameters`` (the 2-worker tests would hang or raise otherwise).

    D runs two forwards per iteration (D step, G step). Its only possible buffers are spectral-norm power
    iteration vectors, computed from the (identical) weights, so they need no broadcast: with buffers D is
    wrapped with ``broadcast_buffers=False``; without (the default weight-norm D) the flag is left out, as
    torch 2.13 deprecates it.
    """
    import torch.distributed as dist
    from ray.train.torch import prepare_model
    from torch.nn.parallel import DistributedDataParallel

    gen_kwargs: dict[str, Any] = {"find_unused_parameters": False}
    disc_kwargs: dict[str, Any] = {"broadcast_buffers": False} if any(True for _ in disc.buffers()) else {}
    gen_ddp = prepare_model(gen, parallel_strategy_kwargs=gen_kwargs)
    disc_ddp = prepare_model(disc, parallel_strategy_kwargs=disc_kwargs)
    if always and dist.is_available() and dist.is_initialized() and not isinstance(gen_ddp, DistributedDataParallel):
        device = next(gen.parameters()).device
        ids = [device.index if device.index is not None else 0] if device.type == "cuda" else None
        gen_ddp = DistributedDataParallel(gen, device_ids=ids, **gen_kwargs)
        disc_ddp = DistributedDataParallel(disc, device_ids=ids, **disc_kwargs)
    return gen_ddp, disc_ddp
