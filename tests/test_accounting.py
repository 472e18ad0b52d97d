"""Privacy accounting: closed forms, the thesis's numbers, DP-Pix scales."""
from __future__ import annotations

import math

import numpy as np
import pytest

from anonymize.privacy.accounting import (
    box_sensitivity,
    dp_pix_epsilon,
    dp_pix_scale,
    epsilon_from_rdp_curve,
    gaussian_rho,
    idpi_report,
    iterations_for_epsilon,
    rdp_curve,
    rdp_to_dp,
)


def test_gaussian_rho_closed_form_and_single_shot_equivalence():
    # T contractive iterations at sigma == one Gaussian mechanism at sigma * sqrt(T)
    assert gaussian_rho(3.0, 0.5, 9) == pytest.approx(gaussian_rho(3.0, 0.5 * 3.0, 1))
    assert gaussian_rho(2.0, 1.0, 1) == pytest.approx(2.0)
    with pytest.raises(ValueError):
        gaussian_rho(1.0, 0.0)
    with pytest.raises(ValueError):
        gaussian_rho(1.0, 1.0, 0)


def test_thesis_sensitivities():
    assert box_sensitivity(20.0, 18 * 512) == pytest.approx(3840.0)
    assert box_sensitivity(20.0, 7 * 512) == pytest.approx(2394.7, abs=0.1)
    assert box_sensitivity([3.0, 4.0]) == pytest.approx(10.0)


@pytest.mark.parametrize(
    "sigma,T,expected",
    [(0.2, 1, 1.8e8), (0.2, 10_000, 1.96e4), (0.4, 100_000, 645), (0.6, 100_000, 328), (0.6, 1000, 2.2e4)],
)
def test_reference_epsilon_table(sigma, T, expected):
    # spec section 7.4 table (Delta = 3840, delta = 1e-8), 2 significant digits
    eps = idpi_report(sigma=sigma, iterations=T, sensitivity=3840.0, delta=1e-8).epsilon
    assert eps == pytest.approx(expected, rel=0.03)


def test_closed_form_matches_numeric_minimisation(test_seed):
    rng = np.random.default_rng(test_seed + 1)
    alphas = np.exp(np.linspace(np.log(1.0001), np.log(1e7), 400_000))
    for _ in range(5):
        rho = float(10 ** rng.uniform(-3, 3))
        delta = float(10 ** rng.uniform(-10, -2))
        eps, a = rdp_to_dp(rho, delta)
        eps_n, a_n = epsilon_from_rdp_curve(alphas, rdp_curve(rho, alphas), delta)
        assert eps_n == pytest.approx(eps, rel=1e-5)
        assert a_n == pytest.approx(a, rel=1e-2)
        # any other order is worse (Mironov's conversion, optimised)
        for other in (a * 0.5 + 0.5, a * 2):
            if other > 1:
                assert other * rho + math.log(1 / delta) / (other - 1) >= eps - 1e-9


def test_epsilon_monotone_in_sigma_and_T():
    e = lambda s, t: idpi_report(sigma=s, iterations=t, sensitivity=100.0, delta=1e-8).epsilon  # noqa: E731
    assert e(0.2, 10) > e(0.4, 10) > e(0.6, 10)
    assert e(0.2, 1) > e(0.2, 10) > e(0.2, 100)


def test_no_pure_dp_and_zero_rho():
    # the RDP->DP conversion diverges as delta -> 0 (no pure epsilon-DP, unlike the thesis's claim)
    assert rdp_to_dp(1.0, 1e-300)[0] > rdp_to_dp(1.0, 1e-8)[0] > 9
    assert rdp_to_dp(0.0, 1e-5) == (0.0, math.inf)
    with pytest.raises(ValueError):
        rdp_to_dp(1.0, 1.0)


def test_iterations_for_epsilon_inverts_the_bound():
    T = iterations_for_epsilon(10.0, 3840.0, 0.2, 1e-8)
    assert 1.5e8 < T < 2.0e8  # spec: ~1.7e8
    assert idpi_report(sigma=0.2, iterations=T, sensitivity=3840.0, delta=1e-8).epsilon <= 10.0
    assert idpi_report(sigma=0.2, iterations=T - 1000, sensitivity=3840.0, delta=1e-8).epsilon > 10.0


def test_dp_pix_scale_and_epsilon():
    assert dp_pix_scale(b=16, m=16, epsilon=0.5) == pytest.approx(255 * 16 / (256 * 0.5))
    assert dp_pix_scale(b=16, m=16, epsilon=0.5, channels=3) == pytest.approx(3 * 31.875)
    assert dp_pix_scale(b=16, m=1, epsilon=1.0, cell_pixels=8) == pytest.approx(255 / 8)
    assert dp_pix_epsilon(b=8, m=4, scale=dp_pix_scale(b=8, m=4, epsilon=0.7)) == pytest.approx(0.7)
    with pytest.raises(ValueError):
        dp_pix_scale(b=0, m=1, epsilon=1.0)
