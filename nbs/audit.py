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
# # Auditing: what ε means to an attacker
#
# **Question.** An accountant says that a training run is (ε, δ)-DP. What does that promise
# against an attacker who wants to know whether one example was in the training set, how
# close do real attacks on the book's own DP-SGD come to that promise, and would an attack
# notice if the implementation were broken?
#
# **What you will see:** the one-run audits of section 3; in numbers:
#
# ```{glue:md} audit-headline
# :format: myst
# ```
#
# An accountant gives an *upper* bound: no attack can do better than ε allows. An attack that
# succeeds gives a *lower* bound: evidence that the algorithm, as implemented, is not DP for
# any smaller ε. The two together bracket the truth. We attack models trained with the book's
# DP-SGD stages (`dpnb.dpsgd`: Poisson sampling, clipping, Gaussian noise, division by the
# expected batch), first by membership inference (section 2), then by the one-run audit of
# Steinke, Nasr & Jagielski {cite:p}`steinke2023auditing` (section 3), and we break the
# implementation on purpose to see whether the audit catches it. The code is `dpnb.audit`.
# Privacy is accounted as in the {doc}`budget` chapter: Poisson sampling, add/remove-one
# adjacency, ε from the PRV accountant unless the parameters say otherwise.

# %% tags=["parameters"]
# Book profile: linear models on MNIST pixels, about two minutes on a 2-core CPU.
pool_size = 4000  # membership inference: candidate images; each model trains on a random half
mia_epochs = 100
mia_batch_size = 100
mia_lr = 0.5
reference_models = 16  # LiRA's reference models per setting (even: they come in complementary pairs)
targets = 3  # models attacked per setting
mia_epsilons = [1.0, 8.0]
audit_train_size = 10_000  # real training images of each audited run
audit_epochs = 10
audit_batch_size = 100
audit_lr = 0.5
canaries = 1000  # m, each included in the training set with probability 1/2
audit_epsilons = [1.0, 2.0, 4.0, 8.0]
bugs = ["no-noise", "no-clipping"]
canary_pixels = 8  # lit pixels of each input canary
dirac_norm = 10.0  # a gradient canary's norm before clipping, in units of the clipping norm C
seeds = [0, 1, 2]
max_grad_norm = 1.0
delta = 1e-5
accountant = "prv"
confidence = 0.95
seed = 0
profile = "book"

# %% [markdown]
# Every parameter is checked first, by `dpnb.audit.Settings`, which holds them all; a bad value
# stops here with a one-line message. (The imports and checks are folded: click to show them.)

# %% tags=["hide-input"]
import numpy as np
import pandas as pd
import torch
from IPython.display import Markdown, display

from dpnb import audit, data, dpsgd, plots, prose
from dpnb.progress import progress
from dpnb.published import published_audits
from dpnb.results import Results

settings = audit.Settings.from_parameters(globals())
torch.manual_seed(settings.seed)
results = Results(chapter="audit", profile=settings.profile)
label = dpsgd.accountant_label(settings.accountant)

# %% [markdown]
# ## 1. What (ε, δ) promises an attacker
#
# Think of membership inference as a hypothesis test: from the trained model, decide between
# "example $x$ was in the training set" and "it was not". A test has a false-positive rate
# (FPR, it says "in" for an example that was out) and a true-positive rate (TPR). If the
# training algorithm is (ε, δ)-DP, *every* test, however clever, obeys
# {cite:p}`kairouz2015composition,balle2020hypothesis`
#
# $$\mathrm{TPR} \le \min\{1,\ e^{\varepsilon}\,\mathrm{FPR} + \delta,\ 1 - e^{-\varepsilon}(1 - \delta - \mathrm{FPR})\}.$$
#
# The attacks that matter are those that are right when they say "in" at a low FPR: a TPR of
# ten times its FPR, at an FPR of one in a thousand, picks out members ten times more often than
# it errs.
# `dpnb.audit.dp_tpr_bound` computes the bound:

# %%
fprs = [0.001, 0.01, 0.1]
promise = pd.DataFrame([dict(epsilon=e, **{f"TPR ≤ at FPR {f:g}": float(audit.dp_tpr_bound(f, epsilon=e,
                                                                                          delta=settings.delta))
                                          for f in fprs}) for e in (0.5, 1.0, 2.0, 4.0, 8.0)])
