"""Figures of the experiments, drawn with matplotlib's object API (no pyplot state).

matplotlib is a development extra, not a dependency of gradxform: it is imported when a figure
is first asked for. Each function draws on `ax` when given one and otherwise makes its own
figure; it returns the figure, which a notebook displays and the demo saves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gradxform.demo.experiments.rosenbrock import MINIMUM, rosenbrock

# Optimizers whose runs coincide with another's are drawn dashed on top of it.
_DASHED = ("EMA form",)


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=(7, 4)):
    """A new figure and its axes (no pyplot state: nothing to close, nothing shown by accident)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    return subplots(figsize=figsize)


def _style(name: str) -> dict:
    return {"linestyle": "--"} if any(s in name for s in _DASHED) else {}


def plot_rosenbrock_paths(trajectories: Mapping, *, ax=None, bounds=(-0.8, 1.2, -0.15, 1.15)):
    """Each optimizer's iterates over the contour lines of the Rosenbrock function."""
    from matplotlib.colors import LogNorm

    fig, ax = _axes(ax, (7, 5.5))
    x0, x1, y0, y1 = bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    zs = rosenbrock(np.stack([xs, ys], axis=-1))
    ax.contour(xs, ys, zs, levels=np.logspace(-2, 3, 16), norm=LogNorm(), cmap="Greys",
               linewidths=0.6, alpha=0.7)
    for name, t in trajectories.items():
        ax.plot(t.params[:, 0], t.params[:, 1], lw=1.2, label=name, **_style(name))
        ax.plot(*t.params[-1], "o", ms=4, color=ax.lines[-1].get_color())
    ax.plot(*trajectories[next(iter(trajectories))].params[0], "ks", ms=6, label="start")
    ax.plot(*MINIMUM, "k*", ms=12, label="minimum (1, 1)")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y",
           title="Rosenbrock: iterates from (-0.5, 0.5)")
    ax.legend(fontsize=8, loc="upper left")
    return fig


def plot_rosenbrock_losses(trajectories: Mapping, *, ax=None):
    """f(θ_t) against the step t on a log scale."""
    fig, ax = _axes(ax, (7, 4))
    for name, t in trajectories.items():
        ax.semilogy(t.losses, lw=1.2, label=name, **_style(name))
    ax.set(xlabel="step", ylabel="f(x, y)", title="Rosenbrock: loss per step")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_xor_losses(runs: Mapping, *, ax=None):
    """The mean mini-batch loss of each epoch, per optimizer (log scale)."""
    fig, ax = _axes(ax, (7, 4))
    for name, run in runs.items():
        ax.semilogy(np.arange(1, len(run.losses) + 1), run.losses, lw=1.2, label=name)
    ax.set(xlabel="epoch", ylabel="binary cross-entropy", title="XOR MLP: training loss")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig


def plot_feature_weights(weights: Mapping, *, n_signal: int, ax=None):
    """|w_i| per feature (mean over data sets), informative features shaded.

    `weights` maps a name to an array of final weights of shape (data sets, features).
    """
    fig, ax = _axes(ax, (8, 4))
    names = list(weights)
    n_features = np.shape(weights[names[0]])[-1]
    width = 0.8 / len(names)
    idx = np.arange(n_features)
    for k, name in enumerate(names):
        mean_abs = np.abs(np.asarray(weights[name])).mean(axis=0)
        ax.bar(idx + (k - (len(names) - 1) / 2) * width, mean_abs, width, label=name)
    ax.axvspan(-0.5, n_signal - 0.5, color="tab:green", alpha=0.12,
               label=f"informative features 0-{n_signal - 1}")
    ax.set(xlabel="feature", ylabel="mean |w|", xlim=(-0.5, n_features - 0.5), yscale="log",
           title="Final weight per feature: informative vs noisy")
    ax.legend(fontsize=8)
    return fig


def plot_test_error(test_mse: Mapping, *, ax=None):
    """Test MSE per optimizer: a bar at the mean over data sets, a dot per data set."""
    fig, ax = _axes(ax, (4, 4))
    for k, errors in enumerate(test_mse.values()):
        errors = np.asarray(errors)
        ax.bar(k, errors.mean(), 0.6, alpha=0.5, color=f"C{k}")
        ax.plot(np.full(errors.shape, k) + np.linspace(-0.15, 0.15, errors.size), errors, "o",
                ms=3, color=f"C{k}")
    ax.set_xticks(range(len(test_mse)), list(test_mse))
    ax.set(ylabel="test MSE", title="Generalization (one dot per data set)")
    return fig


def plot_schedule_gallery(gallery: Mapping, *, num_steps: int = 1000):
    """One panel per group of schedules, each curve from `schedule.values(num_steps)`."""
    fig, axes = subplots(2, (len(gallery) + 1) // 2, figsize=(12, 7))
    steps = np.arange(num_steps)
    for ax, (title, schedules) in zip(np.ravel(axes), gallery.items()):
        for label, schedule in schedules.items():
            ax.plot(steps, np.asarray(schedule.values(num_steps)), lw=1.3, label=label)
        ax.set(title=title, xlabel="step", ylabel="learning rate")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    return fig


def plot_losses_per_step(losses: Mapping, *, ax=None, title="Loss on all points, per step"):
    """Per-step losses of several runs per setting: the mean bold, each run faint (log scale).

    `losses` maps a name to an array of shape (runs, steps + 1).
    """
    fig, ax = _axes(ax, (8, 4))
    for k, (name, runs) in enumerate(losses.items()):
        runs = np.asarray(runs)
        ax.semilogy(runs.T, color=f"C{k}", lw=0.6, alpha=0.3)
        ax.semilogy(runs.mean(axis=0), color=f"C{k}", lw=2, label=f"{name} (mean of {len(runs)})")
    ax.set(xlabel="step", ylabel="loss", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3, which="both")
    return fig
