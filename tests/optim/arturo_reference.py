"""An independent, straight-line reference implementation of arTuRO, written from ARTURO.md only.

Written for readability, not speed: plain Python loops over parameters, float64 tensor math per
parameter, every part of ARTURO.md's "One step" in its order. The tests compare
``arturo_diag.optim.Arturo`` against it step by step, so it deliberately shares no code with the
optimizer (it was written without looking at it).

Usage::

    ref = ArturoReference([{"params": [w1, w2], "lr": 0.01, ...}], kl="decoupled")
    ref.step([[g1, g2]])          # one list of gradients (or None) per group
    ref.eta, ref.eta_lo, ref.eta_hi, ref.iterations, ref.kl_ratio, ref.state[(0, 1)]["curvature"]

The reference owns the weight tensors it is given and changes them in place (they are "the
weights"; the state's "mean" is a separate tensor, as in a torch optimizer's state). Every
hyperparameter is read per group except the ones that are global by ARTURO.md: the KL bound
``eps`` (first group's ``lr``), ``eta_tol`` (first group's), and the ablation switches.
"""

from __future__ import annotations

import math

import torch

# ARTURO.md, "Hyperparameters": the defaults of the published Fashion-MNIST configuration.
DEFAULTS = dict(
    lr=0.08567456,
    reg_weight=0.05865662,
    prior_prec=0.0015,
    var_init=0.01,
    nu=1.3,
    dynamic_model_noise=0.01739296,
    measurement_noise=2.81679116,
    start_filter_cov=5e-5,
    eta_tol=0.5,
    weight_decay=1.5404e-6,
)

ETA_MAX = 10000.0  # ARTURO.md step 4: the first bracket is [0, 10000] and hi never exceeds 10000


