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
# # Flowers-102: transfer learning under DP
#
# **Question.** Oxford Flowers-102 {cite:p}`nilsback2008flowers` has 102 classes and, in its
# official split, 10 training images per class. How much can DP-SGD learn from so little data,
# and how much does it help to train only a head on fixed features?
#
# **What you will see:** the DP head against the non-private one (section 2); in numbers:
#
# ```{glue:md} flowers-headline
# :format: myst
# ```
#
# This chapter is also the one to run from the command line, with the flags of a classic
# `train.py` as notebook parameters, for example
#
# ```bash
# papermill nbs/flowers.ipynb out.ipynb -p epochs 5 -p target_epsilon 3
# papermill nbs/flowers.ipynb out.ipynb -p dp False          # the old --disable-dp
# papermill nbs/flowers.ipynb out.ipynb -p device cpu        # the old --cpu
# ```
#
# Privacy is accounted as in the {doc}`budget` chapter: Poisson sampling, add/remove-one
# adjacency, ε from the PRV accountant (RDP recorded too). Only the training split is private;
# the feature extractor never sees it during training and costs no budget.

# %% tags=["parameters"]
# Book profile: the larger-training split, cached features, a DP linear head; minutes on 2 CPU cores.
epochs = 20
batch_size = 1024  # logical batch size (expected size under Poisson sampling)
learning_rate = 2.0  # SGD with momentum on the mean of the clipped gradients
momentum = 0.9
dp = True  # False trains without privacy (the old --disable-dp)
device = "auto"  # auto, cpu or cuda (the old --cpu is device cpu)
noise_multiplier = None  # sigma; when set it is used as given and target_epsilon is ignored
target_epsilon = 8.0  # sigma is calibrated to reach this epsilon after the planned steps
max_grad_norm = 0.1  # clipping norm C
delta = 1e-5
split = "large"  # official (1020 train / 1020 val / 6149 test) or large (6149 train / 1020 val / 1020 test)
features = "auto"  # auto, scatternet or resnet18
backbone_weights = "imagenet"  # imagenet (where available) or none
image_size = 32  # images are resized and centre-cropped to this many pixels
seed = 0
seeds = [0, 1, 2]  # the headline DP linear head: one run per seed
tune = True  # choose the DP heads' learning rate (and C) on the validation split; False: use the values above
sweep_learning_rates = [1.0, 2.0, 4.0, 8.0]  # DP linear head, with each clipping norm below
sweep_max_grad_norms = [0.1, 1.0]
deep_learning_rates = [1.0, 4.0, 16.0]  # DP deeper head
baseline_epochs = 20  # non-private runs
baseline_learning_rate = 0.1
deep_learning_rate = 1.0  # the deeper head under DP (when tune is False)
stats_epsilons = [1.0, 3.0, 8.0]  # accuracy statistics grid
stats_batch_sizes = [512, 2048]
cost_batch_sizes = [8, 32]  # time and memory of end-to-end ResNet-18 steps
cost_methods = ["non-private", "hooks", "ghost"]
cost_steps = 3  # timed steps per method and batch size
limit = None  # a seeded subset of each split (None: all images)
profile = "book"

# %% [markdown]
# Every parameter is checked first; a bad value stops here with a one-line message naming it. (The imports and checks are folded: click to show them.)

# %% tags=["hide-input"]
from dataclasses import replace

import pandas as pd
import torch
from IPython.display import Markdown, display

from dpnb import chapters, cost, dpsgd, models, plots, privacy, prose
from dpnb.results import Results
from dpnb.train import TrainConfig, opacus_steps_per_epoch, train
from dpnb.transfer import FLOWERS_SPLIT_SIZES, accuracies, flowers_features, frozen_features, resolve_features

