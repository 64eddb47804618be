"""Float-sound noise: the Gaussian rounded to the inputs' quantization lattice.

Float noise is not sound in principle (Voráček & Hein, "Sound Randomized Smoothing in
Floating-Point Arithmetic", ICLR 2023): ``fl(x + δ)`` is not a translate of a Gaussian,
so the Neyman–Pearson argument does not cover a network that can see rounding
artifacts.  :class:`LatticeGaussian` makes every noisy input an exact point of the
lattice ``q·Zᵈ`` the inputs live on (``q = 1/255`` for 8-bit images):

* an input ``x = q·m`` is read as its integer coordinates ``m``;
* the noise is ``J = round(ε / q)`` with ``ε ~ N(0, σ² I)``, drawn coordinate by
  coordinate by inverse CDF on 60-bit uniform integers against integer thresholds
  ``T_j = round(2⁶⁰ Φ((j + ½) q / σ))`` computed once, exactly, per (σ, q);
* ``m + J`` is formed in integers (exact in float32 below 2²⁴) and the network sees
  ``fl((m + J)·q)``, a fixed function of the lattice point.

Why the usual radius ``σ Φ⁻¹(p̲_A)`` stays valid: for an integer ``m``,
``m + round(ε/q) = round((q·m + ε)/q)``, so the smoothed classifier of the network ``f``
under this noise is the ordinary Gaussian smoothing, in exact arithmetic, of the base
classifier ``H(z) = f(fl(round(z/q)·q))``.  Cohen et al.'s Theorem 1 holds for any
measurable ``H``, so the certificate covers every lattice point within the radius.
The sampler's distribution is not exactly the rounded Gaussian: with ``2J`` thresholds
each off by at most one unit of ``2⁻⁶⁰`` and tails beyond ``±J`` of mass at most
``2Φ(−10)``, one coordinate's total-variation distance from it is at most
``τ = 2J·2⁻⁶⁰ + 2Φ(−10)``.  A maximal coupling then makes a whole certification of
``N`` draws of ``d`` coordinates identical to one with exact noise except with
probability ``ε = N·d·τ``, so the tests run at ``α − ε`` (:meth:`test_alpha`) and the
certificate holds at ``α`` (given uniform random integers from the generator).
"""

from __future__ import annotations

import decimal
import functools
import math
import numbers
from fractions import Fraction

import numpy as np
import torch

NOISES = ("gaussian", "discrete-gaussian")
DEFAULT_LATTICE_STEP = Fraction(1, 255)
UNIFORM_BITS = 60
# Thresholds reach ±TAIL_Z standard deviations: Φ(−10) < 7.7e-24, far below 2⁻⁶⁰.
TAIL_Z = 10
TAIL_MASS_BOUND = 1.6e-23  # ≥ 2Φ(−10)
# Top bits of a uniform integer that index the guide table (2¹⁶ entries); the rest are
# drawn only where a bucket needs them.
GUIDE_BITS = 16
LOW_BITS = UNIFORM_BITS - GUIDE_BITS
# Integers float32 represents exactly: |m + J| must stay below this.
FLOAT32_EXACT = 2**24


def check_sigma(sigma) -> float:
    if (
        isinstance(sigma, bool)
        or not isinstance(sigma, numbers.Real)
        or not np.isfinite(sigma)
        or sigma <= 0
    ):
        raise ValueError(f"sigma must be a finite float > 0; got {sigma!r}.")
    # Gaussian draws in float32 stay below 64 in magnitude (P(|z| > 64) < 1e-800), so
    # σ·z is finite for every σ up to float32's maximum / 64; larger σ would overflow.
    if sigma > float(np.finfo(np.float32).max) / 64:
        raise ValueError(f"sigma={sigma!r} is so large that float32 noise overflows to inf; "
                         "use a sigma on the scale of the inputs.")
    return float(sigma)


def check_noise(noise) -> str:
    if noise not in NOISES:
        raise ValueError(f"noise must be one of {NOISES}; got {noise!r}.")
    return noise


def lattice_step(step) -> Fraction:
    """The lattice step as an exact fraction (``None``: 1/255, 8-bit images).

    A float equal to ``a/b`` with ``b ≤ 2²⁰`` is read as that fraction (so ``1/255``
    means 1/255, not its binary rounding); ``"1/255"`` strings and ints are accepted.

    Parameters
    ----------
    step : float, int, Fraction, str or None
        The step as given.
    """
    if step is None:
        return DEFAULT_LATTICE_STEP
    try:
        if isinstance(step, bool):
            raise TypeError
        if isinstance(step, str):
            value = Fraction(step.strip())
        elif isinstance(step, Fraction):
            value = step
        elif isinstance(step, numbers.Real) and math.isfinite(float(step)):
            value = Fraction(float(step))
            simple = value.limit_denominator(2**20)
            if float(simple) == float(step):
                value = simple
        else:
            raise TypeError
    except (TypeError, ValueError, ZeroDivisionError):
        raise ValueError(
            f"noise_step must be a positive number or fraction such as 1/255 (the spacing "
            f"of the values the inputs take); got {step!r}.") from None
    if value <= 0:
        raise ValueError(f"noise_step must be > 0; got {step!r}.")
    return value


