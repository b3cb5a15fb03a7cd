"""Pure, vectorised mathematics of the CLV models: log-likelihoods with analytic gradients,
and predictions. No state, no pandas, no validation (see :mod:`crmkit.models.clv`).

Notation (lifetimes convention): ``x`` number of repeat purchases (``frequency``), ``t_x`` age
at the last purchase (``recency``), ``T`` age at the analysis date; all in one time unit.

Models and sources
------------------
BG/NBD
    Fader, Hardie and Lee (2005a), "Counting your customers the easy way: an alternative to the
    Pareto/NBD model", Marketing Science 24(2), 275-284 (likelihood eq. 6, E[X(t)] eq. 9,
    conditional expectation eq. 10); P(alive): Fader, Hardie and Lee (2008), "Computing
    P(alive) using the BG/NBD model", http://brucehardie.com/notes/021/.
MBG/NBD
    Batislam, Denizel and Filiztekin (2007), "Empirical validation and comparison of models for
    customer base analysis", IJRM 24(3), 201-209, with the correction of Wagner and Hoppe
    (2008), IJRM 25(3), 225-226; the convention of ``lifetimes.ModifiedBetaGeoFitter``: a
    customer may drop out right after the first purchase as well as after each repeat one.
Pareto/NBD
    Schmittlein, Morrison and Colombo (1987), "Counting your customers: who are they and what
    will they do next?", Management Science 33(1), 1-24; likelihood, P(alive) and
    expectations as in Fader and Hardie (2005), "A note on deriving the Pareto/NBD model and
    related expressions", http://brucehardie.com/notes/009/ (eqs. 18-22, 24, 27, 41).
Gamma-Gamma
    Colombo and Jiang (1999), "A stochastic RFM model", J. Interactive Marketing 13(3), 2-12;
    Fader and Hardie (2013), "The Gamma-Gamma model of monetary value",
    http://brucehardie.com/notes/025/ (eqs. 1a and 5).

All gradients are exact derivatives of the log-likelihood (no finite differences). The
objectives return the *mean* negative log-likelihood per customer plus the L2 penalty of
``lifetimes``: ``penalizer * sum(theta_scaled**2)``, where time-scale parameters (``alpha``,
``beta``) are expressed in units of the largest ``T`` and the Gamma-Gamma ``gamma`` in units of
the mean spend, so that the penalty does not depend on the time or currency unit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.special import betaln, digamma, expit, gammaln, hyp2f1

__all__ = [
    "PurchaseData",
    "SpendData",
    "purchase_data",
    "spend_data",
    "group_rows",
    "bg_loglik",
    "bg_objective",
    "pareto_loglik",
    "pareto_objective",
    "gg_loglik",
    "gg_objective",
    "log_power_integral",
    "bg_p_alive",
    "bg_expected_given_alive",
    "bg_conditional_expected",
    "bg_expected_new",
    "bg_prob_purchase_in_window",
    "pareto_p_alive",
    "pareto_expected_given_alive",
    "pareto_conditional_expected",
    "pareto_expected_new",
    "pareto_prob_purchase_in_window",
    "median_time_to_next_purchase",
    "gg_conditional_expected_average_profit",
]


# --------------------------------------------------------------------------------------------
# Data containers
# --------------------------------------------------------------------------------------------


def group_rows(cols: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Group equal rows of several 1-D columns (sort based, no hashing of floats).

    Returns
    -------
    order, starts, group
        ``order`` sorts the rows lexicographically; ``starts`` are the positions in sorted
        order where a new distinct row begins; ``group[i]`` is the distinct-row number of the
        ``i``-th *sorted* row.
    """
    n = len(cols[0])
    order = np.lexsort(cols[::-1])
    change = np.zeros(n, dtype=bool)
    if n:
        change[0] = True
    for c in cols:
        cs = c[order]
        change[1:] |= cs[1:] != cs[:-1]
    starts = np.flatnonzero(change)
    group = np.cumsum(change) - 1
    return order, starts, group


@dataclass(frozen=True)
class PurchaseData:
    """Distinct ``(x, t_x, T)`` patterns with their total weights, ready for a likelihood.

    Attributes
    ----------
    x, t_x, T, w
        One entry per pattern (``w`` = number of customers, or summed weights).
    xu, x_inv, wx
        Distinct frequencies, the index of each pattern's frequency in ``xu``, and the total
        weight per distinct frequency (frequency-only terms are summed once).
    Tu, T_inv, w_T, wx_T
        Distinct ages ``T``, index of each pattern's ``T`` in ``Tu``, and per distinct ``T``
        the total weight and the total of ``w * x`` (``T``-only terms are summed once).
    Ru, R_inv
        Distinct recencies and the index of each pattern's recency in ``Ru``.
    time_scale
        ``1 / max(T)``: the unit of the penalty on time-scale parameters.
    """

    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    w: np.ndarray
    xu: np.ndarray
    x_inv: np.ndarray
    wx: np.ndarray
    Tu: np.ndarray
    T_inv: np.ndarray
    w_T: np.ndarray
    wx_T: np.ndarray
    Ru: np.ndarray
    R_inv: np.ndarray
    time_scale: float

    @property
    def total_weight(self) -> float:
        """Sum of the weights (the number of customers when unweighted)."""
        return float(self.w.sum())


