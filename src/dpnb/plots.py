"""Figures of the book: seaborn/matplotlib, labelled axes with units, ε and δ in titles.

Each function takes a tidy :class:`pandas.DataFrame` (the one the chapter also shows or
saves) and returns the :class:`matplotlib.figure.Figure`, so the code behind every figure is
one call away from the data behind it.

Example::

    >>> import pandas as pd
    >>> from dpnb import plots
    >>> df = pd.DataFrame({"epsilon": [0.5, 1.0], "delta": [1e-2, 1e-3], "noise_multiplier": [1.0, 1.0]})
    >>> fig = plots.gaussian_privacy_profile(df)
    >>> fig.axes[0].get_xlabel()
    'ε'
"""

from __future__ import annotations

from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

sns.set_theme(context="notebook", style="whitegrid")


def caption(text: str) -> Any:
    """A figure's caption, shown under it: what it shows, and at which ε and δ (Markdown).

    Figures still open are shown first, so that the caption follows its own figure even when a
    cell draws several (matplotlib's inline backend would otherwise show them all at the cell's end).

        >>> caption("ε against steps (δ = 1e-05)").data
        '*Figure.* ε against steps (δ = 1e-05)'
    """
    from IPython.display import Markdown

    if plt.get_fignums() and "inline" in plt.get_backend():  # in a notebook; elsewhere show() would warn
        plt.show()
    return Markdown(f"*Figure.* {text}")


def _log_ticks(ax: plt.Axes, values: object) -> None:
    """Label a log x-axis at the data's own values (e.g. 0.5, 1, 2, 3, 8), not at powers of ten."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    ticks = sorted({float(v) for v in values})  # type: ignore[attr-defined]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.xaxis.set_minor_locator(NullLocator())


def gaussian_privacy_profile(df: pd.DataFrame) -> Figure:
    """δ(ε) of one Gaussian mechanism (sensitivity 1) for several noise multipliers σ."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=df, x="epsilon", y="delta", hue="noise_multiplier", palette="viridis", ax=ax)
    ax.set(yscale="log", xlabel="ε", ylabel="δ(ε)  (log scale)",
           title="Privacy profile of one Gaussian mechanism, sensitivity 1")
    ax.legend(title="noise multiplier σ")
    fig.tight_layout()
    return fig