class ArturoReference:
    """arTuRO per ARTURO.md, one step at a time, in float64."""

    def __init__(self, groups, *, kl="decoupled", fixed_eta=None):
        assert kl in ("decoupled", "coupled")
        self.kl = kl
        self.fixed_eta = fixed_eta
        self.groups = []
        for group in groups:
            full = dict(DEFAULTS)
            full.update(group)
            self.groups.append(full)
        self.state = {}  # (group index, parameter index) -> dict of state tensors
        self.eta_prev: float | None = None  # eta of the previous step
        # What the last step reports.
        self.eta = None
        self.eta_lo = None
        self.eta_hi = None
        self.iterations = None
        self.kl_ratio = None
        self.kl_bound = None
        self.trial_etas = []  # every m at which the bisection evaluated K, in order
        self.precision_nonpos = None
        self.denominator_nonpos = None
        self.step_count = 0

    # ---------------------------------------------------------------- pieces of the rule
    @staticmethod
    def new_mean(eta, mu, pi, a, b, c):
        """ARTURO.md step 3: mu'(eta) = (eta*pi*mu - b) / (a + c + eta*pi)."""
        return (eta * pi * mu - b) / (a + c + eta * pi)

    def new_precision(self, eta, pi, a, c, rho, nu):
        """ARTURO.md step 3 (decoupled) or "Coupled KL" ablation."""
        if self.kl == "decoupled":
            return (a + c + nu * pi) / (rho + nu)
        return (a + c + eta * pi) / (rho + eta)

    def kl_of(self, eta, active):
        """ARTURO.md step 4 (or the coupled ablation): K(eta) summed over every active parameter."""
        total = 0.0
        for entry in active:
            st, group = entry["state"], entry["group"]
            c = group["reg_weight"] * group["prior_prec"]
            mu, pi = st["mean"], st["precision"]
            mu_new = self.new_mean(eta, mu, pi, st["curvature"], st["intercept"], c)
            part = pi * (mu_new - mu) ** 2
            if self.kl == "coupled":
                pi_new = self.new_precision(eta, pi, st["curvature"], c, group["reg_weight"], group["nu"])
                ratio = pi / pi_new
                part = part + ratio - 1.0 - torch.log(ratio)
            total += 0.5 * float(part.sum())
        return total

    # ---------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self, grads, oracle=None):
        """One arTuRO step. ``grads[i][j]`` is the gradient of group i's parameter j (or None).

        ``oracle`` (the oracle-curvature ablation of ARTURO.md) maps (i, j) to a diagonal Hessian
        that replaces ``a`` after the filter update, with ``b = g - a*theta`` so that the
        surrogate still reproduces the observed gradient.
        """
        self.step_count += 1
        eps = float(self.groups[0]["lr"])  # ARTURO.md: eps from the first group only
        eta_tol = float(self.groups[0]["eta_tol"])

        active = []
        for gi, group in enumerate(self.groups):
            for pj, weight in enumerate(group["params"]):
                g = grads[gi][pj]
                if g is None:
                    continue  # skipped entirely: no decay, no filter, not moved, not in K
                g = g.detach().to(torch.float64)
                key = (gi, pj)
                first = key not in self.state
                if first:
                    # State per coordinate, "initial value" column of ARTURO.md.
                    self.state[key] = {
                        "step": 0,
                        "mean": weight.detach().clone(),  # undecayed copy
                        "precision": torch.full_like(weight, 1.0 / group["var_init"]),
                        "curvature": torch.full_like(weight, 0.1),
                        "intercept": g.clone(),
                        "filter_cov_bb": torch.full_like(weight, group["start_filter_cov"]),
                        "filter_cov_ba": torch.zeros_like(weight),
                        "filter_cov_aa": torch.full_like(weight, group["start_filter_cov"]),
                    }
                st = self.state[key]

                # 0. Weight decay with the parameter's own group lr.
                wd = group["weight_decay"]
                if wd > 0:
                    lr_g = float(group["lr"])
                    weight.copy_(weight - lr_g * wd * weight)
                if not first:
                    # From the second step on mu IS the (decayed) weight.
                    st["mean"] = weight.detach().clone()

                theta = weight.detach().clone()
                q = group["dynamic_model_noise"]
                r = group["measurement_noise"]

                # 1. Filter predict.
                p_bb = st["filter_cov_bb"] + q
                p_ba = st["filter_cov_ba"]
                p_aa = st["filter_cov_aa"] + q

                # 2. Filter update with h = [1, theta] and observation g.
                s = p_bb + 2.0 * theta * p_ba + theta**2 * p_aa + r
                k_b = (p_bb + theta * p_ba) / s
                k_a = (p_ba + theta * p_aa) / s
                a, b = st["curvature"], st["intercept"]
                d = g - (a * theta + b)
                st["intercept"] = b + k_b * d
                st["curvature"] = a + k_a * d
                st["filter_cov_bb"] = p_bb - k_b**2 * s
                st["filter_cov_ba"] = p_ba - k_b * k_a * s
                st["filter_cov_aa"] = p_aa - k_a**2 * s
                st["step"] += 1
                if oracle is not None and key in oracle:
                    st["curvature"] = oracle[key].detach().to(torch.float64).clone()
                    st["intercept"] = g - st["curvature"] * theta

                active.append({"key": key, "group": group, "weight": weight, "state": st})

        # 4. Trust region: the dual solve for eta.
        self.trial_etas = []
        if self.fixed_eta is not None:
            eta = float(self.fixed_eta)
            lo = hi = eta
            iterations = 0
        else:
            if self.eta_prev is None:
                lo, hi = 0.0, ETA_MAX
            else:
                lo, hi = self.eta_prev / 3.0, min(3.0 * self.eta_prev, ETA_MAX)
            iterations = 0
            while hi - lo > eta_tol:
                m = (lo + hi) / 2.0
                k = self.kl_of(m, active)
                iterations += 1
                self.trial_etas.append(m)
                if k > eps:
                    lo = m
                else:
                    hi = m
                if abs(k - eps) < 0.1 * eps:
                    break
            eta = (lo + hi) / 2.0  # the midpoint of the final bracket, not the last m

        kl_at_eta = self.kl_of(eta, active)

        # 5. Commit: mu <- mu'(eta), pi <- pi', the weights become mu.
        precision_nonpos = 0
        denominator_nonpos = 0
        for entry in active:
            st, group = entry["state"], entry["group"]
            c = group["reg_weight"] * group["prior_prec"]
            mu, pi, a, b = st["mean"], st["precision"], st["curvature"], st["intercept"]
            mu_new = self.new_mean(eta, mu, pi, a, b, c)
            pi_new = self.new_precision(eta, pi, a, c, group["reg_weight"], group["nu"])
            denominator_nonpos += int(((a + c + eta * pi) <= 0).sum())
            precision_nonpos += int((pi_new <= 0).sum())
            st["mean"] = mu_new
            st["precision"] = pi_new
            entry["weight"].copy_(mu_new)

        self.eta_prev = eta
        self.last_active = [entry["key"] for entry in active]
        self.eta, self.eta_lo, self.eta_hi = eta, lo, hi
        self.iterations = iterations
        self.kl_bound = eps
        self.kl_ratio = kl_at_eta / eps if eps > 0 else math.nan
        self.precision_nonpos = precision_nonpos
        self.denominator_nonpos = denominator_nonpos
        return eta