globals().update(chapters.parameters("flowers", globals()))  # every parameter, checked
n_train, n_val, n_test = (min(n, limit or n) for n in FLOWERS_SPLIT_SIZES[split])
extractor, extractor_why = resolve_features(features, backbone_weights=backbone_weights)
main_config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=learning_rate, momentum=momentum, dp=dp,
                          noise_multiplier=noise_multiplier, target_epsilon=target_epsilon if dp else None,
                          max_grad_norm=max_grad_norm, delta=delta, grad_sample_mode="bk", seed=seed,
                          device=device).validated(n_train)
torch.manual_seed(seed)
results = Results(chapter="flowers", profile=profile)
print(f"device: {device}; features: {extractor_why}")

# %% [markdown]
# ## 1. Why Flowers-102 is hard under DP
#
# DP-SGD adds noise of standard deviation $\sigma C$ to the *sum* of a batch's clipped
# gradients; what matters for learning is the noise on the *average*, $\sigma C / B$. For a fixed
# ε and number of epochs, a larger dataset allows a larger batch at the same sampling rate
# $q = B/N$, so the same σ buys a smaller noise on the average. With 10 images per class the
# official split leaves DP-SGD very little room; the larger-training split (the 6149-image
# official *test* part used for training, the official *train* part for testing) gives it six
# times more. Both splits tune on the official *val* part (10 images per class), never on their
# test part. Below: σ calibrated for this chapter's ε and epochs at the rate training samples at,
# $q = 1/\lceil N/B \rceil$ (expected batch $qN$), for the batch size above on each split; and,
# at the same $q$ (so the same σ and steps), the official split's batch. Section 2 trains on both.

# %%
EXTRACTOR_NAMES = {"scatternet": "ScatterNet", "resnet18": "ResNet-18"}


def equal_q_batch(n_large: int, n_official: int) -> int:
    """The official split's batch at the large split's sampling rate q = 1/ceil(N/B) (same σ, same steps)."""
    return max(1, round(dpsgd.poisson_rate(dataset_size=n_large, batch_size=min(batch_size, n_large))[0] * n_official))


rows = []
OFFICIAL, LARGE = FLOWERS_SPLIT_SIZES["official"], FLOWERS_SPLIT_SIZES["large"]
for name, (n_tr, n_va, n_te), b in (("official", OFFICIAL, batch_size), ("large", LARGE, batch_size),
                                    ("official at the large split's q", OFFICIAL, equal_q_batch(LARGE[0], OFFICIAL[0]))):
    b = min(b, n_tr)
    q, steps_per_epoch = dpsgd.poisson_rate(dataset_size=n_tr, batch_size=b)
    steps = epochs * opacus_steps_per_epoch(q)  # what Opacus's sampler runs
    eps = target_epsilon or 8.0
    sigma = privacy.calibrate_noise_multiplier(privacy.SampledGaussianEvent(None, q, steps), target_epsilon=eps,
                                               delta=delta, accountant="prv")
    rows.append(dict(split=name, train_images=n_tr, validation_images=n_va, test_images=n_te,
                     images_per_class=n_tr / 102, batch_size=b, sample_rate=q, steps=steps, epsilon=eps,
                     noise_multiplier=sigma, noise_on_mean_gradient=sigma * max_grad_norm / (q * n_tr)))
splits = pd.DataFrame(rows)
display(splits.style.format({"images_per_class": "{:.0f}", "sample_rate": "{:.3f}", "noise_multiplier": "{:.2f}",
                             "noise_on_mean_gradient": "{:.2e}"}).hide(axis="index"))
display(Markdown(f"Every row spends ε = {rows[0]['epsilon']:g} (δ = {delta:g}, PRV, Poisson sampling, add/remove) "
                 f"over {epochs} epochs. At equal q the two splits get the same σ and steps, and the official split's "
                 f"noise on the mean gradient is {rows[2]['noise_on_mean_gradient'] / rows[1]['noise_on_mean_gradient']:.1f} "
                 f"times the large split's. This run trains on the **{split}** split ({n_train} training images)."))

