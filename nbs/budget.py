# ---
# jupyter:
#   jupytext:
#     cell_metadata_filter: tags,-all
#     notebook_metadata_filter: kernelspec,jupytext
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Deriving the privacy budget of DP-SGD
#
# **Question.** You trained a model with DP-SGD: a sampling rate $q$, a noise multiplier
# $\sigma$, $T$ steps. What $(\varepsilon, \delta)$ guarantee does it have, and why should you
# believe the number a library prints?
#
# **What you will see:** the TF Privacy tutorial's MNIST run's ε under three accountings (section 6) and the σ
# for a target ε (section 8):
#
# ```{glue:md} budget-headline
# :format: myst
# ```
#
# This chapter derives the answer from three results: the Gaussian mechanism, Rényi
# differential privacy (RDP) and its composition {cite:p}`mironov2017renyi`, and the RDP of the
# *sampled* Gaussian mechanism {cite:p}`mironov2019sgm`. Each formula is implemented from
# scratch in `dpnb.privacy` (open `src/dpnb/privacy/rdp.py` beside this page), plotted, and checked
# against Opacus {cite:p}`opacus2021`. We then re-account the best-known MNIST budget, that of
# the TF Privacy tutorial {cite:p}`tfprivacy`, explain why tools have printed three different ε
# for it over the years, re-account Abadi et al.'s own setting {cite:p}`abadi2016deep`, show what
# the sampling scheme and the adjacency change, and calibrate the noise for a target ε.
#
# Everything below assumes **Poisson sampling** (each example enters each batch independently
# with probability $q$) and **add/remove-one adjacency**; this is what Opacus's `DPDataLoader`
# implements and what its accountants assume.

# %% tags=["parameters"]
# Book profile: the TF Privacy tutorial's MNIST run (sigma 1.1, batch 256, 60 epochs).
dataset_size = 60_000  # private training examples N
batch_size = 256  # expected batch size under Poisson sampling
noise_multiplier = 1.1  # sigma: noise std / clipping norm
epochs = 60
delta = 1e-5
target_epsilon = 3.0  # for the noise-calibration section
max_epochs = 100  # right end of the epsilon-vs-epochs curves
curve_points = 25  # points per epsilon-vs-epochs curve
crosscheck_sigmas = [0.8, 1.1, 2.0]  # grid of the Opacus cross-check
crosscheck_rates = [0.001, 0.01, 0.03]
crosscheck_steps = [100, 10_000]
abadi_lot = 600  # Abadi et al.'s lot size (expected batch) on MNIST
abadi_sigmas = [2.0, 4.0, 8.0]  # their three noise levels
profile = "book"

# %% [markdown]
# The cell above is the chapter's `parameters` cell: run it with your own numbers, e.g.
# `papermill nbs/budget.ipynb out.ipynb -p noise_multiplier 0.8 -p epochs 30`. The next cell
# rejects values outside their allowed range with a one-line message. (The imports and checks are folded: click to show them.)

# %% tags=["hide-input"]
import time

import numpy as np
import pandas as pd
from IPython.display import Markdown, display

from dpnb import chapters, dpsgd, plots, privacy, prose
from dpnb.privacy import compare
from dpnb.published import published
from dpnb.results import Results

globals().update(chapters.parameters("budget", globals()))  # every parameter, checked
results = Results(chapter="budget", profile=profile)
sample_rate, steps = privacy.sample_rate_and_steps(
    dataset_size=dataset_size, batch_size=batch_size, epochs=epochs
)
print(f"q = {batch_size}/{dataset_size} = {sample_rate:.6g}, T = ceil(epochs / q) = {steps} steps")