display(promise.style.format("{:.4f}").format({"epsilon": "{:g}"}).hide(axis="index"))
grid = np.geomspace(1e-4, 1, 200)
tradeoff = pd.concat([pd.DataFrame(dict(epsilon=e, fpr=grid, tpr=audit.dp_tpr_bound(grid, epsilon=e,
                                                                                  delta=settings.delta)))
                      for e in promise["epsilon"]])
fig = plots.dp_tradeoff(tradeoff, delta=settings.delta)
display(plots.caption(f"The largest TPR that (ε, δ)-DP allows a membership test at each FPR (δ = "
                      f"{settings.delta:g}), whatever the attack: the hypothesis-testing bound, no training involved."))
loose = float(audit.dp_tpr_bound(0.01, epsilon=8.0, delta=settings.delta))
display(Markdown(
    f"At ε = 1 (δ = {settings.delta:g}) an attacker at FPR 1% can reach a TPR of at most "
    f"{float(audit.dp_tpr_bound(0.01, epsilon=1.0, delta=settings.delta)):.2%}. At ε = 8 the bound at FPR 1% is "
    f"{loose:.2%}: on its own, ε = 8 promises almost nothing against a worst-case attacker. How close real "
    "attacks come to this worst case is what the rest of the chapter measures."))

# %% [markdown]
# ## 2. Membership inference
#
# **Setup.** A pool of MNIST training images (a seeded sample of `pool_size`); each model trains
# on a random half of it, so half the pool are members and half are not. The model is a
# linear softmax classifier on the raw pixels (values in [0, 1]), trained from zero weights for
# `mia_epochs` epochs: with few examples and no regularisation it overfits enough to be
# attacked, and it trains in well under a second, so that an attack with reference models fits
# a CPU. Three training settings: plain minibatch SGD, and DP-SGD at each ε of `mia_epsilons`
# (clipping norm C = `max_grad_norm`, one σ calibrated for all models of a setting).
#
# **Attacks.** The *loss threshold* of Yeom et al. {cite:p}`yeom2018privacy` calls an example a
# member when the model's loss on it is low. The *likelihood-ratio attack* (LiRA) of Carlini
# et al. {cite:p}`carlini2022membership` calibrates per example: `reference_models` models are
# trained the same way on other random halves of the pool (in complementary pairs, so every
# example is in exactly half of them); for each example it fits one Gaussian to the reference
# models' logit-scaled confidence $\phi = \log p_y - \log(1 - p_y)$ when the example was in,
# another when it was out, and scores the target model by the likelihood ratio (one variance per
# side, pooled over examples, as Carlini et al. advise with few reference models). LiRA asks
# whether this example looks more like a member *than it usually does*, which the loss alone
# cannot tell: some examples are easy whether or not they are trained on.
#
# `targets` models of each setting are attacked in turn (the other models serve as references),
# so every number below is a mean over that many targets with its standard deviation. The
# settings above were chosen from a few trial runs made while writing the chapter (pools of 2,000
# and 4,000 images, 100 and 300 epochs, 8 and 16 reference models), judged by the non-private
# attack's AUC; they use training images only, and their privacy cost is not in any ε here.

# %%
x_all, y_all = data.mnist_tensors("mnist", split="train", normalize=False).tensors
x_test, y_test = data.mnist_tensors("mnist", split="test", normalize=False).tensors
x_all, x_test = x_all.reshape(len(x_all), -1), x_test.reshape(len(x_test), -1)
pool = data.seeded_indices(len(y_all), settings.pool_size, seed=settings.seed)
print(f"pool of {len(pool)} training images; {len(y_test)} test images for the models' accuracy")

# %%
mia_rows, mia_curves = [], []
for eps in progress([None, *settings.mia_epsilons], desc="settings"):
    rows, curves = audit.membership_inference(x_all[pool], y_all[pool], x_test, y_test, settings=settings,
                                              epsilon=eps, progress=False)
    name = "non-private" if eps is None else f"DP-SGD, ε = {rows[0]['epsilon']:.2f}"
    mia_rows += [dict(r, setting=name) for r in rows]
    mia_curves += [dict(c, setting=name) for c in curves]
mia = pd.DataFrame(mia_rows)
mia_roc = pd.DataFrame(mia_curves)