def rdp_curves(df: pd.DataFrame) -> Figure:
    """RDP ε(α) of one sampled-Gaussian step against the order α, one line per sampling rate."""
    fig, ax = plt.subplots(figsize=(7.5, 4))
    sns.lineplot(data=df, x="order", y="rdp", hue="sample_rate", style="order_type",
                 markers=True, dashes=False, palette="rocket", ax=ax, markersize=4)
    sigma = df["noise_multiplier"].iloc[0]
    ax.set(xscale="log", yscale="log", xlabel="Rényi order α (log scale)",
           ylabel="RDP ε(α) of one step (log scale)",
           title=f"Sampled Gaussian mechanism, σ = {sigma:g}")
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def conversion_curves(df: pd.DataFrame, *, title: str) -> Figure:
    """(ε, δ) obtained at each order α by two RDP→DP conversions, with the best order marked."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=df, x="order", y="epsilon", hue="conversion", ax=ax)
    for conv, g in df.groupby("conversion"):
        best = g.loc[g["epsilon"].idxmin()]
        ax.scatter([best["order"]], [best["epsilon"]], color="black", zorder=3, s=20)
        ax.annotate(f"ε = {best['epsilon']:.2f} at α = {best['order']:g}",
                    (best["order"], best["epsilon"]), textcoords="offset points",
                    xytext=(8, 8 if conv == "mironov" else -14), fontsize=8)
    ax.set(xscale="log", ylim=(0, df["epsilon"].min() * 3), xlabel="Rényi order α (log scale)",
           ylabel="ε at this order", title=title)
    fig.tight_layout()
    return fig


def epsilon_vs_epochs(df: pd.DataFrame, *, delta: float, accountant: str) -> Figure:
    """ε against epochs, one line per σ, one panel per sampling rate."""
    g = sns.relplot(data=df, x="epochs", y="epsilon", hue="noise_multiplier", col="sample_rate",
                    kind="line", palette="viridis", height=3.3, aspect=1.1,
                    facet_kws={"sharey": False})
    g.set_axis_labels("epochs", "ε")
    g.set_titles(col_template="q = {col_name}")
    g.legend.set_title("noise multiplier σ")
    g.figure.suptitle(f"Privacy spent by DP-SGD (δ = {delta:g}, {accountant})", y=1.03)
    return g.figure


def privacy_utility(df: pd.DataFrame, *, published: pd.DataFrame | None = None,
                    baseline: float | None = None, delta: float, accountant: str) -> Figure:
    """Test accuracy against ε (log scale), with published results and the non-private baseline."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x="epsilon", y="test_accuracy", marker="o", label="this book", ax=ax)
    if published is not None and len(published):
        sns.scatterplot(data=published, x="epsilon", y="test_accuracy", hue="source", style="source",
                        s=60, ax=ax)
    if baseline is not None:
        ax.axhline(baseline, color="grey", ls="--", lw=1, label=f"non-private ({baseline:.1%})")
    ax.set(xscale="log", xlabel="ε (log scale)", ylabel="test accuracy",
           title=f"MNIST: privacy vs utility (δ = {delta:g}, {accountant})")
    _log_ticks(ax, df["target_epsilon"] if "target_epsilon" in df else df["epsilon"].round(1))
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8, bbox_to_anchor=(1.02, 1), loc="upper left")
    fig.tight_layout()
    return fig


def sweep(df: pd.DataFrame, *, x: str, hue: str, epsilon: float, delta: float, xlabel: str,
          y: str = "test_accuracy") -> Figure:
    """Accuracy (column ``y``) against one hyper-parameter (log x), one line per value of another, at fixed ε."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=df, x=x, y=y, hue=hue, marker="o", palette="viridis", ax=ax)
    ax.set(xscale="log", xlabel=xlabel, ylabel=y.replace("_", " "),
           title=f"Effect of {xlabel.split(' (')[0]} at ε = {epsilon:g} (δ = {delta:g})")
    _log_ticks(ax, df[x])
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    fig.tight_layout()
    return fig


def cost_of_privacy(df: pd.DataFrame, *, per: str = "epoch", memory: str | None = None) -> Figure:
    """Seconds per epoch (or per step) and peak memory against batch size, one line per gradient method.

    ``memory``: the column to plot, ``peak_memory_mb`` (whole process) or ``peak_increase_mb`` (over the
    resident memory before training; the default when the table has it)."""
    mem = memory or ("peak_increase_mb" if "peak_increase_mb" in df else "peak_memory_mb")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    sns.lineplot(data=df, x="batch_size", y=f"seconds_per_{per}", hue="method", marker="o", ax=axes[0])
    sns.lineplot(data=df, x="batch_size", y=mem, hue="method", marker="o", ax=axes[1], legend=False)
    device = df["device"].iloc[0]
    axes[0].set(xscale="log", xlabel="batch size (log scale)", ylabel=f"seconds per {per}",
                title=f"Time per {per} ({device})")
    label = ("peak memory increase during training (MB)" if mem == "peak_increase_mb"
             else "peak memory (MB)")
    axes[1].set(xscale="log", xlabel="batch size (log scale)", ylabel=label,
                title=f"Memory ({df['memory_kind'].iloc[0]})")
    for ax in axes:
        _log_ticks(ax, df["batch_size"])
    # one legend for both panels, to their right: inside a panel it covered the lines of five methods
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].get_legend().remove()
    fig.tight_layout()
    fig.legend(handles, labels, title="method", loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    return fig


def training_curves(df: pd.DataFrame, *, title: str = "MNIST test accuracy during training") -> Figure:
    """Test accuracy against epoch, one line per run (``run`` column)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=df, x="epoch", y="test_accuracy", hue="run", marker="o", ax=ax)
    ax.set(xlabel="epoch", ylabel="test accuracy", title=title)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    fig.tight_layout()
    return fig