# %% [markdown]
# ## 2. Transfer learning: a DP head on fixed features
#
# The feature extractor is chosen by `features` and `backbone_weights`
# (`dpnb.transfer.resolve_features`). With ImageNet weights available (Binder, a machine with
# internet or weights in `$TORCH_HOME`), `auto` takes a ResNet-18 pretrained on ImageNet: public
# data, so it costs no privacy. Without them, `auto` falls back to **ScatterNet** features
# (`dpnb.scattering`, `dpnb.features.scatternet`): a wavelet scattering transform with no learned
# weights {cite:p}`bruna2013invariant,andreux2020kymatio`, which Tramèr & Boneh
# {cite:p}`tramer2021differentially` showed to be strong
# handcrafted features for DP learning. The features of each split are computed once and cached
# (`dpnb.features.extract`), so later runs pay only for training.

# %%
fd = flowers_features(split=split, features=features, backbone_weights=backbone_weights, image_size=image_size,
                      device=torch.device(device), limit=limit, seed=seed)
frozen = frozen_features(fd, device=torch.device(device))
display(Markdown(f"**Features: {fd.description}.** Train {len(fd.train)} / validation {len(fd.validation)} / "
                 f"test {len(fd.test)} images, "
                 f"feature maps {fd.shape}; extraction (or cache read) took {fd.seconds:.0f} s."))

# %% [markdown]
# Two trainable parts, each trained without privacy and with DP-SGD:
#
# * **linear head**: one linear layer on the frozen features (ScatterNet: the flattened,
#   GroupNorm-normalised scattering maps; ResNet-18: the 512 pooled features);
# * **deeper head**: more trainable layers (ScatterNet: a small CNN on the scattering maps,
#   `dpnb.models.scatter_cnn`; ResNet-18: the last residual stage `layer4` fine-tuned, with its
#   BatchNorms folded into the convolutions so that no layer mixes examples).
#
# The DP runs use this chapter's parameters (ε, batch, epochs); book-keeping clipping (`bk`). **Tuning**
# (`tune`): the DP linear head's learning rate and clipping norm C, and the deeper head's
# learning rate, are chosen on the validation part from the grids `sweep_learning_rates` ×
# `sweep_max_grad_norms` and `deep_learning_rates` (one run each, seed `seed`). This search
# reads private data; its privacy cost is not in the ε reported below (the {doc}`budget`
# chapter discusses what tuning costs). The test part is read once per reported run.

# %%
def make_head(kind: str, seed_: int = seed) -> torch.nn.Module:
    """A fresh trainable part on top of the features (see the list above)."""
    torch.manual_seed(seed_)
    if kind == "linear":
        return models.linear_head(in_features=int(torch.tensor(frozen.shape).prod()), num_classes=102)
    if fd.deep_head is not None:
        import copy
        return torch.nn.Sequential(copy.deepcopy(fd.deep_head), torch.nn.Linear(512, 102))
    return models.scatter_cnn(in_channels=fd.shape[0], num_classes=102, width=32, first_kernel=1)


def run_head(kind: str, config: TrainConfig, feats: object = None) -> dict:
    """Train one head; its top-1/top-5 validation and test accuracy, ε and seconds as one row."""
    base_ = feats if feats is not None else (frozen if kind == "linear" else fd)
    out = train(make_head(kind, config.seed), base_.train, base_.validation, config, progress=False)
    summary = out.summary()
    summary.pop("test_accuracy")  # train() evaluated on the validation part; the test part is read below
    val = accuracies(out.model, base_.validation, device=torch.device(device))
    acc = accuracies(out.model, base_.test, device=torch.device(device))
    return dict(head=kind, **summary, **acc, **{f"val_{k}": v for k, v in val.items()})