# %% [markdown]
# ## 1. The Gaussian mechanism, and why DP-SGD clips
#
# A randomised mechanism $M$ is $(\varepsilon,\delta)$-differentially private if for all
# datasets $D, D'$ that differ in one example and every set of outcomes $S$
# {cite:p}`dwork2014algorithmic`:
#
# $$\Pr[M(D)\in S] \le e^{\varepsilon}\,\Pr[M(D')\in S] + \delta.$$
#
# The Gaussian mechanism releases $f(D) + \mathcal N(0, \sigma^2\Delta^2 I)$, where the
# **L2 sensitivity** $\Delta = \max_{D\simeq D'} \lVert f(D) - f(D')\rVert_2$ bounds how much
# one example can move $f$. The textbook calibration
# $\sigma = \sqrt{2\ln(1.25/\delta)}/\varepsilon$ {cite:p}`dwork2014algorithmic` (Theorem A.1)
# holds for $\varepsilon<1$ only; the exact privacy profile of one Gaussian release is
# {cite:p}`balle2018improving`
#
# $$\delta(\varepsilon) = \Phi\!\left(\frac{1}{2\sigma} - \varepsilon\sigma\right)
#   - e^{\varepsilon}\,\Phi\!\left(-\frac{1}{2\sigma} - \varepsilon\sigma\right).$$
#
# The sum of raw gradients has unbounded sensitivity: one outlier can move it arbitrarily far.
# DP-SGD {cite:p}`abadi2016deep` therefore **clips each example's gradient** to norm
# $C$ (`max_grad_norm`), $\bar g_i = g_i \min(1, C/\lVert g_i\rVert_2)$, so that adding or
# removing one example moves the sum by at most $C$, and adds $\mathcal N(0, \sigma^2C^2 I)$.
# The noise multiplier $\sigma$ is the noise in units of the sensitivity; it alone (with
# $q$ and $T$) determines ε, whatever $C$ is.

# %%
eps_grid = np.linspace(0.05, 6, 60)
profile_df = pd.DataFrame(
    [
        {"noise_multiplier": s, "epsilon": e, "delta": privacy.gaussian_delta(noise_multiplier=s, epsilon=e)}
        for s in (0.5, 1.0, 2.0, 4.0)
        for e in eps_grid
    ]
)
fig = plots.gaussian_privacy_profile(profile_df[profile_df["delta"] > 1e-12])
plots.caption("Exact privacy profile δ(ε) of **one** Gaussian release (sensitivity 1, no sampling) for "
              f"σ ∈ {{{', '.join(f'{s:g}' for s in sorted(profile_df['noise_multiplier'].unique()))}}}: "
              "every (ε, δ) pair on a curve holds at once.")

# %% [markdown]
# One release with $\sigma=1$ is already a weak guarantee. DP-SGD makes thousands of them;
# the rest of the chapter is about adding them up without giving away more than necessary.
# For comparison, the textbook bound asks for far more noise than the exact profile:

# %%
sigma_textbook = privacy.classic_gaussian_sigma(epsilon=0.5, delta=delta)
delta_exact = privacy.gaussian_delta(noise_multiplier=sigma_textbook, epsilon=0.5)
print(f"textbook sigma for (0.5, {delta:g})-DP: {sigma_textbook:.2f}; "
      f"its exact delta at eps = 0.5 is {delta_exact:.2e} (target {delta:g})")

# %% [markdown]
# ## 2. Rényi differential privacy
#
# Mironov {cite:p}`mironov2017renyi` measures privacy by the Rényi divergence of order
# $\alpha > 1$ between the output distributions on neighbouring datasets,
#
# $$D_\alpha(P\Vert Q) = \frac{1}{\alpha-1}\log \mathbb E_{x\sim Q}\!\left[\left(\frac{P(x)}{Q(x)}\right)^{\alpha}\right],$$
#
# and calls $M$ $(\alpha, \varepsilon(\alpha))$-RDP when $D_\alpha(M(D)\Vert M(D'))\le
# \varepsilon(\alpha)$ for all neighbours. Three properties make it the workhorse of DP-SGD
# accounting {cite:p}`mironov2017renyi`:
#
# * **Gaussian mechanism** (Prop. 7): sensitivity 1 and noise $\sigma$ give
#   $\varepsilon(\alpha) = \alpha / (2\sigma^2)$ for every $\alpha$.
# * **Composition** (Prop. 1): running mechanisms with curves $\varepsilon_1(\alpha)$ and
#   $\varepsilon_2(\alpha)$ in sequence (adaptively) gives $\varepsilon_1(\alpha)+\varepsilon_2(\alpha)$.
#   $T$ identical steps cost $T\,\varepsilon(\alpha)$: composition is *additive per order*.
# * **Conversion** (Prop. 3): $(\alpha,\varepsilon(\alpha))$-RDP implies
#   $(\varepsilon(\alpha) + \log(1/\delta)/(\alpha-1),\ \delta)$-DP for every $\delta$; we are
#   free to pick the best $\alpha$ after composing (section 4).