# %%
summary = (mia.groupby(["setting", "attack"], sort=False)
           .agg(epsilon=("epsilon", "first"), targets=("target", "size"), auc=("auc", "mean"), auc_std=("auc", "std"),
                tpr_at_0_1=("tpr_at_0_1", "mean"), tpr_at_0_1_std=("tpr_at_0_1", "std"),
                tpr_at_1=("tpr_at_1", "mean"), tpr_at_1_std=("tpr_at_1", "std"),
                test_accuracy=("test_accuracy", "mean"))
           .reset_index())
for f, col in ((0.001, "bound_at_0_1"), (0.01, "bound_at_1")):
    summary[col] = [float(audit.dp_tpr_bound(f, epsilon=e, delta=settings.delta)) if pd.notna(e) else np.nan
                    for e in summary["epsilon"]]
for r in summary.itertuples():
    dp = pd.notna(r.epsilon)
    for metric, value, std in (("attack_auc", r.auc, r.auc_std), ("tpr_at_fpr_0.001", r.tpr_at_0_1, r.tpr_at_0_1_std),
                               ("tpr_at_fpr_0.01", r.tpr_at_1, r.tpr_at_1_std)):
        results.add(experiment=f"membership inference: {r.attack}", dataset=f"MNIST pool {settings.pool_size}",
                    model="linear", dp=dp, epsilon=r.epsilon if dp else None, delta=settings.delta if dp else None,
                    accountant=label if dp else "", metric=metric, value=value, seconds=float("nan"),
                    seeds=r.targets, std=std)


pm = prose.mean_std  # "mean ± std", just the mean for a single run


display(pd.DataFrame({
    "setting": summary["setting"], "attack": summary["attack"],
    "AUC": [pm(a, b, ".3f") for a, b in zip(summary["auc"], summary["auc_std"])],
    "TPR at FPR 0.1%": [pm(a, b, ".2%") for a, b in zip(summary["tpr_at_0_1"], summary["tpr_at_0_1_std"])],
    "TPR at FPR 1%": [pm(a, b, ".2%") for a, b in zip(summary["tpr_at_1"], summary["tpr_at_1_std"])],
    "DP bound at FPR 1%": summary["bound_at_1"].map(lambda v: "" if pd.isna(v) else f"{v:.2%}"),
    "test accuracy": summary["test_accuracy"].map("{:.1%}".format)}).style.hide(axis="index"))

# %%
grid = np.geomspace(1e-3, 1, 200)
bounds = pd.concat([pd.DataFrame(dict(setting=name, fpr=grid, tpr=audit.dp_tpr_bound(grid, epsilon=e,
                                                                                    delta=settings.delta)))
                    for name, e in mia.groupby("setting", sort=False)["epsilon"].first().items() if pd.notna(e)])
fig = plots.membership_roc(mia_roc, bounds=bounds, delta=settings.delta)
plots.caption(f"ROC curves of the loss-threshold attack and LiRA ({settings.reference_models} reference models) "
              f"against {settings.targets} target models per setting (one line each), on log-log axes; dashed: the "
              f"largest TPR that (ε, δ)-DP allows (δ = {settings.delta:g}, {label}); dotted: guessing. "
              f"{settings.pool_size // 2} members and as many non-members per target, so an FPR below "
              f"{2 / settings.pool_size:.0e} cannot be measured.")

# %%
dp_points = mia_roc[mia_roc["epsilon"].notna()]
point_bound = np.array([float(audit.dp_tpr_bound(f, epsilon=e, delta=settings.delta))
                        for f, e in zip(dp_points["fpr"], dp_points["epsilon"])])
above = dp_points["tpr"].to_numpy() > point_bound + 1e-12
above_text = ("No measured ROC point of a DP model lies above its bound." if not above.any() else
              f"{int(above.sum())} of {len(above)} measured ROC points of DP models lie above their bound: an "
              "estimated TPR carries sampling error, so a few may; many would point to a bug.")