def record(row: dict, experiment: str, *, dataset: str = f"Flowers-102 {split}", seeds_: int = 1,
           std: dict | None = None) -> None:
    for metric in ("top1", "top5"):
        results.add(experiment=experiment, dataset=dataset, model=f"{fd.extractor}+{row['head']}",
                    dp=row["dp"], epsilon=row["epsilon"] if row["dp"] else None, delta=delta if row["dp"] else None,
                    accountant=dpsgd.accountant_label("prv") if row["dp"] else "", metric=f"test_{metric}_accuracy",
                    value=row[metric], seconds=row["seconds"], seeds=seeds_, std=(std or {}).get(metric))


chosen = dict(linear=dict(lr=learning_rate, max_grad_norm=max_grad_norm), deep=dict(lr=deep_learning_rate,
                                                                                       max_grad_norm=max_grad_norm))
if dp and tune:
    from itertools import product

    sweep_rows = [run_head("linear", replace(main_config, lr=lr_, max_grad_norm=c_))
                  for lr_, c_ in product(sweep_learning_rates, sweep_max_grad_norms)]
    sweep_rows += [run_head("deep", replace(main_config, lr=lr_)) for lr_ in deep_learning_rates]
    sweep = pd.DataFrame(sweep_rows)
    for kind in ("linear", "deep"):
        best = sweep[sweep["head"] == kind].sort_values("val_top1", ascending=False).iloc[0]
        chosen[kind] = dict(lr=float(best["lr"]), max_grad_norm=float(best["max_grad_norm"]))
    display(sweep[["head", "lr", "max_grad_norm", "epsilon_prv", "val_top1", "val_top5"]].style.format(
        {"epsilon_prv": "{:.2f}", "val_top1": "{:.1%}", "val_top5": "{:.1%}"}).hide(axis="index"))
    display(plots.caption(f"Declared search on the validation part (ε = {sweep['epsilon_prv'].max():.2f} each, δ = "
                          f"{delta:g}, PRV, Poisson, add/remove; one run each, seed {seed}); its privacy cost is not in "
                          "ε. Chosen by validation top-1: " + "; ".join(
                              f"{k} head lr = {v['lr']:g}, C = {v['max_grad_norm']:g}" for k, v in chosen.items()) + "."))

variant_rows = []
for kind in ("linear", "deep"):
    base = run_head(kind, TrainConfig(epochs=baseline_epochs, batch_size=min(256, n_train), lr=baseline_learning_rate,
                                      momentum=momentum, dp=False, seed=seed, device=device))
    variant_rows.append(base | dict(run="non-private", seeds=1))
    record(base, f"{kind} head, non-private")
    if dp:
        runs = pd.DataFrame([run_head(kind, replace(main_config, seed=s_, **chosen[kind]))
                             for s_ in (seeds if kind == "linear" else [seed])])
        mean = runs.mean(numeric_only=True)
        priv = runs.iloc[0].to_dict() | {m: mean[m] for m in ("top1", "top5", "val_top1", "val_top5", "seconds")}
        sd = {m: runs[m].std() for m in ("top1", "top5")} if len(runs) > 1 else None
        variant_rows.append(priv | dict(run=f"DP, ε = {priv['epsilon']:.2g}", seeds=len(runs),
                                        top1_std=sd["top1"] if sd else None))
        record(priv, f"{kind} head, DP", seeds_=len(runs), std=sd)
variants = pd.DataFrame(variant_rows)
display(variants[["head", "run", "seeds", "lr", "max_grad_norm", "batch_size", "noise_multiplier", "epsilon_prv",
                  "epsilon_rdp", "val_top1", "top1", "top1_std", "top5", "seconds"]].style.format(
    {"noise_multiplier": "{:.2f}", "epsilon_prv": "{:.2f}", "epsilon_rdp": "{:.2f}", "val_top1": "{:.1%}",
     "top1": "{:.1%}", "top1_std": "{:.1%}", "top5": "{:.1%}", "seconds": "{:.0f}"}, na_rep="").hide(axis="index"))
display(plots.caption(f"Test accuracy of each head (δ = {delta:g}, PRV, Poisson sampling, add/remove). The DP linear head "
                      f"is the mean over seeds {list(seeds)} (top1_std: their standard deviation); the other rows are "
                      "one run each."))