def _pi() -> decimal.Decimal:
    """π by Machin's formula, 16·atan(1/5) − 4·atan(1/239), at the current precision."""
    def atan_inverse(k: int) -> decimal.Decimal:
        x = decimal.Decimal(1) / k
        power, total, n, sign = x, x, 1, 1
        square = x * x
        eps = decimal.Decimal(10) ** (-decimal.getcontext().prec - 2)
        while power > eps:
            power *= square
            n += 2
            sign = -sign
            total += sign * power / n
        return total
    return 16 * atan_inverse(5) - 4 * atan_inverse(239)


def exact_normal_cdf(points: list[Fraction], digits: int = 60) -> list[decimal.Decimal]:
    """Φ at rational ``points`` ≥ 0 to about ``digits`` significant digits.

    ``Φ(x) = ½ + φ(x)·Σₖ x^(2k+1)/(1·3·…·(2k+1))``: every term is positive, so
    the sum loses no precision to cancellation (Marsaglia, J. Stat. Softw. 2004).

    Parameters
    ----------
    points : list of Fraction
        Where Φ is evaluated (each ≥ 0).
    digits : int
        Significant digits of the result.
    """
    values = []
    with decimal.localcontext(decimal.Context(prec=digits + 10)):
        root_two_pi = (2 * _pi()).sqrt()
        for point in points:
            if point < 0:
                raise ValueError("exact_normal_cdf takes points >= 0 (Φ(−x) = 1 − Φ(x)).")
            x = decimal.Decimal(point.numerator) / decimal.Decimal(point.denominator)
            square = x * x
            term = total = x
            k = 0
            while True:
                k += 1
                term = term * square / (2 * k + 1)
                total += term
                if term <= total.scaleb(-(digits + 5)):  # (x = 0: both 0)
                    break
            values.append(decimal.Decimal("0.5") + (-square / 2).exp() / root_two_pi * total)
    return values


@functools.lru_cache(maxsize=16)
def lattice_thresholds(scale: Fraction) -> np.ndarray:
    """``T_j = round(2⁶⁰ Φ((j + ½)/scale))`` for ``j = −J … J − 1``, ``J = ⌈10·scale⌉``.

    ``scale = σ/q`` in lattice units.  Computed at the positive points and mirrored
    (``Φ(−x) = 1 − Φ(x)``); the array is nondecreasing, from about 0 to about 2⁶⁰.

    Parameters
    ----------
    scale : Fraction
        σ / lattice step, exactly.
    """
    half_width = math.ceil(TAIL_Z * scale)
    points = [Fraction(2 * j + 1, 2) / scale for j in range(half_width)]
    full = 1 << UNIFORM_BITS
    with decimal.localcontext(decimal.Context(prec=80)):  # 2⁶⁰·Φ with 60 digits to spare
        upper = [int(full * value + decimal.Decimal("0.5"))
                 for value in exact_normal_cdf(points)]
    lower = [full - t for t in reversed(upper)]
    return np.array(lower + upper, dtype=np.int64)