np_lira = summary[(summary["setting"] == "non-private") & (summary["attack"] == "LiRA")].iloc[0]
np_loss = summary[(summary["setting"] == "non-private") & (summary["attack"] == "loss threshold")].iloc[0]
dp_lira = summary[(summary["setting"] != "non-private") & (summary["attack"] == "LiRA")]
targets_text = f"mean of {settings.targets} targets" if settings.targets > 1 else "one target"
lira_wins = np_lira["tpr_at_0_1"] > np_loss["tpr_at_0_1"]
display(Markdown(
    f"Without privacy, LiRA reaches an AUC of **{pm(np_lira['auc'], np_lira['auc_std'], '.3f')}** ({targets_text}) "
    f"and a TPR of **{np_lira['tpr_at_0_1']:.2%}** at FPR 0.1%, against {np_loss['auc']:.3f} and "
    f"{np_loss['tpr_at_0_1']:.2%} for the loss threshold"
    + (": calibrating per example is what makes the attack work at low FPR." if lira_wins else
       f": with {settings.reference_models} reference models LiRA does not beat the loss threshold at low FPR here.")
    + " With DP-SGD: " + "; ".join(
        f"at ε = {r.epsilon:.2f}, AUC {r.auc:.3f} and TPR {r.tpr_at_1:.2%} at FPR 1% (the bound allows "
        f"{r.bound_at_1:.2%}), test accuracy {r.test_accuracy:.1%}" for r in dp_lira.itertuples())
    + f" (non-private: {np_lira['test_accuracy']:.1%}). " + above_text))

# %% [markdown]
# ## 3. Auditing in one training run
#
# A membership attack on one example says little about ε: its TPR and FPR are estimated from a
# few thousand examples, and the examples are not the worst case. Auditing asks for a *bound*:
# a number $\hat\varepsilon$ such that, with confidence 0.95, the algorithm is not
# $(\varepsilon', \delta)$-DP for any $\varepsilon' < \hat\varepsilon$. The classic way trains
# hundreds of models with and without one planted example {cite:p}`nasr2021adversary`.
# Steinke, Nasr & Jagielski {cite:p}`steinke2023auditing` need a single run:
#
# 1. take $m$ **canaries** and include each in the training set independently with probability 1/2;
# 2. train once, then give each canary a score (how much the model "remembers" it);
# 3. guess "in" for the $k$ highest scores and "out" for the $k$ lowest, $r = 2k$ guesses in all,
#    $v$ of them right.
#
# Under (ε, δ)-DP no guesser can be right much more often than randomised response at ε, which
# is right with probability $e^\varepsilon/(1+e^\varepsilon)$; with $W \sim \mathrm{Bin}(r,
# e^\varepsilon/(1+e^\varepsilon))$ the chance of $v$ or more right guesses is at most
# $P[W \ge v] + 2m\delta \max_{1 \le i \le v} \tfrac1i P[v - i \le W < v]$ (their Appendix D).
# The audit reports the largest ε that this p-value rejects at level 0.05 (`dpnb.audit.epsilon_lower_bound`,
# which agrees with ML Privacy Meter's `get_eps_audit` {cite:p}`privacymeter` in the tests). We try
# about ten values of $k$ and keep the best, paying for the choice with a Bonferroni correction
# (each test at level 0.05/10), so the reported bound keeps its confidence of 0.95.
#
# **Two kinds of canary.**
# - *Gradient canaries* (white box: the auditor sees the model's weights and may insert
#   gradients): each is a gradient that is zero except at one weight of the linear model (a
#   "Dirac" canary), of norm `dirac_norm` × C before clipping, so that clipping cuts it to C. Its
#   weight sits on a pixel of the image's one-pixel frame, where the centred MNIST digits almost
#   never reach, so real gradients barely disturb it. Its score is how far that weight moved.
# - *Input canaries* (black box: the auditor only queries the model): images that light
#   `canary_pixels` random pixels of the two-pixel frame, each with a random label. The model can
#   learn such a label only by memorising the image; the score is the model's logit-scaled
#   confidence in it.
#
# **Runs.** Each audited run trains the linear model on `audit_train_size` MNIST training
# images plus the included canaries, for `audit_epochs` epochs, with DP-SGD at each ε of
# `audit_epsilons`. Left-out canaries stay as empty slots, so the sampling rate and the divisor
# do not depend on which canaries were drawn. Then the same runs **broken**, while still
# claiming the ε of the correct run: `no-noise` skips the Gaussian noise, `no-clipping` skips the
# clipping. Every setting runs with each seed in `seeds` (its own canaries, inclusions and
# batches). The canary designs (frame widths, lit pixels, epochs) were chosen from trial runs
# made while writing the chapter, judged by the bound of the noise-free run, with other draws of
# which canaries were included than the ones below.

# %%
audit_rows = data.seeded_indices(len(y_all), settings.audit_train_size, seed=settings.seed + 1)
audits, plan = audit.canary_audits(x_all[audit_rows], y_all[audit_rows], settings=settings)
rate = plan.sample_rate
print(f"{len(audits)} runs of {plan.steps} steps at sampling rate {rate:.4f}; "
      f"{audits['seconds'].sum():.0f} s of training in all")