# %% [markdown]
# ## 3. The sampled Gaussian mechanism
#
# A DP-SGD step does not touch every example: each one is in the batch with probability $q$.
# This *privacy amplification by subsampling* is what makes thousands of steps affordable.
# Mironov, Talwar and Zhang {cite:p}`mironov2019sgm` (Theorem 4) show that the step is
# $(\alpha, \varepsilon(\alpha))$-RDP with $\varepsilon(\alpha) = \frac{1}{\alpha-1}\log A_\alpha$,
# where, with $\mu_0 = \mathcal N(0,\sigma^2)$, $\mu_1 = \mathcal N(1,\sigma^2)$ and
# $\mu = (1-q)\mu_0 + q\mu_1$,
#
# $$A_\alpha = \mathbb E_{z\sim\mu_0}\!\left[\left(\frac{\mu(z)}{\mu_0(z)}\right)^{\alpha}\right].$$
#
# **Integer orders** (Section 3.3): expanding $(1-q+q\,\mu_1/\mu_0)^\alpha$ binomially and
# using $\mathbb E_{\mu_0}[(\mu_1/\mu_0)^k] = e^{(k^2-k)/(2\sigma^2)}$,
#
# $$A_\alpha = \sum_{k=0}^{\alpha}\binom{\alpha}{k}(1-q)^{\alpha-k}q^{k}\,
#   \exp\!\left(\frac{k^2-k}{2\sigma^2}\right).$$
#
# **Fractional orders** (Section 3.3): the binomial series no longer terminates. Splitting the
# integral at $z_0 = \sigma^2\log(1/q-1) + \tfrac12$, where $q\,\mu_1 = (1-q)\,\mu_0$, gives two
# convergent series, $A_\alpha = A_0 + A_1$:
#
# $$A_0 = \sum_{i\ge0}\binom{\alpha}{i}q^{i}(1-q)^{\alpha-i}e^{\frac{i^2-i}{2\sigma^2}}
#   \Phi\!\left(\frac{z_0-i}{\sigma}\right),\qquad
#   A_1 = \sum_{i\ge0}\binom{\alpha}{i}q^{\alpha-i}(1-q)^{i}e^{\frac{j^2-j}{2\sigma^2}}
#   \Phi\!\left(\frac{j-z_0}{\sigma}\right),\ j=\alpha-i.$$
#
# `dpnb.privacy.sgm_rdp` implements both (in log space, with signed sums for the fractional
# binomials). For $q = 1$ it returns the Gaussian mechanism's $\alpha/(2\sigma^2)$.

# %%
orders = np.array(privacy.DEFAULT_ORDERS)
rates = sorted({1.0, 0.1, 0.01, round(sample_rate, 6)}, reverse=True)
rdp_df = pd.DataFrame(
    [
        {"sample_rate": f"{q:g}", "order": a, "rdp": r, "noise_multiplier": noise_multiplier,
         "order_type": "integer" if float(a).is_integer() else "fractional"}
        for q in rates
        for a, r in zip(orders, privacy.sgm_rdp(noise_multiplier=noise_multiplier, sample_rate=q, orders=orders))
    ]
)
fig = plots.rdp_curves(rdp_df)
plots.caption(f"RDP ε(α) of one step of the sampled Gaussian mechanism (σ = {noise_multiplier:g}; Poisson "
              f"sampling, add/remove) at sampling rates {', '.join(rdp_df['sample_rate'].unique())}, "
              "on Opacus's order grid.")