@functools.lru_cache(maxsize=16)
def guide_table(scale: Fraction) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The 2¹⁶-bucket guide of :func:`lattice_thresholds` ``(scale)``, by the top 16 bits.

    A 60-bit uniform ``U = H·2⁴⁴ + L`` falls in bucket ``H``.  ``base[H]`` counts the
    thresholds ≤ ``H·2⁴⁴`` (the bucket's first integer); ``kind[H]`` is 0 when no threshold
    lies inside the bucket (the count is ``base[H]`` whatever ``L``), 1 when one does, at
    ``H·2⁴⁴ + remainder[H]`` (the count is ``base[H] + [L ≥ remainder[H]]``), and 2 when
    several do (the far tails: a binary search on ``U``).

    Parameters
    ----------
    scale : Fraction
        σ / lattice step, exactly (as for :func:`lattice_thresholds`).
    """
    thresholds = lattice_thresholds(scale)
    starts = np.arange(2**GUIDE_BITS, dtype=np.int64) << LOW_BITS
    base = np.searchsorted(thresholds, starts, side="right").astype(np.int64)
    inside = np.searchsorted(thresholds, starts + (1 << LOW_BITS) - 1, side="right") - base
    kind = np.minimum(inside, 2).astype(np.int8)
    remainder = np.zeros(2**GUIDE_BITS, dtype=np.int64)
    one = inside == 1
    remainder[one] = thresholds[base[one]] - starts[one]
    return base, kind, remainder


class LatticeGaussian:
    """The Gaussian ``N(0, σ² I)`` rounded to the lattice ``step·Zᵈ``, sampled exactly.

    Parameters
    ----------
    sigma : float > 0
        Standard deviation σ of the Gaussian before rounding.
    step : Fraction
        The lattice step ``q`` (:func:`lattice_step`).
    device : torch.device
        Where the noise is drawn.
    """

    def __init__(self, sigma: float, step: Fraction, device=None):
        self.sigma = float(sigma)
        self.step = step
        self.scale = Fraction(self.sigma) / step
        self.device = torch.device(device or "cpu")
        thresholds = lattice_thresholds(self.scale)
        self.half_width = len(thresholds) // 2
        self.sorted_thresholds = torch.as_tensor(thresholds, device=self.device)
        self.base, self.kind, self.remainder = (torch.as_tensor(table, device=self.device)
                                                for table in guide_table(self.scale))
        self._offset_tables: dict[torch.dtype, torch.Tensor] = {}

    def coordinate_distance(self) -> float:
        """τ: total-variation distance of one sampled coordinate from the exact rounded
        Gaussian (module docstring)."""
        return 2 * self.half_width * 2.0**-UNIFORM_BITS + TAIL_MASS_BOUND

    def test_alpha(self, alpha: float, draws: int, coordinates: int) -> float:
        """The level the tests run at so that the certificate holds at ``alpha``:
        ``α − draws·coordinates·τ`` for at most ``draws`` noisy copies of inputs with
        ``coordinates`` entries."""
        slack = draws * coordinates * self.coordinate_distance()
        if slack >= alpha / 2:
            raise ValueError(
                f"{draws} draws of {coordinates} coordinates exceed what the discrete "
                f"Gaussian's 60-bit sampler supports at alpha={alpha} (its deviation from "
                f"the exact distribution would take {slack:.2g} of alpha); use fewer draws "
                "or a larger alpha.")
        return alpha - slack

    def sample(self, shape, generator: torch.Generator, dtype: torch.dtype) -> torch.Tensor:
        """Integer lattice offsets ``J`` of ``shape`` (as ``dtype``, exact).

        Inverse CDF on ``U = H·2⁴⁴ + L`` (:func:`guide_table`): the 16-bit ``H`` of every
        coordinate is drawn, then the 44-bit ``L`` only where the bucket holds a threshold
        (a few percent of draws), then ``U`` itself only in the far tails.  ``H`` and
        ``L`` are independent and uniform, so ``U`` is uniform on ``[0, 2⁶⁰)`` and every
        offset is the exact inverse-CDF draw of its ``U``.
        """
        if dtype not in self._offset_tables:
            self._offset_tables[dtype] = (self.base - self.half_width).to(dtype)
        size = math.prod(shape)
        high = torch.randint(0, 1 << GUIDE_BITS, (size,), generator=generator,
                             device=self.device, dtype=torch.int32)
        offsets = self._offset_tables[dtype].index_select(0, high)
        inside = self.kind.index_select(0, high).nonzero().squeeze(1)
        if len(inside):
            buckets = high.index_select(0, inside).long()
            low = torch.randint(0, 1 << LOW_BITS, (len(inside),),
                                generator=generator, device=self.device, dtype=torch.int64)
            step = (low >= self.remainder.index_select(0, buckets)).to(dtype)
            tails = (self.kind.index_select(0, buckets) == 2).nonzero().squeeze(1)
            if len(tails):
                tail_buckets = buckets.index_select(0, tails)
                uniform = (tail_buckets << LOW_BITS) | low.index_select(0, tails)
                counts = torch.searchsorted(self.sorted_thresholds, uniform, right=True)
                step.index_copy_(0, tails,
                                 (counts - self.base.index_select(0, tail_buckets)).to(dtype))
            offsets.index_add_(0, inside, step)
        return offsets.view(tuple(shape))

    def lattice_dtype(self, dtype: torch.dtype) -> torch.dtype:
        """Where lattice coordinates are held: the network's dtype when it represents
        the integers exactly (float32, float64), else float32."""
        return dtype if dtype in (torch.float32, torch.float64) else torch.float32

    def to_lattice(self, chunk: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Integer coordinates ``m = x/q`` of inputs on the lattice; refused elsewhere."""
        exact = chunk.to(torch.float64)
        scaled = exact * self.step.denominator / self.step.numerator
        coordinates = torch.round(scaled)
        # The float rounding of a lattice point is within a few units of its last place.
        tolerance = torch.clamp(coordinates.abs() * 2.0**-20, min=1e-4)
        off = (scaled - coordinates).abs() > tolerance
        if bool(off.any()):
            where = tuple(int(i) for i in torch.nonzero(off)[0].tolist())
            raise ValueError(
                f"noise='discrete-gaussian' needs inputs on the lattice of step {self.step} "
                f"(multiples of it), but X holds {float(chunk[where]):.9g} at "
                f"{where[1:]} of an input. Pass noise_step=the spacing of your values "
                "(e.g. 1/16 for counts 0…16 divided by 16), or quantize X first.")
        reach = coordinates.abs().max() + self.half_width if coordinates.numel() else 0
        if float(reach) * self.step.numerator >= FLOAT32_EXACT:
            raise ValueError(
                f"Inputs reach {float(coordinates.abs().max()):.6g} lattice steps of "
                f"{self.step}; with the noise's ±{self.half_width} steps that is too many "
                "to form exactly in float32. Use a coarser noise_step or smaller inputs.")
        return coordinates.to(self.lattice_dtype(dtype))

    def from_lattice(self, coordinates: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """The network's input for lattice points: ``fl(m·a / b)`` for ``q = a/b``, one
        correctly rounded division (for ``q = 1/255`` exactly what ``ToTensor`` gives an
        8-bit image), then the cast to the network's dtype."""
        if self.step.numerator != 1:
            coordinates = coordinates.mul_(self.step.numerator)
        return coordinates.div_(self.step.denominator).to(dtype)


def make_noise(noise: str, sigma: float, noise_step, device) -> LatticeGaussian | None:
    """``None`` for float Gaussian noise, else the :class:`LatticeGaussian` sampler.

    Parameters
    ----------
    noise : {"gaussian", "discrete-gaussian"}
        The noise.
    sigma : float
        Its level.
    noise_step : float, Fraction, str or None
        The lattice step.
    device : torch.device
        Where the draws are made.
    """
    step = check_noise_options(noise, noise_step)
    if step is None:
        return None
    return LatticeGaussian(check_sigma(sigma), step, device)


def recorded_step(noise, noise_step) -> str | None:
    """The lattice step as certificates and sidecars record it (``"1/255"``), or None
    for float noise.

    Parameters
    ----------
    noise : {"gaussian", "discrete-gaussian"}
        The noise.
    noise_step : float, Fraction, str or None
        The step as given.
    """
    step = check_noise_options(noise, noise_step)
    return None if step is None else str(step)


def check_noise_options(noise, noise_step) -> Fraction | None:
    """The lattice step of valid ``noise`` and ``noise_step`` (None for float noise).

    Parameters
    ----------
    noise : {"gaussian", "discrete-gaussian"}
        The noise.
    noise_step : float, Fraction, str or None
        The lattice step (only for the discrete Gaussian).
    """
    check_noise(noise)
    if noise == "gaussian":
        if noise_step is not None:
            raise ValueError("noise_step applies to noise='discrete-gaussian' only; "
                             "leave it None for Gaussian noise.")
        return None
    return lattice_step(noise_step)


def noise_test_alpha(alpha: float, draws: int, X, *, sigma: float, noise: str,
                     noise_step=None) -> float:
    """The level at which tests on at most ``draws`` noisy copies of each input of ``X``
    run so that their guarantee holds at ``alpha`` (:meth:`LatticeGaussian.test_alpha`;
    ``alpha`` itself for float Gaussian noise).

    Parameters
    ----------
    alpha : float
        The guarantee asked for.
    draws : int
        The most noisy copies a test uses per input.
    X : array, tensor, Dataset or DataLoader
        The inputs (their size sets the sampler's deviation).
    sigma : float
        The noise level.
    noise, noise_step
        The noise.
    """
    lattice = make_noise(noise, sigma, noise_step, "cpu")
    if lattice is None:
        return alpha
    return lattice.test_alpha(alpha, draws, coordinates_per_input(X))


def coordinates_per_input(X) -> int:
    """The number of entries of one input of ``X`` (array, tensor, Dataset, DataLoader).

    Parameters
    ----------
    X : array, tensor, Dataset or DataLoader
        The inputs.
    """
    if isinstance(X, torch.utils.data.DataLoader):
        X = X.dataset
    if isinstance(X, (np.ndarray, torch.Tensor)) or hasattr(X, "shape"):
        return int(np.prod(X.shape[1:]))
    first = X[0]
    first = first[0] if isinstance(first, (tuple, list)) else first
    return int(np.prod(np.shape(first)))