# %%
table = (audits.groupby(["canary", "run", "epsilon"], sort=False)
         .agg(noise_multiplier=("noise_multiplier", "first"), seeds=("seed", "size"),
              lower_bound=("epsilon_lower_bound", "mean"), std=("epsilon_lower_bound", "std"),
              max_lower_bound=("epsilon_lower_bound", "max"), caught=("caught", "sum"))
         .reset_index())
for r in table.itertuples():  # a broken run is not DP: its row carries no epsilon, its claim is in the model column
    ok = r.run == "correct"
    results.add(experiment="one-run audit",
                dataset=f"MNIST {settings.audit_train_size} + {settings.canaries} {r.canary} canaries",
                model="linear, correct DP-SGD" if ok else f"linear, {r.run} (claims ε = {r.epsilon:.2f})", dp=ok,
                epsilon=r.epsilon if ok else None, delta=settings.delta if ok else None, accountant=label if ok else "",
                metric="epsilon_lower_bound", value=r.lower_bound, seconds=float("nan"), seeds=r.seeds, std=r.std)
display(pd.DataFrame({
    "canaries": table["canary"], "run": table["run"], "claimed ε": table["epsilon"].map("{:.2f}".format),
    "σ": table["noise_multiplier"].map("{:.3f}".format),
    "lower bound on ε": [pm(a, b, ".3f") for a, b in zip(table["lower_bound"], table["std"])],
    "caught": [f"{c} of {n}" for c, n in zip(table["caught"], table["seeds"])]}).style.hide(axis="index"))

# %%
half = np.arange(settings.canaries) < settings.canaries // 2  # a perfect guesser: every "in" scores above every "out"
perfect = audit.one_run_audit(half.astype(float), half, delta=settings.delta,
                              confidence=settings.confidence).epsilon_lower_bound
fig = plots.audit_bounds(audits, delta=settings.delta, accountant=settings.accountant.upper(),
                         canaries=settings.canaries, ceiling=perfect)
plots.caption(f"One-run audit: the 95% lower bound on ε against the ε each run claims (δ = {settings.delta:g}, "
              f"{label}), mean ± standard deviation over {len(settings.seeds)} seeds, {settings.canaries} canaries. "
              "A point above the grey line is a run caught claiming less privacy loss than it has; the dotted line is "
              "the most that these canaries can prove.")

# %%
correct = audits[audits["run"] == "correct"]
broken = audits[audits["run"] != "correct"]
over = correct[correct["caught"]]
best_correct = correct.loc[correct["epsilon_lower_bound"].idxmax()]
white_nonoise = audits[(audits["canary"] == "gradient") & (audits["bug"] == "no-noise")]


def caught_at(d: pd.DataFrame) -> str:
    """'ε = 1 (3 of 3 seeds), ...' for the claimed ε at which a broken run was caught."""
    hits = d.groupby(d["epsilon"].round(2))["caught"].agg(["sum", "size"])
    return ", ".join(f"ε = {e:g} ({h} of {n} seeds)" for e, (h, n) in hits.iterrows() if h) or "at no ε tried"


by_kind = correct.groupby("canary")["epsilon_lower_bound"].mean()
tighter = by_kind.idxmax()
text = (
    f"Correct runs: the largest lower bound over {len(correct)} correct runs is "
    f"**{best_correct['epsilon_lower_bound']:.2f}**, for a run that claims ε = {best_correct['epsilon']:.2f} "
    f"({best_correct['canary']} canaries); {len(over)} of them exceed their claim"
    + (" (at 95% confidence, about one run in twenty may)." if len(over) else ".")
    + f" On average over the correct runs, {tighter} canaries give the larger bound ("
    + ", ".join(f"{k}: {v:.3f}" for k, v in by_kind.items()) + ").")
if len(white_nonoise):
    text += (f" Broken runs: with the noise switched off, gradient canaries give a lower bound of "
             f"**{pm(white_nonoise['epsilon_lower_bound'].mean(), white_nonoise['epsilon_lower_bound'].std(), '.2f')}"
             "**, whatever ε the run claims.")
if len(broken):
    caught = broken.groupby(["canary", "bug"], sort=False).apply(caught_at, include_groups=False)
    text += (" Where each bug is caught (lower bound above the claimed ε): "
             + "; ".join(f"{kind} canaries, {bug}: {where}" for (kind, bug), where in caught.items()) + ".")