# %% [markdown]
# Each factor of 10 in $q$ lowers a step's RDP by roughly a factor of 100 at small orders
# (amplification is quadratic in $q$ there: the leading term is
# $\varepsilon(\alpha)\approx \tfrac{\alpha}{2} q^2 (e^{1/\sigma^2} - 1) \approx q^2\alpha/(2\sigma^2)$ for large σ),
# and the fractional and integer orders lie on one smooth curve, a first check that both
# series are right. The curve bends up at large orders, where subsampling stops helping.

# %% [markdown]
# ## 4. From RDP to (ε, δ): two conversions and the optimal order
#
# After $T$ steps the curve is $T\varepsilon(\alpha)$, and every order gives a valid
# $(\varepsilon,\delta)$ statement. Two conversions are in use:
#
# * **Mironov 2017, Prop. 3** (what TF Privacy and Opacus printed until about 2020):
#   $\varepsilon = T\varepsilon(\alpha) + \dfrac{\log(1/\delta)}{\alpha-1}$.
# * **Balle et al. 2020, Thm. 21** {cite:p}`balle2020hypothesis`, also Canonne, Kamath and Steinke
#   {cite:p}`canonne2020discrete` (Prop. 12), used by Opacus and Google's dp-accounting today:
#   $\varepsilon = T\varepsilon(\alpha) + \log\dfrac{\alpha-1}{\alpha} - \dfrac{\log\delta + \log\alpha}{\alpha-1}$.
#
# The second is never larger, since $\log\frac{\alpha-1}{\alpha} - \frac{\log\alpha}{\alpha-1} < 0$.
# Both are minimised over a grid of orders (here Opacus's: 1.1 to 10.9 in steps of 0.1, then 12 to 63).

# %%
conv_df = pd.concat(
    [
        pd.DataFrame({"order": orders, "conversion": conv,
                      "epsilon": privacy.epsilon_by_order(noise_multiplier=noise_multiplier,
                                                          sample_rate=sample_rate, steps=steps,
                                                          delta=delta, conversion=conv)})
        for conv in ("mironov", "balle")
    ]
)
fig = plots.conversion_curves(
    conv_df, title=f"q = {sample_rate:.4g}, σ = {noise_multiplier:g}, T = {steps}, δ = {delta:g}"
)
plots.caption(f"ε at each Rényi order after T = {steps} steps (q = {sample_rate:.4g}, σ = {noise_multiplier:g}, "
              f"δ = {delta:g}, Poisson, add/remove) under the two conversions; the reported ε is each curve's minimum.")

# %% [markdown]
# The optimal order is interior: small orders pay the $\log(1/\delta)/(\alpha-1)$ term, large
# ones the growing RDP curve. A grid that stops too early (or starts too late) would silently
# return a worse ε, which is why Opacus warns when the optimum sits at the grid's edge.
#
# RDP is itself an upper bound: the RDP curve summarises the privacy loss distribution by its
# moments and loses some tightness in the conversion. The **privacy loss random variable**
# (PRV) accountant of Gopi, Lee and Wutschitz {cite:p}`gopi2021prv`, like the privacy loss
# distribution (PLD) accountants of dp-accounting {cite:p}`koskela2020pld`, composes the
# distribution of the privacy loss itself numerically (by FFT) and returns ε within a stated
# error (`eps_error`, 0.01 here) of the *exact* ε of the composed sampled Gaussian.
# `dpnb.privacy.prv_epsilon` calls Opacus's `PRVAccountant`.