def transfer_variants(df: pd.DataFrame, *, title: str) -> Figure:
    """Top-1 and top-5 accuracy of each head (bars), DP vs non-private (hue); ε is in the ``run`` labels."""
    long = df.melt(id_vars=["head", "run"], value_vars=["top1", "top5"], var_name="metric", value_name="accuracy")
    g = sns.catplot(data=long, x="head", y="accuracy", hue="run", col="metric", kind="bar", height=3.6, aspect=1.1)
    g.set_axis_labels("trainable part", "test accuracy")
    for ax in g.axes.flat:
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    g.figure.suptitle(title, y=1.04)
    return g.figure


def accuracy_grid(df: pd.DataFrame, *, delta: float, accountant: str, baseline: dict[str, float] | None = None,
                  title: str) -> Figure:
    """Top-1 and top-5 test accuracy against ε (log x), one line per batch size; non-private dashed."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), sharey=False)
    for ax, metric in zip(axes, ("top1", "top5")):
        sns.lineplot(data=df, x="target_epsilon", y=metric, hue="batch_size", marker="o", palette="viridis",
                     ax=ax, legend=metric == "top1")
        if baseline:
            ax.axhline(baseline[metric], color="grey", ls="--", lw=1, label="non-private")
        ax.set(xscale="log", xlabel="ε (log scale)", ylabel=f"test {metric.replace('top', 'top-')} accuracy",
               title=f"{metric.replace('top', 'Top-')} (δ = {delta:g}, {accountant})")
        _log_ticks(ax, df["target_epsilon"])
        ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    axes[0].legend(title="batch size", fontsize=8)
    fig.suptitle(title, y=1.02)
    fig.tight_layout()
    return fig


def variants_bar(df: pd.DataFrame, *, x: str, title: str) -> Figure:
    """Test accuracy of each variant (one bar per value of ``x``), labelled with its value."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(df)), 4))
    sns.barplot(data=df, x=x, y="test_accuracy", color="tab:blue", ax=ax)
    for c in ax.containers:
        ax.bar_label(c, labels=[f"{v:.1%}" for v in c.datavalues], fontsize=8)
    ax.set(xlabel="", ylabel="test accuracy", title=title)
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.tick_params(axis="x", rotation=25)
    plt.setp(ax.get_xticklabels(), ha="right")
    fig.tight_layout()
    return fig