def _factorize(v: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Codes and distinct values (hash based; ``+ 0.0`` merges ``-0.0`` into ``0.0``)."""
    codes, uniques = pd.factorize(v + 0.0, sort=False)
    return codes.astype(np.intp, copy=False), np.asarray(uniques, dtype=np.float64)


def _distinct_rows(
    *cols: np.ndarray, max_share: float = 0.25
) -> tuple[np.ndarray, np.ndarray] | None:
    """Index of one row per distinct combination of ``cols`` and each row's combination
    number, or ``None`` when there is little to gain (fewer than 20,000 rows, or more than
    ``max_share`` of them distinct)."""
    n = cols[0].size
    if n < 20_000:
        return None
    key = np.zeros(n, dtype=np.int64)
    size = 1
    for c in cols:
        codes, uniq = _factorize(c)
        size *= max(len(uniq), 1)
        if size >= 2**62:
            return None
        key = key * len(uniq) + codes
    inverse, uniq_keys = pd.factorize(key, sort=False)
    if len(uniq_keys) > max_share * n:
        return None
    first = np.zeros(len(uniq_keys), dtype=np.intp)
    first[inverse[::-1]] = np.arange(n - 1, -1, -1)
    return first, inverse


def purchase_data(
    x: np.ndarray,
    t_x: np.ndarray,
    T: np.ndarray,
    w: np.ndarray | None = None,
    *,
    aggregate: bool = True,
) -> PurchaseData:
    """Build :class:`PurchaseData`, collapsing equal ``(x, t_x, T)`` rows into weights.

    Each column is factorised (hashing), the three codes are combined into one integer key
    and the key is factorised again, which groups a million customers in ~0.1 s.
    """
    x = np.asarray(x, dtype=np.float64)
    t_x = np.asarray(t_x, dtype=np.float64)
    T = np.asarray(T, dtype=np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64)
    keep = w > 0
    if not keep.all():
        x, t_x, T, w = x[keep], t_x[keep], T[keep], w[keep]
    cx, xu = _factorize(x)
    cT, Tu = _factorize(T)
    cR, Ru = _factorize(t_x)
    nT, nR = max(len(Tu), 1), max(len(Ru), 1)
    if aggregate and len(x):
        key = (cx.astype(np.int64) * nT + cT) * nR + cR  # < n**3 <= 2**63 for n < 2e6
        if len(xu) * nT * nR >= 2**62:  # pragma: no cover - astronomically many customers
            order, starts, group = group_rows([x, t_x, T])
            key = np.empty(len(x), dtype=np.int64)
            key[order] = group
        g, ukey = pd.factorize(key, sort=False)
        ukey = np.asarray(ukey, dtype=np.int64)
        w = np.bincount(g, weights=w, minlength=len(ukey))
        cx, cT, cR = ukey // (nT * nR), (ukey // nR) % nT, ukey % nR
        x, T, t_x = xu[cx], Tu[cT], Ru[cR]
    tmax = float(T.max()) if len(T) else 1.0
    return PurchaseData(
        x=x,
        t_x=t_x,
        T=T,
        w=w,
        xu=xu,
        x_inv=cx,
        wx=np.bincount(cx, weights=w, minlength=len(xu)),
        Tu=Tu,
        T_inv=cT,
        w_T=np.bincount(cT, weights=w, minlength=len(Tu)),
        wx_T=np.bincount(cT, weights=w * x, minlength=len(Tu)),
        Ru=Ru,
        R_inv=cR,
        time_scale=1.0 / tmax if tmax > 0 else 1.0,
    )


@dataclass(frozen=True)
class SpendData:
    """Distinct ``(x, m)`` pairs of repeat buyers with their weights (Gamma-Gamma).

    Attributes
    ----------
    x, m, w
        Repeat-purchase count, mean spend per repeat purchase, weight.
    money_scale
        ``1 / weighted mean of m``: the unit of the penalty on ``gamma``.
    """

    x: np.ndarray
    m: np.ndarray
    w: np.ndarray
    money_scale: float

    @property
    def total_weight(self) -> float:
        """Sum of the weights."""
        return float(self.w.sum())


def spend_data(
    x: np.ndarray, m: np.ndarray, w: np.ndarray | None = None, *, aggregate: bool = True
) -> SpendData:
    """Build :class:`SpendData` (rows must all have ``x > 0`` and ``m > 0``)."""
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    w = np.ones(len(x)) if w is None else np.asarray(w, dtype=np.float64)
    keep = w > 0
    if not keep.all():
        x, m, w = x[keep], m[keep], w[keep]
    if aggregate and len(x):
        order, starts, group = group_rows([x, m])
        first = order[starts]
        wsum = np.bincount(group, weights=w[order], minlength=len(starts))
        x, m, w = x[first], m[first], wsum
    mean = float(np.sum(w * m) / np.sum(w)) if len(m) else 1.0
    return SpendData(x, m, w, 1.0 / mean if mean > 0 else 1.0)


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """Dot product of two pattern-length vectors without BLAS: OpenBLAS's threaded ``ddot``
    spins its threads and becomes 10x slower on a busy machine (measured on 2 cores)."""
    return float(np.einsum("i,i->", a, b))


def _penalty(theta: np.ndarray, scale: np.ndarray, penalizer: float) -> tuple[float, np.ndarray]:
    """``penalizer * sum((theta * scale)**2)`` and its gradient with respect to ``theta``."""
    if penalizer == 0.0:
        return 0.0, np.zeros_like(theta)
    ts = theta * scale
    return float(penalizer * np.sum(ts**2)), 2.0 * penalizer * ts * scale


# --------------------------------------------------------------------------------------------
# BG/NBD and MBG/NBD likelihood
# --------------------------------------------------------------------------------------------


def _bg_rows(params, x, t_x, T, modified: bool):
    """Per-row parts of the (M)BG/NBD log-likelihood that depend on ``t_x`` and ``T``.

    Returns ``L = logaddexp(A3, A4)`` with FHL (2005a) eq. 6:
    ``A3 = -(r+x) ln(alpha+T)``, ``A4 = ln a - ln(b+x-1) - (r+x) ln(alpha+t_x)`` (only when
    ``x > 0``); for the MBG/NBD ``A4 = ln a - ln(b+x) - (r+x) ln(alpha+t_x)`` for every ``x``.
    Also the softmax weight ``p4 = exp(A4 - L)`` and the pieces needed for the gradient.
    """
    r, alpha, a, b = params
    rx = r + x
    l_T = np.log(alpha + T)
    l_R = np.log(alpha + t_x)
    A3 = -rx * l_T
    if modified:
        bq = b + x
        A4 = np.log(a) - np.log(bq) - rx * l_R
    else:
        has = x > 0
        bq = np.where(has, b + x - 1.0, 1.0)
        A4 = np.where(has, np.log(a) - np.log(bq) - rx * l_R, -np.inf)
    L = np.logaddexp(A3, A4)
    p4 = expit(A4 - A3)
    return L, p4, l_T, l_R, bq


def bg_loglik(params, x, t_x, T, *, modified: bool = False) -> np.ndarray:
    """Per-customer log-likelihood of the BG/NBD (FHL 2005a, eq. 6) or MBG/NBD.

    ``LL = ln G(r+x) - ln G(r) + r ln alpha + ln B(a, b+x+s) - ln B(a, b) + L`` with ``s = 0``
    (BG/NBD) or ``1`` (MBG/NBD, Batislam et al. 2007) and ``L`` from :func:`_bg_rows`.
    """
    r, alpha, a, b = (float(v) for v in params)
    x = np.asarray(x, dtype=np.float64)
    shift = 1.0 if modified else 0.0
    L = _bg_rows((r, alpha, a, b), x, np.asarray(t_x, float), np.asarray(T, float), modified)[0]
    return (
        gammaln(r + x)
        - gammaln(r)
        + r * np.log(alpha)
        + betaln(a, b + x + shift)
        - betaln(a, b)
        + L
    )


def bg_objective(
    log_params: np.ndarray,
    d: PurchaseData,
    *,
    modified: bool = False,
    penalizer: float = 0.0,
    hessian: bool = False,
):
    """Mean negative log-likelihood of the (M)BG/NBD, its exact gradient and (optionally) its
    exact Hessian with respect to the log-parameters.

    Per customer ``LL = [x-only terms] + A3 + softplus(z)`` with ``A3 = -(r+x) ln(alpha+T)``
    and ``z = A4 - A3 = ln a - ln(b+x-1+s) + (r+x) (ln(alpha+T) - ln(alpha+t_x))`` (``s = 0``
    BG/NBD, ``1`` MBG/NBD; ``z = -inf`` for BG/NBD customers without repeat purchases). With
    ``p4 = sigmoid(z)`` the gradient in the natural parameters is::

        d/dr     = psi(r+x) - psi(r) + ln alpha - ln(alpha+T) + p4 z_r
        d/dalpha = r/alpha - (r+x)/(alpha+T) + p4 z_alpha
        d/da     = psi(a+b) - psi(a+b+x+s) + p4 z_a
        d/db     = psi(b+x+s) - psi(b) + psi(a+b) - psi(a+b+x+s) + p4 z_b

    with ``z_r = ln(alpha+T) - ln(alpha+t_x)``, ``z_alpha = (r+x) (1/(alpha+T) -
    1/(alpha+t_x))``, ``z_a = 1/a``, ``z_b = -1/(b+x-1+s)``; second derivatives add
    ``p4 (1-p4) z_i z_j + p4 z_ij`` to those of the other terms (trigamma functions,
    ``1/alpha``, ``-r/alpha**2``, ``-1/(alpha+T)``, ``(r+x)/(alpha+T)**2``). Terms depending
    on ``x`` alone or ``T`` alone are summed once per distinct value, so only ``z``, its
    softplus and sigmoid and a few dot products touch all patterns. Log-parameter
    derivatives: ``g_u = theta g``, ``H_u = D H D + diag(theta g)``, ``D = diag(theta)``.
    """
    theta = np.exp(np.asarray(log_params, dtype=np.float64))
    r, alpha, a, b = theta
    shift = 1.0 if modified else 0.0
    W = d.total_weight
    xu, wx = d.xu, d.wx
    # Terms depending on x only: once per distinct frequency.
    ll = float(
        wx @ (gammaln(r + xu) - gammaln(r) + betaln(a, b + xu + shift) - betaln(a, b))
        + W * r * np.log(alpha)
    )
    psi_ab = digamma(a + b)
    psi_abx = digamma(a + b + xu + shift)
    g = np.array(
        [
            wx @ (digamma(r + xu) - digamma(r)) + W * np.log(alpha),
            W * r / alpha,
            wx @ (psi_ab - psi_abx),
            wx @ (digamma(b + xu + shift) - digamma(b) + psi_ab - psi_abx),
        ]
    )
    # A3 = -(r+x) ln(alpha+T): once per distinct T.
    l_Tu = np.log(alpha + d.Tu)
    inv_Tu = 1.0 / (alpha + d.Tu)
    rw_T = r * d.w_T + d.wx_T  # sum of w (r+x) per distinct T
    ll -= float(rw_T @ l_Tu)
    g[0] -= d.w_T @ l_Tu
    g[1] -= rw_T @ inv_Tu
    # softplus(z) and p4 = sigmoid(z) on the patterns.
    bq_u = xu + (b + shift - 1.0)
    has = (bq_u > 0) if modified else (xu > 0)
    with np.errstate(divide="ignore"):
        c_u = np.where(has, np.log(a) - np.log(np.where(has, bq_u, 1.0)), -np.inf)
    inv_bq_u = np.where(has, 1.0 / np.where(has, bq_u, 1.0), 0.0)
    dl = l_Tu[d.T_inv] - np.log(alpha + d.Ru)[d.R_inv]  # z_r = ln(alpha+T) - ln(alpha+t_x) >= 0
    rx = d.x + r
    z = c_u[d.x_inv] + rx * dl
    e = np.exp(-np.abs(z))
    q = 1.0 / (1.0 + e)
    pos = z > 0
    p4 = np.where(pos, q, e * q)
    w = d.w
    ll += _dot(w, np.maximum(z, 0.0) + np.log1p(e))
    wp4 = w * p4
    delta = inv_Tu[d.T_inv] - (1.0 / (alpha + d.Ru))[d.R_inv]
    z_alpha = rx * delta
    inv_bq = inv_bq_u[d.x_inv]
    sum_wp4 = float(wp4.sum())
    g[0] += _dot(wp4, dl)
    g[1] += _dot(wp4, z_alpha)
    g[2] += sum_wp4 / a
    g[3] -= _dot(wp4, inv_bq)
    scale = np.array([1.0, d.time_scale, 1.0, 1.0])
    pen, pen_g = _penalty(theta, scale, penalizer)
    f = -ll / W + pen
    g_nat = -g / W + pen_g
    grad = theta * g_nat
    if not hessian:
        return f, grad
    from scipy.special import polygamma

    tri = lambda v: polygamma(1, v)  # noqa: E731
    H = np.zeros((4, 4))
    tri_abx = tri(a + b + xu + shift)
    tri_ab = tri(a + b)
    H[0, 0] = wx @ (tri(r + xu) - tri(r))
    H[0, 1] = W / alpha - d.w_T @ inv_Tu
    H[1, 1] = -W * r / alpha**2 + rw_T @ inv_Tu**2
    H[2, 2] = wx @ (tri_ab - tri_abx)
    H[2, 3] = wx @ (tri_ab - tri_abx)
    H[3, 3] = wx @ (tri(b + xu + shift) - tri_abx - tri(b) + tri_ab)
    v = wp4 * (1.0 - p4)  # w p4 (1 - p4)
    v_dl = v * dl
    v_za = v * z_alpha
    v_ib = v * inv_bq
    H[0, 0] += _dot(v_dl, dl)
    H[0, 1] += _dot(v_dl, z_alpha) + _dot(wp4, delta)
    H[0, 2] += v_dl.sum() / a
    H[0, 3] -= _dot(v_dl, inv_bq)
    H[1, 1] += _dot(v_za, z_alpha) + _dot(
        wp4 * rx, (1.0 / (alpha + d.Ru))[d.R_inv] ** 2 - inv_Tu[d.T_inv] ** 2
    )
    H[1, 2] += v_za.sum() / a
    H[1, 3] -= _dot(v_za, inv_bq)
    H[2, 2] += (v.sum() - sum_wp4) / a**2
    H[2, 3] -= v_ib.sum() / a
    H[3, 3] += _dot(v_ib, inv_bq) + _dot(wp4, inv_bq**2)
    H = np.triu(H) + np.triu(H, 1).T
    H_nat = -H / W + np.diag(2.0 * penalizer * scale**2)
    H_u = np.outer(theta, theta) * H_nat + np.diag(grad)
    return f, grad, H_u


# --------------------------------------------------------------------------------------------
# The integral of a product of two power laws (Pareto/NBD)
# --------------------------------------------------------------------------------------------

# Double-exponential (tanh-sinh) rules on (0, 1): u = expit(pi sinh t), t = k h, |t| <= 3.6.
# Measured against adaptive quadrature (tests): a step of 1/10 (73 nodes) is accurate to
# ~1e-12 relative while the leftover factor varies by less than e^3 over the interval, a step
# of 1/20 (145 nodes) up to e^100, 1/40 (289 nodes) beyond.
_DE_COARSE_MAX_R = 3.0
_DE_MEDIUM_MAX_R = 100.0


def _de_rule(step: float, tmax: float = 3.6) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.arange(-round(tmax / step), round(tmax / step) + 1) * step
    s = np.pi * np.sinh(t)
    u, one_minus_u = expit(s), expit(-s)
    logw = np.log(step * np.pi * np.cosh(t)) + np.log(u) + np.log(one_minus_u)
    return u, one_minus_u, logw


_DE_COARSE = _de_rule(1.0 / 10.0)
_DE_MEDIUM = _de_rule(1.0 / 20.0)
_DE_FINE = _de_rule(1.0 / 40.0)
_CHUNK_ELEMENTS = 1 << 19


def log_power_integral(A, B, m, n, lo, hi, *, moments: bool = False):
    r"""``ln \int_lo^hi (A+tau)^(-m) (B+tau)^(-n) dtau`` for ``A, B > 0``, ``m + n > 1``.

    This integral is the Pareto/NBD term of Fader and Hardie (2005, eqs. 19-22; there written
    with Gauss hypergeometric functions, ``A0``): the mixture over the death time ``tau``. It
    is evaluated without ``2F1``. Take as *pivot* ``P = pivot+tau`` the factor with the larger
    exponent ``e_p`` and write the other one as ``P (1 + k y)`` with
    ``y = (pivot+lo)/(pivot+tau)``, ``k = (other - pivot)/(pivot + lo) > -1``; with
    ``v = y**(m+n-1)``

    .. math::
        I = \frac{(\mathrm{pivot}+lo)^{1-m-n}}{m+n-1}
            \int_{v_0}^{1} \left(1 + k\,v^{1/(m+n-1)}\right)^{-e_o} dv,
        \qquad v_0 = \left(\frac{\mathrm{pivot}+lo}{\mathrm{pivot}+hi}\right)^{m+n-1}.

    The substitution absorbs the pivot's power exactly; the integrand left is bounded and
    monotone and varies by the factor ``exp(min(m, n) * L)``,
    ``L = |ln((A+hi)/(A+lo)) - ln((B+hi)/(B+lo))|``, whichever factor is the pivot - choosing
    the larger exponent as pivot keeps it smallest. A fixed tanh-sinh rule (exponentially
    convergent despite the ``v**(1/(m+n-1))`` end-point behaviour) then gives ~1e-12 relative
    accuracy with 73 nodes (145 or 289 when the leftover varies by more than ``e^3`` or
    ``e^100``). Everything is in logs, so ``(pivot+lo)**(1-m-n)`` never under- or overflows.

    With ``moments=True`` also returns the integrand-weighted means of ``ln(A+tau)``,
    ``1/(A+tau)``, ``ln(B+tau)`` and ``1/(B+tau)``, i.e. the exact derivatives
    ``-d lnI/dm``, ``-d lnI/dA / m``, ``-d lnI/dn``, ``-d lnI/dB / n`` (differentiation under the
    integral sign; the limits do not depend on the parameters). Rows with ``hi <= lo`` give
    ``-inf`` and zero moments.
    """
    A, B, m, n, lo, hi = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (A, B, m, n, lo, hi))
    )
    shape = A.shape
    A, B, m, n, lo, hi = (v.ravel() for v in (A, B, m, n, lo, hi))
    out = np.empty(A.size)
    mom = np.zeros((4, A.size)) if moments else None
    with np.errstate(divide="ignore", invalid="ignore"):
        spread = np.abs(np.log1p((hi - lo) / (A + lo)) - np.log1p((hi - lo) / (B + lo)))
    R = np.minimum(m, n) * np.nan_to_num(spread)
    tiers = (
        (R < _DE_COARSE_MAX_R, _DE_COARSE),
        ((R >= _DE_COARSE_MAX_R) & (R < _DE_MEDIUM_MAX_R), _DE_MEDIUM),
        (R >= _DE_MEDIUM_MAX_R, _DE_FINE),
    )
    for rows, rule in tiers:
        idx = np.flatnonzero(rows)
        chunk = max(64, _CHUNK_ELEMENTS // len(rule[0]))
        for s in range(0, idx.size, chunk):
            sl = idx[s : s + chunk]
            res = _log_power_integral_chunk(
                A[sl], B[sl], m[sl], n[sl], lo[sl], hi[sl], moments, rule
            )
            out[sl] = res[0]
            if moments:
                mom[:, sl] = res[1]
    if moments:
        return out.reshape(shape), tuple(mm.reshape(shape) for mm in mom)
    return out.reshape(shape)


def _log_power_integral_chunk(A, B, m, n, lo, hi, moments, rule):
    de_u, de_1mu, de_logw = rule
    piv_A = m >= n  # pivot: the factor with the larger exponent
    p_off = np.where(piv_A, A, B)
    o_off = np.where(piv_A, B, A)
    e_o = np.where(piv_A, n, m)[:, None]
    M1 = m + n - 1.0
    q = (1.0 / M1)[:, None]
    p_lo = p_off + lo
    ln_plo = np.log(p_lo)
    k = ((o_off - p_off) / p_lo)[:, None]
    one_p_k = ((o_off + lo) / p_lo)[:, None]
    ln_v0 = -M1 * np.log1p((hi - lo) / p_lo)
    omv0 = -np.expm1(ln_v0)
    valid = omv0 > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        v = np.exp(ln_v0)[:, None] + omv0[:, None] * de_u  # in (v0, 1)
        # ln v with 1 - v to full relative precision near v = 1.
        ln_v = np.where(v < 0.5, np.log(v), np.log1p(-(omv0[:, None] * de_1mu)))
        qlnv = q * ln_v
        y = np.exp(qlnv)
        # 1 + k y; for k < 0 as (1 + k) - k (1 - y), exact when y -> 1 and k -> -1.
        one_p_ky = np.where(k > 0, 1.0 + k * y, one_p_k + k * np.expm1(qlnv))
        ln_1pky = np.log(one_p_ky)
        lw = de_logw - e_o * ln_1pky
        mx = np.max(lw, axis=1, keepdims=True)
        ew = np.exp(lw - mx)
        tot = np.sum(ew, axis=1)
        lnI = -M1 * ln_plo - np.log(M1) + np.log(omv0) + mx[:, 0] + np.log(tot)
    lnI = np.where(valid, lnI, -np.inf)
    if not moments:
        return (lnI,)
    # Integrand-weighted means; pivot P = (pivot+lo)/y, other O = P (1 + k y):
    # ln P = ln(pivot+lo) - q ln v, 1/P = y/(pivot+lo), ln O = ln P + ln(1+ky), 1/O = (1/P)/(1+ky).
    with np.errstate(invalid="ignore", divide="ignore"):

        def mean(z: np.ndarray) -> np.ndarray:
            return np.einsum("ij,ij->i", ew, z) / tot

        e_lnP = ln_plo - q[:, 0] * mean(ln_v)
        e_lnO = e_lnP + mean(ln_1pky)
        e_invP = mean(y) / p_lo
        e_invO = mean(y / one_p_ky) / p_lo
    lnA = np.where(piv_A, e_lnP, e_lnO)
    invA = np.where(piv_A, e_invP, e_invO)
    lnB = np.where(piv_A, e_lnO, e_lnP)
    invB = np.where(piv_A, e_invO, e_invP)
    mom = np.where(valid, np.stack([lnA, invA, lnB, invB]), 0.0)
    return lnI, mom


# --------------------------------------------------------------------------------------------
# Pareto/NBD likelihood
# --------------------------------------------------------------------------------------------


def _pareto_rows(params, x, t_x, T, moments: bool):
    """``E1 = -(r+x) ln(alpha+T) - s ln(beta+T)`` and ``E2 = ln s + ln I`` with
    ``I = int_{t_x}^T (alpha+tau)^-(r+x) (beta+tau)^-(s+1) dtau`` (Fader-Hardie 2005, eq. 18:
    ``s/(r+s+x) A0 = s I``), so ``LL = ln G(r+x) - ln G(r) + r ln alpha + s ln beta +
    logaddexp(E1, E2)``."""
    r, alpha, s, beta = params
    rx = r + x
    l_aT = np.log(alpha + T)
    l_bT = np.log(beta + T)
    E1 = -rx * l_aT - s * l_bT
    res = log_power_integral(alpha, beta, rx, s + 1.0, t_x, T, moments=moments)
    lnI, mom = res if moments else (res, None)
    E2 = np.log(s) + lnI
    return E1, E2, l_aT, l_bT, mom


def pareto_loglik(params, x, t_x, T) -> np.ndarray:
    """Per-customer Pareto/NBD log-likelihood (Fader and Hardie 2005, eq. 18)."""
    r, alpha, s, beta = (float(v) for v in params)
    x = np.asarray(x, dtype=np.float64)
    E1, E2 = _pareto_rows(
        (r, alpha, s, beta), x, np.asarray(t_x, float), np.asarray(T, float), False
    )[:2]
    return gammaln(r + x) - gammaln(r) + r * np.log(alpha) + s * np.log(beta) + np.logaddexp(E1, E2)


def pareto_objective(
    log_params: np.ndarray, d: PurchaseData, *, penalizer: float = 0.0
) -> tuple[float, np.ndarray]:
    """Mean negative Pareto/NBD log-likelihood and its exact gradient in log-parameters.

    With ``p1, p2`` the softmax weights of ``E1, E2`` and ``<.>`` the integrand-weighted means
    of :func:`log_power_integral` (``m = r+x``, ``n = s+1``)::

        d/dr     = psi(r+x) - psi(r) + ln alpha - p1 ln(alpha+T) - p2 <ln(alpha+tau)>
        d/dalpha = r/alpha - (r+x) [p1/(alpha+T) + p2 <1/(alpha+tau)>]
        d/ds     = ln beta - p1 ln(beta+T) + p2 (1/s - <ln(beta+tau)>)
        d/dbeta  = s/beta - p1 s/(beta+T) - p2 (s+1) <1/(beta+tau)>
    """
    theta = np.exp(np.asarray(log_params, dtype=np.float64))
    r, alpha, s, beta = theta
    W = d.total_weight
    xu, wx = d.xu, d.wx
    ll = float(wx @ (gammaln(r + xu) - gammaln(r)) + W * (r * np.log(alpha) + s * np.log(beta)))
    g = np.array(
        [
            wx @ (digamma(r + xu) - digamma(r)) + W * np.log(alpha),
            W * r / alpha,
            W * np.log(beta),
            W * s / beta,
        ]
    )
    E1, E2, l_aT, l_bT, (m_lnA, m_invA, m_lnB, m_invB) = _pareto_rows(theta, d.x, d.t_x, d.T, True)
    L = np.logaddexp(E1, E2)
    p2 = expit(E2 - E1)
    p1 = 1.0 - p2
    w = d.w
    rx = r + d.x
    ll += _dot(w, L)
    g[0] += _dot(w, -p1 * l_aT - p2 * m_lnA)
    g[1] -= _dot(w * rx, p1 / (alpha + d.T) + p2 * m_invA)
    g[2] += _dot(w, -p1 * l_bT + p2 * (1.0 / s - m_lnB))
    g[3] -= _dot(w, p1 * s / (beta + d.T) + p2 * (s + 1.0) * m_invB)
    pen, pen_g = _penalty(theta, np.array([1.0, d.time_scale, 1.0, d.time_scale]), penalizer)
    f = -ll / W + pen
    grad = theta * (-g / W + pen_g)
    return f, grad


# --------------------------------------------------------------------------------------------
# Gamma-Gamma likelihood
# --------------------------------------------------------------------------------------------


def gg_loglik(params, x, m) -> np.ndarray:
    """Per-customer Gamma-Gamma log-likelihood of the mean spend ``m`` over ``x`` repeat
    purchases (Fader and Hardie 2013, eq. 1a; Colombo and Jiang 1999)::

        ln G(px+q) - ln G(px) - ln G(q) + q ln gamma + (px-1) ln m + px ln x - (px+q) ln(x m + gamma)
    """
    p, q, gamma = (float(v) for v in params)
    x = np.asarray(x, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    px = p * x
    return (
        gammaln(px + q)
        - gammaln(px)
        - gammaln(q)
        + q * np.log(gamma)
        + (px - 1.0) * np.log(m)
        + px * np.log(x)
        - (px + q) * np.log(x * m + gamma)
    )


def gg_objective(
    log_params: np.ndarray, d: SpendData, *, penalizer: float = 0.0
) -> tuple[float, np.ndarray]:
    """Mean negative Gamma-Gamma log-likelihood and its exact gradient in log-parameters::

    d/dp     = x [psi(px+q) - psi(px) + ln m + ln x - ln(x m + gamma)]
    d/dq     = psi(px+q) - psi(q) + ln gamma - ln(x m + gamma)
    d/dgamma = q/gamma - (px+q)/(x m + gamma)
    """
    theta = np.exp(np.asarray(log_params, dtype=np.float64))
    p, q, gamma = theta
    x, m, w = d.x, d.m, d.w
    W = d.total_weight
    px = p * x
    l_xm = np.log(x * m + gamma)
    ll = _dot(w, gg_loglik(theta, x, m))
    psi_pxq = digamma(px + q)
    g = np.array(
        [
            _dot(w, x * (psi_pxq - digamma(px) + np.log(m) + np.log(x) - l_xm)),
            _dot(w, psi_pxq - digamma(q) + np.log(gamma) - l_xm),
            _dot(w, q / gamma - (px + q) / (x * m + gamma)),
        ]
    )
    pen, pen_g = _penalty(theta, np.array([1.0, 1.0, d.money_scale]), penalizer)
    f = -ll / W + pen
    grad = theta * (-g / W + pen_g)
    return f, grad


# --------------------------------------------------------------------------------------------
# (M)BG/NBD predictions
# --------------------------------------------------------------------------------------------


def _b_post(b, x, modified):
    """Second Beta parameter of the posterior of ``p`` for a customer alive at ``T``: the
    customer survived ``x`` (BG/NBD) or ``x + 1`` (MBG/NBD) dropout coin tosses."""
    return b + x + (1.0 if modified else 0.0)


def bg_p_alive(params, x, t_x, T, *, modified: bool = False) -> np.ndarray:
    """P(alive at T | x, t_x, T) (Fader, Hardie and Lee 2008, eq. 4; MBG: Batislam et al.
    2007, App. A eq. 5)::

        1 / (1 + delta * a/(b+x-1+s) * ((alpha+T)/(alpha+t_x))**(r+x))

    ``delta = [x > 0]`` for the BG/NBD (no dropout before the first repeat purchase) and
    ``1`` for the MBG/NBD (``s = 1``).
    """
    r, alpha, a, b = params
    x, t_x, T = (np.asarray(v, dtype=np.float64) for v in (x, t_x, T))
    bq = _b_post(b, x, modified) - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        D = np.log(a) - np.log(bq) + (r + x) * (np.log(alpha + T) - np.log(alpha + t_x))
    p = expit(-D)
    if not modified:
        p = np.where(x > 0, p, 1.0)
    return p


def _bg_given_alive_core(r, alpha, a, bp, x, T, t):
    r"""``E[purchases in (T, T+t] | alive at T]`` for posterior ``p ~ Beta(a, bp)``,
    ``lambda ~ Gamma(r+x, alpha+T)``:

    .. math:: E_p\left[\frac{1 - ((\alpha+T)/(\alpha+T+pt))^{r+x}}{p}\right]
        = \frac{C}{a-1}\left[1 - (1-z)^{a-1}\,{}_2F_1(C-r-x,\ a-1;\ C;\ z)\right],

    ``C = a + bp - 1``, ``z = t/(alpha+T+t)``: FHL (2005a) eq. 10 with Euler's transformation
    ``2F1(A,B;C;z) = (1-z)^(C-A-B) 2F1(C-A,C-B;C;z)`` applied, whose series has small
    numerator parameters and converges quickly even for large ``x``.
    """
    C = a + bp - 1.0
    z = t / (alpha + T + t)
    ln_1mz = np.log(alpha + T) - np.log(alpha + T + t)
    F = hyp2f1(C - r - x, a - 1.0, C, z)
    with np.errstate(invalid="ignore", over="ignore"):  # hyp2f1 failed: see the fallback
        tail = np.exp((a - 1.0) * ln_1mz) * (F - 1.0)
    return C / (a - 1.0) * (-np.expm1((a - 1.0) * ln_1mz) - tail)


_LEGENDRE = np.polynomial.legendre.leggauss(64)


def _beta_quadrature(a, bp, g):
    """``E[g(p)]`` for ``p ~ Beta(a, bp)`` (one ``bp`` per row) by 64-point Gauss-Legendre
    quadrature within 12 standard deviations of the mean (weights normalised); ``g`` maps the
    ``(rows, 64)`` node array to values. The fallback where scipy's ``hyp2f1`` fails (NaN /
    inf) for large Beta parameters - a or b in the hundreds or more, when the Beta is
    concentrated and the quadrature exact to about 1e-7 relative."""
    nodes, weights = _LEGENDRE
    s = a + bp
    mean = a / s
    sd = np.sqrt(a * bp / (s * s * (s + 1.0)))
    lo = np.maximum(mean - 12.0 * sd, 0.0)[:, None]
    hi = np.minimum(mean + 12.0 * sd, 1.0)[:, None]
    p = lo + (hi - lo) / 2.0 * (nodes[None, :] + 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        logpdf = (a - 1.0) * np.log(p) + (bp[:, None] - 1.0) * np.log1p(-p)
        w = weights[None, :] * np.exp(logpdf - logpdf.max(axis=1, keepdims=True))
        vals = g(p)
    return (w * vals).sum(axis=1) / w.sum(axis=1)


def _bg_given_alive_quadrature(r, alpha, a, bp, x, T, t):
    """The expectation of :func:`_bg_given_alive_core` by :func:`_beta_quadrature`."""
    bp, x, T, t = (np.atleast_1d(np.asarray(v, dtype=np.float64)) for v in (bp, x, T, t))

    def g(p):
        ln_ratio = np.log(alpha + T[:, None]) - np.log(alpha + T[:, None] + p * t[:, None])
        return -np.expm1((r + x[:, None]) * ln_ratio) / p

    return _beta_quadrature(a, bp, g)


def bg_expected_given_alive(params, t, x, T, *, modified: bool = False) -> np.ndarray:
    """Expected purchases in ``(T, T+t]`` of a customer alive at ``T`` (see
    :func:`_bg_given_alive_core`). The removable singularities at ``a = 1`` and ``C = 0`` are
    bridged by averaging ``a = a +- 1e-6`` (error about 1e-10 relative)."""
    r, alpha, a, b = (float(v) for v in params)
    x, T, t = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, T, t)))
    bp = _b_post(b, x, modified)
    eps = 1e-6
    out = np.zeros(x.shape)
    pos = t > 0
    if not pos.any():
        return out
    xs, Ts, ts, bps = x[pos], T[pos], t[pos], bp[pos]
    # The value depends on (x, T, t) only: evaluate the hypergeometric once per combination.
    distinct = _distinct_rows(xs, Ts, ts)
    if distinct is not None:
        first, inverse = distinct
        xs, Ts, ts, bps = xs[first], Ts[first], ts[first], bps[first]
    near = (abs(a - 1.0) < eps) | (np.abs(a + bps - 1.0) < eps)
    val = np.empty(xs.shape)
    far = ~near
    if far.any():
        val[far] = _bg_given_alive_core(r, alpha, a, bps[far], xs[far], Ts[far], ts[far])
    if near.any():
        args = (bps[near], xs[near], Ts[near], ts[near])
        val[near] = 0.5 * (
            _bg_given_alive_core(r, alpha, a + eps, *args)
            + _bg_given_alive_core(r, alpha, a - eps, *args)
        )
    failed = ~np.isfinite(val)
    if failed.any():
        args = (bps[failed], xs[failed], Ts[failed], ts[failed])
        val[failed] = _bg_given_alive_quadrature(r, alpha, a, *args)
    out[pos] = val[inverse] if distinct is not None else val
    return out


def bg_conditional_expected(params, t, x, t_x, T, *, modified: bool = False) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T] = P(alive) * E[... | alive] (FHL 2005a, eq. 10;
    MBG/NBD: Wagner and Hoppe 2008)."""
    return bg_p_alive(params, x, t_x, T, modified=modified) * bg_expected_given_alive(
        params, t, x, T, modified=modified
    )