# %% [markdown]
# ## 5. Cross-check against Opacus
#
# The from-scratch RDP code must match Opacus's `RDPAccountant`; the table also shows how much
# tighter the PRV accountant is. `rel_diff` is $|\varepsilon_{\text{dpnb}} -
# \varepsilon_{\text{Opacus}}| / \varepsilon_{\text{Opacus}}$ (both with the Balle et al.
# conversion); `prv_saving` is $1 - \varepsilon_{\text{PRV}}/\varepsilon_{\text{RDP}}$.

# %%
t0 = time.perf_counter()
check_df = compare.crosscheck(
    noise_multipliers=crosscheck_sigmas, sample_rates=crosscheck_rates, steps=crosscheck_steps, delta=delta
)
crosscheck_seconds = time.perf_counter() - t0
display(check_df.drop(columns=["delta", "seconds_dpnb", "seconds_opacus"]).style.format(
    {"eps_rdp_dpnb": "{:.6f}", "eps_rdp_opacus": "{:.6f}", "rel_diff": "{:.1e}",
     "eps_prv_opacus": "{:.4f}", "prv_saving": "{:.1%}"}))
worst = check_df["rel_diff"].max()
print(f"largest relative difference dpnb vs Opacus RDP: {worst:.1e} "
      f"({len(check_df)} settings, delta = {delta:g}); {crosscheck_seconds:.1f} s")
assert worst < 1e-6, "dpnb.privacy disagrees with Opacus's RDPAccountant"

# %% [markdown]
# The two RDP implementations agree to far better than $10^{-6}$ relative. Where does PRV's
# tighter accounting pay? The figure follows ε as the steps grow, at the reference run's $q$ and
# σ, under both RDP conversions and PRV (`dpnb.privacy.compare.accountants_over_steps`).

# %%
step_grid = np.unique(np.geomspace(10, steps * max_epochs / epochs, curve_points).astype(int))
over_steps = compare.accountants_over_steps(noise_multiplier=noise_multiplier, sample_rate=sample_rate,
                                            steps=step_grid.tolist(), delta=delta)
fig = plots.accountants_vs_steps(over_steps, title=f"q = {sample_rate:.4g}, σ = {noise_multiplier:g}, δ = {delta:g}")
plots.caption(f"ε against the number of steps (δ = {delta:g}, Poisson sampling, add/remove; q = {sample_rate:.4g}, "
              f"σ = {noise_multiplier:g}) under the two RDP conversions and the PRV accountant.")

# %%
ratio = over_steps.pivot(index="steps", columns="accounting", values="epsilon")
ratio = ratio["PRV"] / ratio["RDP, Balle et al. 2020"]
display(Markdown(
    f"PRV's ε is {ratio.iloc[0]:.0%} of today's RDP ε after {ratio.index[0]} steps and {ratio.iloc[-1]:.0%} after "
    f"{ratio.index[-1]:,} steps (lowest: {ratio.min():.0%}, at {ratio.idxmin():,} steps): RDP summarises the privacy "
    "loss by its moments and pays for that in the conversion, PRV composes the distribution itself."))

# %% [markdown]
# ## 6. The reference run: the TF Privacy tutorial's MNIST, σ = 1.1, 60 epochs
#
# The TF Privacy MNIST tutorial {cite:p}`tfprivacy` trained a CNN on MNIST ($N = 60{,}000$) with
# batch 256, $\sigma = 1.1$ for 60 epochs at $\delta = 10^{-5}$, and TF Privacy's
# `compute_dp_sgd_privacy` printed the value of the old conversion below. (This is not Abadi et
# al.'s setting; theirs follows.) The same run, with the same orders, reads differently today.
# One caveat holds for all three numbers: each assumes **Poisson sampling**, while the tutorial
# trained on shuffled batches of fixed size, which none of these analyses covers (section 7).

# %%
reference_df = compare.compare_accountants(
    noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps, delta=delta
)
display(reference_df.drop(columns="accountant").style.format(
    {"epsilon": "{:.3f}", "optimal_order": "{:g}", "seconds": "{:.2f}"}, na_rep="(not RDP)"))