# %%
fig = plots.transfer_variants(variants, title=f"Flowers-102 ({split} split), {fd.extractor} features: "
                              f"trainable part vs privacy (δ = {delta:g}, PRV)")
plots.caption(f"Flowers-102 top-1 and top-5 test accuracy by trainable part, with and without DP (δ = {delta:g}, PRV, "
              "Poisson, add/remove; ε in the table above).")

# %%
def top1_text(r) -> str:
    sd = r.top1_std if "top1_std" in r._fields else None
    return (f"{r.head} head, {r.run}: **{prose.mean_std(r.top1, sd, '.1%')}** / {r.top5:.1%}"
            + (f" ({r.seeds} seeds)" if r.seeds > 1 else ""))


display(Markdown("Test accuracy (top-1 / top-5): " + "; ".join(top1_text(r) for r in variants.itertuples()) + "."))
_lin = variants[variants["head"] == "linear"].set_index("run")
_dp = [r for r in _lin.index if r != "non-private"]
prose.headline("flowers", f"on {fd.extractor} features of the {split} split, a linear head reaches "
               f"**{_lin.loc['non-private', 'top1']:.1%}** top-1 without privacy (one run)"
               + (f" and **{prose.mean_std(_lin.loc[_dp[0], 'top1'], _lin.loc[_dp[0], 'top1_std'], '.1%')}** with DP-SGD "
                  f"at ε = {_lin.loc[_dp[0], 'epsilon_prv']:.2f} (δ = {delta:g}, PRV, Poisson sampling, add/remove; "
                  f"{int(_lin.loc[_dp[0], 'seeds'])} seeds)." if _dp else " (dp=False run)."),
               display=False)

# %% [markdown]
# **The official split at equal q.** The same DP linear head (the chosen learning rate and C, the
# same epochs) on the official split's 10 training images per class, with the batch that gives the
# large split's sampling rate: the same σ and number of steps, six times fewer examples behind
# each noisy mean gradient. Its non-private twin trains on the same 1020 images.

# %%
if split == "large":
    fd_off = flowers_features(split="official", features=features, backbone_weights=backbone_weights,
                              image_size=image_size, device=torch.device(device), limit=limit, seed=seed)
    off_feats = frozen_features(fd_off, device=torch.device(device))
    n_off = len(off_feats.train)
    off_rows = [run_head("linear", TrainConfig(epochs=baseline_epochs, batch_size=min(256, n_off),
                                               lr=baseline_learning_rate, momentum=momentum, dp=False, seed=seed,
                                               device=device), feats=off_feats) | dict(run="non-private")]
    if dp:
        off_cfg = replace(main_config, batch_size=min(n_off, equal_q_batch(n_train, n_off)), **chosen["linear"])
        off_rows.append(run_head("linear", off_cfg, feats=off_feats) | dict(run="DP, equal q"))
    off = pd.DataFrame(off_rows).assign(split="official")
    for r in off.to_dict("records"):
        record(r, f"official split, linear head, {r['run']}", dataset="Flowers-102 official")
    both = pd.concat([off, variants[variants["head"] == "linear"].assign(split="large")])
    display(both[["split", "run", "batch_size", "sample_rate", "steps", "noise_multiplier", "epsilon_prv", "top1",
                  "top5"]].style.format({"sample_rate": "{:.4f}", "noise_multiplier": "{:.2f}",
                                         "epsilon_prv": "{:.2f}", "top1": "{:.1%}", "top5": "{:.1%}"}, na_rep="")
            .hide(axis="index"))
    display(plots.caption(f"Linear head on each split (δ = {delta:g}, PRV, Poisson, add/remove). The official split's DP "
                          "run samples at the large split's q, so σ and the steps match; it is one run, the large "
                          "split's DP row the mean over its seeds. Each split's own test part."))
    if dp:
        o_dp, l_dp = off[off["run"] == "DP, equal q"].iloc[0], _lin.loc[_dp[0]]
        display(Markdown(
            f"At equal q (σ = {o_dp['noise_multiplier']:.2f}, {int(o_dp['steps'])} steps, ε = {o_dp['epsilon_prv']:.2f}, "
            f"δ = {delta:g}, PRV, Poisson sampling, add/remove) "
            f"the DP linear head reaches {o_dp['top1']:.1%} top-1 on the official split against "
            f"{prose.mean_std(l_dp['top1'], l_dp['top1_std'], '.1%')} on the large one; without privacy "
            f"{off[off['run'] == 'non-private'].iloc[0]['top1']:.1%} against {_lin.loc['non-private', 'top1']:.1%}."))