def batch_filter_posterior(g1, thetas, grads, *, start_filter_cov, measurement_noise, a0=0.1):
    """The filter's state after n updates with no drift (q = 0), solved as one batch problem.

    ARTURO.md step 2 with q = 0 is recursive least squares, i.e. exact Bayesian linear regression
    of g on h = [1, theta], coordinate by coordinate. The state starts as the prior
    N((g1, a0), P0*I) and then sees the observations (theta_i, g_i), i = 1..n (the first one
    included), each with noise variance r. Posterior (per coordinate):

        Sigma = (I/P0 + H^T H / r)^-1,    m = Sigma (m0/P0 + H^T g / r)

    with H the n x 2 matrix of rows [1, theta_i]. Returns (b, a, P_bb, P_ba, P_aa) tensors.
    """
    thetas = torch.stack([t.reshape(-1) for t in thetas]).to(torch.float64)  # n x D
    grads = torch.stack([g.reshape(-1) for g in grads]).to(torch.float64)
    shape = g1.shape
    n, dim = thetas.shape
    p0, r = float(start_filter_cov), float(measurement_noise)
    out = {
        k: torch.empty(dim, dtype=torch.float64)
        for k in ("intercept", "curvature", "filter_cov_bb", "filter_cov_ba", "filter_cov_aa")
    }
    g1_flat = g1.reshape(-1).to(torch.float64)
    for j in range(dim):
        H = torch.stack([torch.ones(n, dtype=torch.float64), thetas[:, j]], dim=1)
        prior_mean = torch.tensor([float(g1_flat[j]), a0], dtype=torch.float64)
        info = torch.eye(2, dtype=torch.float64) / p0 + H.T @ H / r
        cov = torch.linalg.inv(info)
        mean = cov @ (prior_mean / p0 + H.T @ grads[:, j] / r)
        out["intercept"][j] = mean[0]
        out["curvature"][j] = mean[1]
        out["filter_cov_bb"][j] = cov[0, 0]
        out["filter_cov_ba"][j] = cov[0, 1]
        out["filter_cov_aa"][j] = cov[1, 1]
    return {k: v.reshape(shape) for k, v in out.items()}


def gaussian_kl(mu_new, pi_new, mu, pi):
    """KL(N(mu_new, 1/pi_new) || N(mu, 1/pi)), summed over coordinates (textbook formula)."""
    var_new, var = 1.0 / pi_new, 1.0 / pi
    return float(0.5 * (var_new / var + (mu_new - mu) ** 2 / var - 1.0 + torch.log(var / var_new)).sum())