# %%
for row in reference_df.itertuples():
    results.add(experiment="reference run", dataset=f"N={dataset_size}", model="DP-SGD", dp=True,
                epsilon=row.epsilon, delta=delta, accountant=dpsgd.accountant_label(row.accountant),
                metric="epsilon", value=row.epsilon, seconds=row.seconds)

# %%
eps_old, eps_rdp, eps_prv = reference_df["epsilon"]
display(Markdown(
    f"For q = {sample_rate:.6g}, σ = {noise_multiplier:g}, T = {steps} and δ = {delta:g}: the old "
    f"conversion gives **ε = {eps_old:.2f}**, the current RDP conversion **{eps_rdp:.2f}** "
    f"({1 - eps_rdp / eps_old:.0%} lower) and the PRV accountant **{eps_prv:.2f}** "
    f"({1 - eps_prv / eps_old:.0%} lower than the old figure)."
))
prose.headline("budget", f"the run q = {sample_rate:.4g}, σ = {noise_multiplier:g}, T = {steps} has ε = **{eps_old:.2f}** "
               f"by the old RDP conversion, **{eps_rdp:.2f}** by today's and **{eps_prv:.2f}** by PRV (δ = {delta:g}, "
               "Poisson sampling, add/remove adjacency, as all three assume).", display=False)

# %% [markdown]
# Nothing about the training changed between these three numbers: the *same* mechanism was
# analysed more tightly. The old conversion (Prop. 3) is a loose use of the RDP curve; the Balle
# et al. conversion extracts more from the same curve; PRV drops the RDP summary altogether and
# composes the privacy loss distribution itself, so it is the figure to report, with its error
# bound. When comparing ε across papers, check the accountant, the conversion, δ and the
# sampling assumption: the three values above describe one training run.
#
# **Abadi et al.'s own setting.** Abadi et al. {cite:p}`abadi2016deep` trained on MNIST with lots
# (expected batches) of `abadi_lot` images and three noise levels `abadi_sigmas`, after a
# differentially private PCA of the inputs whose budget is part of their published ε. The table
# re-accounts the DP-SGD part with today's RDP accountant: for each σ, how many epochs fit within
# each ε they published (`dpnb.published`), *before* the PCA step's share is taken out, so
# their runs must have used fewer (`dpnb.privacy.steps_within`).

# %%
abadi_rate = abadi_lot / dataset_size
abadi_eps = sorted(published("mnist").query("source == 'Abadi et al. 2016'")["epsilon"].unique())
abadi_df = pd.DataFrame([
    dict(noise_multiplier=s, published_epsilon=e,
         epochs=privacy.steps_within(privacy.SampledGaussianEvent(s, abadi_rate, 1), target_epsilon=e,
                                     delta=delta, accountant="rdp") * abadi_rate)
    for s in abadi_sigmas for e in abadi_eps])
display(abadi_df.pivot(index="noise_multiplier", columns="published_epsilon", values="epochs")
        .rename(columns=lambda e: f"epochs within ε = {e:g}").style.format("{:,.1f}"))
for r in abadi_df.itertuples():
    results.add(experiment=f"Abadi et al. setting, sigma = {r.noise_multiplier:g}: epochs within a published epsilon",
                dataset=f"N={dataset_size}, lot {abadi_lot}", model="DP-SGD (without the DP-PCA step)", dp=True,
                epsilon=r.published_epsilon, delta=delta, accountant=dpsgd.accountant_label("rdp"), metric="epochs",
                value=r.epochs, seconds=float("nan"))
display(Markdown(f"q = {abadi_lot}/{dataset_size:,} = {abadi_rate:.4g}; δ = {delta:g}, RDP (Balle et al. conversion), "
                 "Poisson sampling, add/remove; the DP-PCA step is not included."))