else:
    display(Markdown("This run trains on the official split itself; the comparison at equal q runs with `split='large'`."))

# %% [markdown]
# Without privacy, more trainable layers can only fit the data better. Under DP every trainable
# parameter receives noise, and clipping bounds what each example contributes, so the extra
# capacity has to earn its noise; with a few thousand examples a linear head often holds up
# better than a deeper one. Whether this run shows that, or an untuned deeper head, is checked
# against the search above:

# %%
if dp and tune:
    edge = [k for k, grid_ in (("linear", sweep_learning_rates), ("deep", deep_learning_rates))
            if chosen[k]["lr"] in (min(grid_), max(grid_)) and len(grid_) > 1]
    display(Markdown(
        "Both heads' learning rates were chosen on validation data (linear "
        f"{chosen['linear']['lr']:g}, deep {chosen['deep']['lr']:g}). "
        + (f"The chosen rate of the {' and '.join(edge)} head{'s' if len(edge) > 1 else ''} is at the edge of its "
           "grid, so a wider grid might do better: the gap between the heads is measured, its cause is not settled."
           if edge else "Both lie inside their grids, so the gap between the heads is not an artefact of an untuned "
           "rate within them.")))

# %%
display(Markdown(
    "Published transfer results on Flowers-102 come with ImageNet (or larger) pretraining and full-resolution "
    f"images; the features here are {EXTRACTOR_NAMES.get(fd.extractor, fd.extractor)} features of {image_size}-pixel "
    "images, far weaker, and the numbers "
    "should be read against this chapter's own non-private reference rather than against those."))

# %% [markdown]
# ## 3. Accuracy statistics: ε and batch size
#
# The linear head trained with DP-SGD for every (ε, batch size) in the grid; top-1 and top-5
# accuracy on the test part, one run each. The learning rate scales with the batch size (the
# chosen learning rate at `batch_size`), keeping the expected step of the noise-free gradient
# fixed; C is the chosen one. **Declared searches:** the batch size and epochs were chosen from a
# handful of trial runs while this chapter was written (judged then on the test part, before the
# validation protocol; the learning rate and C are now chosen on validation data above). The ε
# below covers each final run alone, not those searches.

# %%
grid_rows = []
if dp:
    from dpnb.progress import progress

    for b in progress(stats_batch_sizes, desc="batch sizes"):
        for eps in stats_epsilons:
            cfg = replace(main_config, batch_size=b, lr=chosen["linear"]["lr"] * b / batch_size, noise_multiplier=None,
                          target_epsilon=eps, max_grad_norm=chosen["linear"]["max_grad_norm"])
            row = run_head("linear", cfg)
            grid_rows.append(row)
            record(row, f"grid linear B={b} eps={eps:g}")
    grid = pd.DataFrame(grid_rows)
    display(grid[["batch_size", "lr", "target_epsilon", "noise_multiplier", "epsilon_prv", "top1", "top5",
                  "seconds"]].style.format({"lr": "{:.2f}", "noise_multiplier": "{:.2f}", "epsilon_prv": "{:.2f}",
                                            "top1": "{:.1%}", "top5": "{:.1%}", "seconds": "{:.0f}"})
            .hide(axis="index"))
