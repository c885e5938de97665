"""KL-weight (beta) schedules: pure functions of the optimizer step.

A schedule is ``beta_fn(step) -> beta``, ``step`` an int or a traced int32 counting optimizer steps from 0:
:func:`constant` (beta = 1 is the ELBO of Kingma & Welling 2014, beta > 1 the beta-VAE of Higgins et al. 2017),
:func:`linear_warmup` (the KL annealing of Bowman et al. 2016) and :func:`cyclical` (Fu et al. 2019).

References:
  Bowman et al., "Generating Sentences from a Continuous Space", CoNLL 2016.
  Higgins et al., "beta-VAE: Learning Basic Visual Concepts...", ICLR 2017.
  Fu et al., "Cyclical Annealing Schedule: A Simple Approach to Mitigating KL Vanishing", NAACL 2019.
"""

from __future__ import annotations

from collections.abc import Callable

import jax.numpy as jnp
import optax

BetaSchedule = Callable[[int], "jnp.ndarray"]

SCHEDULES = ("constant", "linear", "cyclical")


def constant(beta: float = 1.0) -> BetaSchedule:
    """beta(step) = ``beta`` for every step."""
    return optax.constant_schedule(float(beta))


def linear_warmup(beta: float, warmup_steps: int) -> BetaSchedule:
    """beta(step) = ``beta * min(1, step / warmup_steps)``: 0 at step 0, ``beta`` from ``warmup_steps`` on."""
    if warmup_steps <= 0:
        raise ValueError(f"warmup_steps must be positive, got {warmup_steps}")
    return optax.linear_schedule(init_value=0.0, end_value=float(beta), transition_steps=int(warmup_steps))


def cyclical(beta: float, cycle_steps: int, ramp_fraction: float = 0.5) -> BetaSchedule:
    """Cyclical annealing (Fu et al. 2019, eq. 3 with a linear ramp).

    With tau = (step mod cycle_steps) / cycle_steps, the position in the cycle,
    beta(step) = ``beta * min(1, tau / ramp_fraction)``. Fu et al. use
    ``ramp_fraction`` R = 0.5: half of each cycle anneals, half holds at beta.
    """
    if cycle_steps <= 0:
        raise ValueError(f"cycle_steps must be positive, got {cycle_steps}")
    if not 0.0 < ramp_fraction <= 1.0:
        raise ValueError(f"ramp_fraction must be in (0, 1], got {ramp_fraction}")
    ramp = optax.linear_schedule(
        init_value=0.0, end_value=float(beta), transition_steps=max(1, round(ramp_fraction * cycle_steps))
    )

    def schedule(step):
        return ramp(jnp.mod(jnp.asarray(step), cycle_steps))

    return schedule


def make_beta_schedule(
    name: str, beta: float = 1.0, warmup_steps: int = 0, cycle_steps: int = 0, ramp_fraction: float = 0.5
) -> BetaSchedule:
    """The schedule called ``name`` (one of :data:`SCHEDULES`) with its settings."""
    if name == "constant":
        return constant(beta)
    if name == "linear":
        return linear_warmup(beta, warmup_steps)
    if name == "cyclical":
        return cyclical(beta, cycle_steps, ramp_fraction)
    raise ValueError(f"beta schedule must be one of {SCHEDULES}, got {name!r}")