# %% [markdown]
# ## 7. Sampling and adjacency
#
# Every ε so far assumed two things about the run, and both change the number.
#
# * **Sampling.** *Poisson sampling* puts each example in each batch independently with
#   probability $q$, so batch sizes vary; this is what the RDP and PRV analyses of DP-SGD
#   assume, and what Opacus's `DPDataLoader` draws. *Shuffled batches* (a permutation cut into
#   batches of fixed size, what an ordinary `DataLoader` draws) see each example exactly once
#   per epoch; none of these analyses covers them, and the better-known ε's of shuffled runs
#   (the reference run's included) silently assume Poisson sampling. *Fixed shards without
#   replacement*, as in GS-WGAN, have an analysis of their own (Wang, Balle & Kasiviswanathan
#   {cite:p}`wang2019subsampled`), for replace-one adjacency.
# * **Adjacency.** *Add/remove* neighbours differ by one example present or absent; *replace-one*
#   neighbours have the same size and differ in one example's value. Replacing is removing then
#   adding, so the same mechanism's replace-one ε is larger, and the two are **not comparable**:
#   the book never puts them in one column.
#
# `dpnb.privacy.epsilon` takes the record of a run with its sampling and adjacency
# (`SampledGaussianEvent`) and refuses, in one line, what no analysis here bounds. The same σ, q and
# T as the reference run, under each combination:

# %%
schemes = compare.sampling_and_adjacency(noise_multiplier=noise_multiplier, sample_rate=sample_rate, steps=steps,
                                         delta=delta)
schemes["ε (add/remove)"] = schemes["epsilon"].where(schemes["adjacency"] == "add/remove")
schemes["ε (replace-one)"] = schemes["epsilon"].where(schemes["adjacency"] == "replace-one")
display(schemes[["sampling", "adjacency", "accountant", "ε (add/remove)", "ε (replace-one)", "note"]]
        .style.format({"ε (add/remove)": "{:.3f}", "ε (replace-one)": "{:.3f}"}, na_rep="").hide(axis="index"))
display(Markdown(f"All at δ = {delta:g}, for q = {sample_rate:.4g}, σ = {noise_multiplier:g} and T = {steps} steps."))

# %% [markdown]
# The shards analysis (the `rdp-wbk` row) uses Mironov's conversion, as GS-WGAN's accountant does;
# the {doc}`gswgan` chapter derives it and compares it with the Poisson analysis of the same
# composition.
#
# **Choosing δ.** δ is the probability that the guarantee fails outright: a mechanism that
# publishes one random example in full is (0, 1/N)-DP. So δ must be well below $1/N$. The
# same run at several δ:

# %%
delta_grid = sorted({1 / dataset_size, 1e-5, 1e-6, 1e-8, delta}, reverse=True)
delta_df = pd.DataFrame([dict(delta=d, epsilon_prv=privacy.epsilon(privacy.SampledGaussianEvent(
    noise_multiplier, sample_rate, steps), delta=d, accountant="prv")) for d in delta_grid])
display(delta_df.assign(delta=delta_df["delta"].map("{:.2g}".format)).style.format({"epsilon_prv": "{:.3f}"})
        .hide(axis="index"))
delta_cost = delta_df["epsilon_prv"].iloc[-1] / delta_df["epsilon_prv"].iloc[0]
display(Markdown(
    f"Here 1/N = {1 / dataset_size:.2g}; going from δ = {delta_grid[0]:.2g} to {delta_grid[-1]:.2g} raises ε from "
    f"{delta_df['epsilon_prv'].iloc[0]:.2f} to {delta_df['epsilon_prv'].iloc[-1]:.2f} (PRV, Poisson, add/remove): "
    f"a δ {delta_grid[0] / delta_grid[-1]:,.0f} times smaller costs a factor {delta_cost:.2f} in ε here."))

# %% [markdown]
# **Tuning costs privacy too.** Every hyper-parameter trial on the private data is a run of a
# mechanism; reporting the best of many trials at the ε of one is not a DP statement. The book's
# chapters declare their searches and say that ε does not cover them. Papernot & Steinke
# {cite:p}`papernot2022hyperparameter` show how to pay for tuning properly: run a *random* number
# of trials (e.g. drawn from a truncated negative binomial or Poisson distribution) and publish
# only the best; the whole procedure then costs a small multiple of one run's RDP.