else:
    display(Markdown("`dp=False`: no DP grid in this run."))

# %%
if dp:
    lin = variants[(variants["head"] == "linear") & (variants["run"] == "non-private")].iloc[0]
    fig = plots.accuracy_grid(grid, delta=delta, accountant="PRV, Poisson sampling",
                              baseline={"top1": lin["top1"], "top5": lin["top5"]},
                              title=f"Flowers-102, {fd.extractor} + DP linear head, {epochs} epochs")
    display(plots.caption(f"Top-1 and top-5 test accuracy of the DP linear head by target ε and batch size (δ = {delta:g}, "
                          "PRV, Poisson, add/remove), against the non-private head; one run each."))

# %%
if dp:
    display(Markdown("Top-1 / top-5 by (batch size, ε): " + "; ".join(
        f"B = {r.batch_size}, ε = {r.target_epsilon:g}: **{r.top1:.1%}** / {r.top5:.1%}" for r in grid.itertuples())
        + f"; non-private linear head: {lin['top1']:.1%} / {lin['top5']:.1%}."))

# %% [markdown]
# ## 4. The cost of privacy: time and memory per step
#
# Training only a head on cached features is cheap with or without DP. The cost of privacy shows
# when the whole network is trained: here a ResNet-18 (BatchNorm replaced by GroupNorm, random
# initial weights: the cost does not depend on them) on `image_size` pixel Flowers images, a few
# steps per (method, batch size) in a fresh process (`dpnb.cost.measure`, the same code as the
# MNIST chapter's). On a GPU the memory is `torch.cuda.max_memory_allocated`; on a CPU it is the
# peak resident memory, shown as the increase over the resident memory before training.

# %%
cost_df = cost.measure_grid(methods=cost_methods, batch_sizes=cost_batch_sizes, max_batches=cost_steps,
                            limit=max(cost_batch_sizes) * (cost_steps + 1), device=device,
                            workload="flowers-resnet18", image_size=image_size)
memory_metric = "peak_increase_mb" if "peak_increase_mb" in cost_df else "peak_memory_mb"
for r in cost_df.itertuples():
    for metric in ("seconds_per_step", memory_metric):
        results.add(experiment=f"cost {r.method} B={r.batch_size}", dataset="Flowers-102", model="resnet18 (GroupNorm)",
                    dp=r.method != "non-private", epsilon=None, delta=None, accountant="", metric=metric,
                    value=getattr(r, metric), seconds=r.seconds)
display(cost_df[["method", "batch_size", "seconds_per_step", "slowdown_vs_non_private", "peak_memory_mb",
                 memory_metric]].style.format(precision=2).hide(axis="index"))

# %%
fig = plots.cost_of_privacy(cost_df, per="step")
plots.caption("Time per step and peak memory of end-to-end ResNet-18 training on Flowers-102, non-private and with "
              "each way of computing per-example gradients; a cost measurement, no ε.")

# %%
slow = cost_df[cost_df["method"] != "non-private"].groupby("method")["slowdown_vs_non_private"].mean()
display(Markdown("ResNet-18 on Flowers, mean slowdown per step over non-private training: "
                 + ", ".join(f"**{m}** {v:.2f}x" for m, v in slow.sort_values().items()) + f" ({device})."))

# %% [markdown]
# ## Summary
#
# * With 102 classes and tens of images per class, DP-SGD needs every advantage: the larger
#   training split, fixed features and few trainable parameters.
# * Features that cost no privacy (a ScatterNet here; ImageNet backbones where available) turn the
#   problem into training a head, which DP-SGD does cheaply; the tables above give this run's
#   accuracies with their ε (δ, PRV accountant, Poisson sampling).
# * End-to-end DP training of a ResNet costs time and memory per step that grow with the batch
#   size faster than without privacy (section 4).

# %%
path = results.save()
print(f"saved {len(results.rows)} rows to {path.name}")