def cifar_overview(summary: pd.DataFrame, *, published: pd.DataFrame, delta: float) -> Figure:
    """Every CIFAR-10 variant's test accuracy (private and non-private twins), with published points."""
    df = summary.assign(run=summary["dp"].map({True: "DP-SGD", False: "non-private"}),
                        label=summary["section"].str.split(" ", n=1).str[0] + ". " + summary["variant"]
                        + summary["dataset"].str.contains("subset").map({True: " (subset)", False: ""}))
    pub = published.assign(run="published", label="pub. " + published["model"] + ", ε = "
                           + published["epsilon"].map("{:g}".format))
    both = pd.concat([df[["label", "run", "test_accuracy"]], pub[["label", "run", "test_accuracy"]]])
    fig, ax = plt.subplots(figsize=(8, 0.32 * both["label"].nunique() + 1.5))
    sns.barplot(data=both, y="label", x="test_accuracy", hue="run", orient="h", ax=ax,
                palette={"DP-SGD": "tab:blue", "non-private": "tab:grey", "published": "tab:orange"})
    ax.set(ylabel="", xlabel="test accuracy",
           title=f"CIFAR-10: every variant (DP runs at the chapter's ε, δ = {delta:g}, PRV)")
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def sample_grid(images: object, labels: object, *, per_class: int = 8, title: str) -> Figure:
    """Generated images in a grid: one row per class (label on the left), ``per_class`` samples each."""
    import torch

    x, y = torch.as_tensor(images), torch.as_tensor(labels)
    classes = sorted(set(y.tolist()))
    fig, axes = plt.subplots(len(classes), per_class, figsize=(0.6 * per_class + 0.6, 0.6 * len(classes) + 0.6),
                             squeeze=False)
    for r, c in enumerate(classes):
        imgs = x[y == c][:per_class]
        for j, ax in enumerate(axes[r]):
            if j < len(imgs):
                ax.imshow(imgs[j].squeeze(0).numpy(), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
            ax.grid(False)
        axes[r][0].set_ylabel(str(c), rotation=0, labelpad=10, va="center")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def generator_scores(df: pd.DataFrame, *, fid_name: str, title: str) -> Figure:
    """FID (lower is better), IS and downstream CNN accuracy of each generator (rows of ``df``: ``label``,
    ``fid``, ``inception_score``, ``CNN``); ``fid_name`` says which FID it is."""
    fid_label = fid_name.replace(" (", "\n(") + "\nlower is better"
    cols = [("fid", fid_label), ("inception_score", "Inception Score (judge CNN)\nhigher is better"),
            ("CNN", "downstream CNN accuracy\non the real test set")]
    fig, axes = plt.subplots(1, 3, figsize=(13, 0.45 * len(df) + 1.8), sharey=True)
    for ax, (col, label) in zip(axes, cols):
        sns.barplot(data=df, y="label", x=col, color="tab:blue", orient="h", ax=ax)
        for c in ax.containers:
            ax.bar_label(c, labels=[f"{v:.1%}" if col == "CNN" else f"{v:.1f}" for v in c.datavalues], fontsize=8)
        ax.set(xlabel=label, ylabel="")
    axes[2].xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def sanitiser_gradients(df: pd.DataFrame, *, max_grad_norm: float, title: str) -> Figure:
    """GS-WGAN's per-sample gradients before the sanitiser, against generator iteration, one line per run
    (``label``): their median norm beside the clip bound C (left) and the share of samples clipped (right).

    A median far below C means the noise, scaled to C, is larger than it needs to be for the signal."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    sns.lineplot(data=df, x="iteration", y="grad_norm_median", hue="label", marker="o", markersize=4, ax=axes[0])
    axes[0].axhline(max_grad_norm, color="black", ls="--", lw=1, label=f"clip bound C = {max_grad_norm:g}")
    axes[0].legend(fontsize=8)
    axes[0].set(xlabel="generator iteration", ylabel="median per-sample gradient norm\n(before clipping)")
    sns.lineplot(data=df, x="iteration", y="clipped_fraction", hue="label", marker="o", markersize=4, ax=axes[1],
                 legend=False)
    axes[1].set(xlabel="generator iteration", ylabel="samples clipped", ylim=(-0.02, 1.02))
    axes[1].yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def membership_roc(curves: pd.DataFrame, *, bounds: pd.DataFrame, delta: float) -> Figure:
    """ROC curves of membership attacks on log-log axes, one panel per training setting, with the
    largest TPR that (ε, δ)-DP allows at each FPR (dashed) where the setting is private.

    ``curves``: columns ``setting``, ``attack``, ``target``, ``fpr``, ``tpr``; ``bounds``: ``setting``,
    ``fpr``, ``tpr`` (the bound, :func:`dpnb.audit.dp_tpr_bound`).
    """
    settings = list(dict.fromkeys(curves["setting"]))
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 4), sharey=True, squeeze=False)
    for ax, name in zip(axes[0], settings):
        part = curves[(curves["setting"] == name) & (curves["fpr"] > 0)]
        sns.lineplot(data=part, x="fpr", y="tpr", hue="attack", units="target", estimator=None, lw=1, ax=ax)
        b = bounds[bounds["setting"] == name]
        if len(b):
            ax.plot(b["fpr"], b["tpr"], "k--", lw=1, label="(ε, δ)-DP bound")
        ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8, ls=":", label="guessing")
        ax.set(xscale="log", yscale="log", xlim=(1e-3, 1), ylim=(1e-3, 1.05), title=name,
               xlabel="false-positive rate (log scale)", ylabel="true-positive rate (log scale)")
        ax.legend(fontsize=7, loc="lower right")
    fig.suptitle(f"Membership inference on MNIST linear models (δ = {delta:g})", fontsize=11)
    fig.tight_layout()
    return fig


def audit_bounds(df: pd.DataFrame, *, delta: float, accountant: str, canaries: int,
                 ceiling: float | None = None) -> Figure:
    """The one-run audit's lower bound on ε against the ε the run claims, per canary type and bug.

    ``df``: one row per run with ``epsilon`` (claimed), ``epsilon_lower_bound``, ``canary`` and ``run``
    (correct, or the bug switched on); points are the mean over seeds, bars their standard deviation.
    ``ceiling``: the bound a perfect guesser would reach with these canaries (drawn dotted).
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharey=True)
    top = max(float(df["epsilon"].max()), float(df["epsilon_lower_bound"].max())) * 1.1
    for ax, (kind, part) in zip(axes, df.groupby("canary", sort=False)):
        levels = part["run"].nunique()  # seaborn cannot dodge a single hue level
        sns.pointplot(data=part, x="epsilon", y="epsilon_lower_bound", hue="run", native_scale=True,
                      errorbar="sd", dodge=0.15 if levels > 1 else False, markers=["o", "s", "^", "D"][:levels],
                      linestyles=["-", "--", ":", "-."][:levels], ax=ax)
        ax.plot([0, top], [0, top], color="grey", lw=0.8, label="lower bound = claimed ε")
        if ceiling is not None:
            ax.axhline(ceiling, color="black", lw=0.8, ls=":", label=f"perfect guesses ({ceiling:.2f})")
        ax.set(xlim=(0, top), ylim=(0, top), xlabel=f"claimed ε (δ = {delta:g}, {accountant})",
               ylabel="audited lower bound on ε (95%)", title=f"{kind} canaries (m = {canaries})")
        ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def dp_tradeoff(df: pd.DataFrame, *, delta: float) -> Figure:
    """The largest TPR a membership test can have at each FPR under (ε, δ)-DP, one line per ε (log-log).

    ``df``: columns ``epsilon``, ``fpr``, ``tpr`` (from :func:`dpnb.audit.dp_tpr_bound`).
    """
    fig, ax = plt.subplots(figsize=(6, 4))
    sns.lineplot(data=df.assign(ε=df["epsilon"].map("ε = {:g}".format)), x="fpr", y="tpr", hue="ε",
                 palette="viridis", ax=ax)
    ax.plot([1e-4, 1], [1e-4, 1], color="grey", lw=0.8, ls=":", label="guessing (ε = 0)")
    ax.set(xscale="log", yscale="log", xlim=(1e-4, 1), ylim=(1e-4, 1.05),
           xlabel="false-positive rate (log scale)", ylabel="largest true-positive rate (log scale)",
           title=f"What (ε, δ)-DP allows any membership test (δ = {delta:g})")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return fig


def accountants_vs_steps(df: pd.DataFrame, *, title: str) -> Figure:
    """ε against the number of steps under each accounting (log-log): columns ``steps``, ``accounting``, ``epsilon``."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    sns.lineplot(data=df, x="steps", y="epsilon", hue="accounting", style="accounting", markers=True, ax=ax)
    ax.set(xscale="log", yscale="log", xlabel="steps T (log scale)", ylabel="ε (log scale)", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