text += (f" With {settings.canaries} canaries even a perfect guesser cannot prove more than ε = {perfect:.2f}: a "
         "broken run that claims more than that cannot be caught this way, however badly it leaks.")
display(Markdown(text))
correct_text = ("correct runs stay at or below their claimed ε" if over.empty
                else f"{len(over)} of {len(correct)} correct runs exceed their claimed ε")
bug_text = ""
if len(white_nonoise):
    runs_text = f"mean of {len(white_nonoise)} runs" if len(white_nonoise) > 1 else "one run"
    bug_text = ("with the noise switched off, the book's DP-SGD is caught by gradient canaries: a 95% lower bound of "
                f"**{white_nonoise['epsilon_lower_bound'].mean():.2f}** on ε ({runs_text}); ")
prose.headline("audit", f"{bug_text}{correct_text} (largest bound **{best_correct['epsilon_lower_bound']:.2f}** at a "
               f"claimed ε = {best_correct['epsilon']:.2f}; δ = {settings.delta:g}, {label}), and LiRA's TPR at "
               f"FPR 0.1% is {np_lira['tpr_at_0_1']:.1%} without privacy and at most {dp_lira['tpr_at_0_1'].max():.1%} "
               "with it.", display=False)

# %% [markdown]
# **Reading the gap.** Where the lower bound of a correct run sits far below its claimed ε, part
# of the gap is the audit's: one run and $m$ canaries can only prove so much (the dotted line),
# and with Poisson sampling each canary joins only a fraction of the steps. Part may be real: ε
# is a worst case over all datasets and all outputs, and a given run can be far from it; an audit
# cannot tell these two apart. Gradient canaries are built to be worst cases (each adds exactly C,
# on a coordinate that little else touches), while an input canary's influence is blurred by the
# other examples and by the canaries that share its pixels: that is why white-box canaries are
# expected to give the larger bounds (the measured means are above).
#
# ## 4. What an audit can and cannot prove
#
# - A lower bound above the claimed ε is a **proof of a bug** (at the stated confidence): either
#   the implementation or the accounting is wrong. That is how the broken runs above are caught.
# - A lower bound below the claimed ε proves **nothing** about correctness: the audit may simply be
#   too weak. A bug that leaks less than the audit can detect, or only on other datasets, passes.
#   No run that claims more than a perfect guesser's bound (the dotted line) can be caught by
#   these canaries, whatever it leaks: more canaries raise that ceiling.
# - The audit tests the **algorithm that ran**, including its sampling: the canaries join the
#   Poisson batches like any example. An audit of a different pipeline (shuffled batches, say)
#   audits that pipeline, not the accountant's assumption.
# - Its choices are part of the result: the number of guesses is chosen after the run, which is
#   why the bound pays a Bonferroni factor for it; the canary design was fixed before these runs.
#
# How these compare with the one-run audits ML Privacy Meter publishes for a CIFAR-10 CNN
# {cite:p}`privacymeter` (their ε, accountant and sampling as stated there; ours are per run here,
# means over seeds):

# %%
ours = table[table["run"].isin(["correct", "bug: no-noise"])].drop_duplicates(["canary", "run", "epsilon"])
ours = ours[(ours["run"] == "correct") | ~ours.duplicated(["canary", "run"])].assign(
    source="this book", cite="", model="MNIST linear", delta=settings.delta, dp=lambda d: d["run"] == "correct",
    canaries=lambda d: d["canary"] + " (" + d["run"] + ")",
    accountant=lambda d: d["run"].map(lambda r: label if r == "correct" else ""),
    epsilon=lambda d: d["epsilon"].where(d["run"] == "correct"))
comparison = pd.concat([published_audits(), ours.rename(columns={"lower_bound": "epsilon_lower_bound"})])
display(comparison[["source", "model", "canaries", "dp", "epsilon", "delta", "accountant", "epsilon_lower_bound"]]
        .style.format({"epsilon": "{:.2f}", "delta": "{:g}", "epsilon_lower_bound": "{:.3f}"}, na_rep="")
        .hide(axis="index"))

# %%
path = results.save(membership=mia, membership_roc=mia_roc, canaries=audits)
print(f"results written to {path.name} (and {path.stem}_membership.csv, {path.stem}_canaries.csv)")
