"""beta schedules: values at given steps against hand-computed ones, eager and under jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import schedules


def _values(schedule, steps):
    eager = np.array([float(schedule(s)) for s in steps])
    jitted = np.asarray(jax.jit(jax.vmap(schedule))(jnp.asarray(steps, jnp.int32)))
    np.testing.assert_allclose(jitted, eager, rtol=1e-6)
    return eager


def test_constant():
    np.testing.assert_allclose(_values(schedules.constant(4.0), [0, 1, 10**6]), [4.0, 4.0, 4.0])


def test_linear_warmup_hand_values():
    # beta * min(1, step / 100)
    got = _values(schedules.linear_warmup(2.0, 100), [0, 1, 50, 99, 100, 101, 5000])
    np.testing.assert_allclose(got, [0.0, 0.02, 1.0, 1.98, 2.0, 2.0, 2.0], rtol=1e-6)


def test_cyclical_hand_values():
    # Cycles of 10 steps; beta rises over the first half (5 steps) and then holds (Fu et al. 2019, R = 0.5).
    got = _values(schedules.cyclical(1.0, 10, 0.5), [0, 1, 2, 4, 5, 9, 10, 12, 15, 19, 20])
    np.testing.assert_allclose(got, [0.0, 0.2, 0.4, 0.8, 1.0, 1.0, 0.0, 0.4, 1.0, 1.0, 0.0], rtol=1e-6)
    # A ramp over the whole cycle: a saw-tooth beta * (step mod 4) / 4.
    got = _values(schedules.cyclical(3.0, 4, 1.0), [0, 1, 2, 3, 4, 7])
    np.testing.assert_allclose(got, [0.0, 0.75, 1.5, 2.25, 0.0, 2.25], rtol=1e-6)


def test_make_beta_schedule_by_name_and_bad_settings():
    np.testing.assert_allclose(float(schedules.make_beta_schedule("linear", 1.0, warmup_steps=4)(2)), 0.5)
    np.testing.assert_allclose(float(schedules.make_beta_schedule("cyclical", 1.0, cycle_steps=8)(2)), 0.5)
    with pytest.raises(ValueError, match="constant"):
        schedules.make_beta_schedule("cosine")
    with pytest.raises(ValueError, match="warmup_steps"):
        schedules.linear_warmup(1.0, 0)
    with pytest.raises(ValueError, match="ramp_fraction"):
        schedules.cyclical(1.0, 10, 0.0)