def bg_expected_new(params, t, *, modified: bool = False) -> np.ndarray:
    """E[X(t)], repeat purchases in ``(0, t]`` of a new customer (FHL 2005a, eq. 9; MBG/NBD:
    ``b/(a-1) [1 - (alpha/(alpha+t))^r 2F1(r, b+1; a+b; t/(alpha+t))]``)."""
    a, b = float(params[2]), float(params[3])
    t = np.asarray(t, dtype=np.float64)
    zero = np.zeros(t.shape)
    survive = b / (a + b) if modified else 1.0  # MBG: may drop out right after purchase 0
    return survive * bg_expected_given_alive(params, t, zero, zero, modified=modified)


def _bg_laplace_mix(r, alpha, a, bp, x, T, u):
    r"""``E_p[(1 + p u)^-(r+x)]`` for ``p ~ Beta(a, bp)``, ``u >= 0``:
    ``2F1(r+x, a; a+bp; -u) = (1+u)^-a 2F1(a+bp-r-x, a; a+bp; u/(1+u))`` (Pfaff); where
    scipy's ``hyp2f1`` fails (NaN / inf, large ``a`` or ``bp``) by :func:`_beta_quadrature`."""
    bp, x, u = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (bp, x, u)))
    C = a + bp
    with np.errstate(invalid="ignore", over="ignore"):  # hyp2f1 failed: see the fallback
        val = np.exp(-a * np.log1p(u)) * hyp2f1(C - r - x, a, C, u / (1.0 + u))
    val = np.atleast_1d(val)
    failed = ~np.isfinite(val)
    if failed.any():  # large a, bp: same quadrature fallback as _bg_given_alive_core
        xf, uf = np.atleast_1d(x)[failed][:, None], np.atleast_1d(u)[failed][:, None]
        val[failed] = _beta_quadrature(
            a, np.atleast_1d(bp)[failed], lambda p: np.exp(-(r + xf) * np.log1p(p * uf))
        )
    return val.reshape(np.shape(x))