# %% [markdown]
# ## 8. Noise calibration: σ for a target ε
#
# In practice one fixes the budget and asks for the noise. ε is monotone in σ (more noise,
# less privacy loss), so bisection on the accountant finds the smallest σ whose ε does not
# exceed the target; `dpnb.privacy.calibrate_noise_multiplier` does this, and Opacus's
# `make_private_with_epsilon` does the same to "auto-tune" the noise. Since PRV is tighter, it
# needs less noise for the same target.

# %%
calib = []
for accountant in ("rdp", "prv"):
    t0 = time.perf_counter()
    plan = privacy.SampledGaussianEvent(None, sample_rate, steps)  # Poisson sampling, add/remove
    sigma = privacy.calibrate_noise_multiplier(plan, target_epsilon=target_epsilon, delta=delta,
                                               accountant=accountant)
    seconds = time.perf_counter() - t0
    eps = privacy.epsilon(plan.with_noise(sigma), delta=delta, accountant=accountant)
    calib.append({"accountant": accountant, "noise_multiplier": sigma, "epsilon reached": eps, "seconds": seconds})
    results.add(experiment="noise calibration", dataset=f"N={dataset_size}", model="DP-SGD", dp=True,
                epsilon=eps, delta=delta, accountant=dpsgd.accountant_label(accountant),
                metric="noise_multiplier", value=sigma, seconds=seconds)
calib_df = pd.DataFrame(calib)
display(calib_df.style.format({"noise_multiplier": "{:.4f}", "epsilon reached": "{:.4f}", "seconds": "{:.2f}"}))

# %% [markdown]
# How fast the budget is spent: ε against epochs for several noise levels and sampling rates
# (RDP accountant, Balle et al. conversion). Doubling the batch at fixed epochs doubles $q$ but
# halves the steps; the panels show that this costs privacy at fixed σ, which is why large-batch
# recipes also raise σ.

# %%
epoch_grid = np.linspace(max_epochs / curve_points, max_epochs, curve_points)
curve_rates = sorted({round(sample_rate, 6), round(min(1.0, 4 * sample_rate), 6)})
curve_df = pd.DataFrame(
    [
        {"epochs": e, "sample_rate": q, "noise_multiplier": s, "epsilon": eps}
        for q in curve_rates
        for s in sorted({0.7, noise_multiplier, 2.0})
        for e, eps in zip(epoch_grid, privacy.epsilon_curve(
            noise_multiplier=s, sample_rate=q, delta=delta,
            steps=[max(1, int(np.ceil(e / q))) for e in epoch_grid]))
    ]
)
fig = plots.epsilon_vs_epochs(curve_df, delta=delta, accountant="RDP accountant, Poisson sampling")
plots.caption(f"ε against epochs (δ = {delta:g}, RDP accountant, Poisson sampling, add/remove) for "
              f"N = {dataset_size}, at q = {', '.join(f'{q:.4g}' for q in curve_rates)} and three noise multipliers.")

# %% [markdown]
# ε grows sublinearly with the number of epochs (roughly like $\sqrt{T}$ for moderate ε, the
# signature of Gaussian composition), so the last epochs are the cheapest ones in privacy.
#
# ## Summary
#
# * Clipping bounds each example's influence; the noise multiplier σ, the sampling rate $q$ and
#   the number of steps $T$ determine ε.
# * RDP composes additively; the sampled Gaussian's RDP has closed-form series
#   (`dpnb.privacy.sgm_rdp`), checked here against Opacus to better than $10^{-6}$ relative.
# * Report ε with δ, the accountant, the conversion, the sampling scheme and the adjacency: the
#   same run gets three different ε in section 6, and a replace-one ε is a different quantity.
#
# The tidy results of this chapter are saved below (`results/budget.csv`, or
# `book/_build/results/budget.csv` in the book).

# %%
path = results.save()
display(results.frame())
print(f"saved {path.name}")