def bg_prob_purchase_in_window(params, x, t_x, T, t1, t2, *, modified: bool = False) -> np.ndarray:
    r"""P(at least one purchase in ``(T+t1, T+t2]`` | x, t_x, T), ``0 <= t1 < t2``.

    Derivation (crmkit). In the (M)BG/NBD a customer drops out only right after a purchase,
    so a customer alive at ``T`` stays alive until their next purchase; with purchase rate
    ``lambda`` and dropout probability ``p`` the "purchase then drop out" events form a
    Poisson process thinned by ``p``, so P(still alive at ``T+t1``) = ``exp(-lambda p t1)``,
    and once alive at ``T+t1`` the probability of no purchase in the next ``Delta = t2 - t1``
    is ``exp(-lambda Delta)`` (dropping out needs a purchase first). Hence

    .. math:: P(\ge 1 \mid \lambda, p, \text{alive at } T)
        = e^{-\lambda p t_1}\,(1 - e^{-\lambda \Delta}).

    Given alive at ``T`` the posterior factorises: ``lambda ~ Gamma(r+x, alpha+T)`` and
    ``p ~ Beta(a, bp)`` (``bp = b+x``, MBG: ``b+x+1``). Integrating ``lambda`` first,

    .. math:: P = P(\text{alive})\left[\Phi\!\left(\tfrac{t_1}{\alpha+T}\right)
        - \left(\tfrac{\alpha+T}{\alpha+T+\Delta}\right)^{r+x}
          \Phi\!\left(\tfrac{t_1}{\alpha+T+\Delta}\right)\right],
        \quad \Phi(u) = E_p[(1+pu)^{-(r+x)}],

    a Gauss hypergeometric function (:func:`_bg_laplace_mix`). For ``t1 = 0`` it reduces to
    ``P(alive) [1 - ((alpha+T)/(alpha+T+t2))^(r+x)]``. Checked against Monte Carlo of the
    generating process in the tests.
    """
    r, alpha, a, b = (float(v) for v in params)
    x, t_x, T, t1, t2 = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (x, t_x, T, t1, t2))
    )
    p_alive = bg_p_alive(params, x, t_x, T, modified=modified)
    distinct = _distinct_rows(x, T, t1, t2)  # the rest depends on (x, T, t1, t2) only
    if distinct is not None:
        first_row, inverse = distinct
        x, T, t1, t2 = x[first_row], T[first_row], t1[first_row], t2[first_row]
    bp = _b_post(b, x, modified)
    delta = t2 - t1
    aT = alpha + T
    ln_ratio = np.log(aT) - np.log(aT + delta)
    first = _bg_laplace_mix(r, alpha, a, bp, x, T, t1 / aT)
    second = np.exp((r + x) * ln_ratio) * _bg_laplace_mix(r, alpha, a, bp, x, T, t1 / (aT + delta))
    given_alive = np.clip(np.where(t1 > 0, first - second, -np.expm1((r + x) * ln_ratio)), 0.0, 1.0)
    if distinct is not None:
        given_alive = given_alive[inverse]
    return p_alive * given_alive


# --------------------------------------------------------------------------------------------
# Pareto/NBD predictions
# --------------------------------------------------------------------------------------------


def pareto_p_alive(params, x, t_x, T) -> np.ndarray:
    """P(alive at T | x, t_x, T) = ``1 / (1 + s I (alpha+T)^(r+x) (beta+T)^s)`` (Fader and
    Hardie 2005, eq. 24, with ``s/(r+s+x) A0 = s I``)."""
    x, t_x, T = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (x, t_x, T)))
    distinct = _distinct_rows(x, t_x, T, max_share=0.5)  # customers sharing a pattern
    if distinct is not None:
        first, inverse = distinct
        x, t_x, T = x[first], t_x[first], T[first]
    E1, E2 = _pareto_rows(tuple(float(v) for v in params), x, t_x, T, False)[:2]
    p = expit(E1 - E2)
    return p[inverse] if distinct is not None else p


def _one_minus_pow_over(k, ln_u):
    """``(1 - u**k) / k`` for ``u = exp(ln_u) <= 1``, continuous at ``k = 0`` (``-ln u``)."""
    k = np.asarray(k, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        val = -np.expm1(k * ln_u) / k
    return np.where(np.abs(k) < 1e-12, -ln_u, val)


def pareto_expected_given_alive(params, t, x, T) -> np.ndarray:
    """Expected purchases in ``(T, T+t]`` of a customer alive at ``T``:
    ``(r+x)(beta+T) / ((alpha+T)(s-1)) [1 - ((beta+T)/(beta+T+t))^(s-1)]``
    (Fader and Hardie 2005, eq. 41 without P(alive); the limit ``s = 1`` is handled)."""
    r, alpha, s, beta = (float(v) for v in params)
    t, x, T = np.broadcast_arrays(*(np.asarray(v, dtype=np.float64) for v in (t, x, T)))
    ln_u = np.log(beta + T) - np.log(beta + T + t)
    return (r + x) * (beta + T) / (alpha + T) * _one_minus_pow_over(s - 1.0, ln_u)


def pareto_conditional_expected(params, t, x, t_x, T) -> np.ndarray:
    """E[purchases in (T, T+t] | x, t_x, T] (Fader and Hardie 2005, eq. 41)."""
    return pareto_p_alive(params, x, t_x, T) * pareto_expected_given_alive(params, t, x, T)


def pareto_expected_new(params, t) -> np.ndarray:
    """E[X(t)] for a new customer: ``r beta / (alpha (s-1)) [1 - (beta/(beta+t))^(s-1)]``
    (Fader and Hardie 2005, eq. 27)."""
    r, alpha, s, beta = (float(v) for v in params)
    t = np.asarray(t, dtype=np.float64)
    return r * beta / alpha * _one_minus_pow_over(s - 1.0, np.log(beta) - np.log(beta + t))


def pareto_prob_purchase_in_window(params, x, t_x, T, t1, t2) -> np.ndarray:
    r"""P(at least one purchase in ``(T+t1, T+t2]`` | x, t_x, T) under the Pareto/NBD.

    Derivation (crmkit). Alive at ``T`` with rates ``lambda`` (purchase) and ``mu`` (dropout),
    the customer is alive at ``T+t1`` with probability ``exp(-mu t1)``; then the next purchase
    comes before both death and the end of the window with probability
    ``lambda/(lambda+mu) (1 - exp(-(lambda+mu) Delta)) = int_0^Delta lambda e^{-(lambda+mu)u} du``.
    The posterior given alive factorises (``lambda ~ Gamma(r+x, alpha+T)``,
    ``mu ~ Gamma(s, beta+T)``), and ``E[lambda e^{-lambda u}]``, ``E[e^{-mu v}]`` are closed
    form, so

    .. math:: P = P(\text{alive})\,(r+x)(\alpha+T)^{r+x}(\beta+T)^{s}
        \int_0^{\Delta} (\alpha+T+u)^{-(r+x+1)} (\beta+T+t_1+u)^{-s}\,du,

    evaluated with :func:`log_power_integral`.
    """
    r, alpha, s, beta = (float(v) for v in params)
    x, t_x, T, t1, t2 = np.broadcast_arrays(
        *(np.asarray(v, dtype=np.float64) for v in (x, t_x, T, t1, t2))
    )
    p_alive = pareto_p_alive(params, x, t_x, T)
    distinct = _distinct_rows(x, T, t1, t2)  # the integral depends on (x, T, t1, t2) only
    if distinct is not None:
        first, inverse = distinct
        x, T, t1, t2 = x[first], T[first], t1[first], t2[first]
    lnI = log_power_integral(alpha + T, beta + T + t1, r + x + 1.0, s, 0.0, t2 - t1)
    ln_given_alive = np.log(r + x) + (r + x) * np.log(alpha + T) + s * np.log(beta + T) + lnI
    given_alive = np.clip(np.exp(ln_given_alive), 0.0, 1.0)
    if distinct is not None:
        given_alive = given_alive[inverse]
    return p_alive * given_alive


# --------------------------------------------------------------------------------------------
# Shared and Gamma-Gamma predictions
# --------------------------------------------------------------------------------------------


def median_time_to_next_purchase(r, alpha, x, T, quantile: float = 0.5) -> np.ndarray:
    """Quantile of the waiting time from ``T`` to the next purchase of a customer alive at
    ``T`` (and, for the Pareto/NBD, staying alive): with ``lambda ~ Gamma(r+x, alpha+T)`` and
    an exponential wait, the wait is Lomax, ``P(W > w) = ((alpha+T)/(alpha+T+w))^(r+x)``, so
    the ``quantile`` is ``(alpha+T) ((1-quantile)^(-1/(r+x)) - 1)`` - finite for every
    customer, unlike the mean (infinite when ``r+x <= 1``)."""
    x, T = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(T, dtype=np.float64))
    return (alpha + T) * np.expm1(-np.log1p(-quantile) / (r + x))


def gg_conditional_expected_average_profit(params, x, m) -> np.ndarray:
    """E[mean spend per transaction | x, m] = ``p (gamma + x m) / (p x + q - 1)``
    (Fader and Hardie 2013, eq. 5): a weighted average of the population mean
    ``p gamma / (q - 1)`` and the customer's own mean ``m``. Customers with ``x = 0`` get the
    population mean (``inf`` when ``q <= 1``)."""
    p, q, gamma = (float(v) for v in params)
    x, m = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(m, dtype=np.float64))
    m = np.where(x > 0, m, 0.0)
    den = p * x + q - 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        val = p * (gamma + x * m) / den
    return np.where(den > 0, val, np.inf)
