"""Figures of the experiments, drawn with matplotlib's object API (no pyplot state).

matplotlib is a development extra, not a dependency of gradxform: it is imported when a figure
is first asked for. Each function draws on `ax` when given one and otherwise makes its own
figure; it returns the figure, which a notebook displays and the demo saves.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from gradxform.demo.experiments.rosenbrock import MINIMUM, rosenbrock


def subplots(nrows: int = 1, ncols: int = 1, *, figsize=(7, 4)):
    """A new figure and its axes (no pyplot state: nothing to close, nothing shown by accident)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    return fig, fig.subplots(nrows, ncols)


def _axes(ax, figsize):
    if ax is not None:
        return ax.figure, ax
    return subplots(figsize=figsize)


# One look per curve: a colour, a line style and a marker, so that no two curves look alike
# even where they overlap or the figure is printed in grey.
_LOOKS = [
    ("tab:blue", "-", "o"), ("tab:orange", "--", "s"), ("tab:green", "-.", "^"),
    ("tab:red", ":", "v"), ("tab:purple", "-", "D"), ("tab:brown", "--", "P"),
    ("tab:pink", "-.", "X"), ("black", ":", "*"), ("tab:olive", "-", "h"), ("tab:cyan", "--", "<"),
]


def _look(k: int, n_points: int) -> dict:
    color, linestyle, marker = _LOOKS[k % len(_LOOKS)]
    # Markers staggered per curve, so that the markers of curves that run together stay apart.
    every = max(1, n_points // 10)
    return dict(color=color, linestyle=linestyle, marker=marker, ms=4,
                markevery=(k * every // len(_LOOKS), every))


def coinciding(trajectories: Mapping, *, rtol: float = 1e-9) -> dict[str, list[str]]:
    """The runs grouped by path: {label: names}, runs whose iterates agree to `rtol` in one
    group labelled "A = B" (Momentum and its EMA form take the same steps, for instance)."""
    groups: list[list[str]] = []
    for name, t in trajectories.items():
        for group in groups:
            other = trajectories[group[0]].params
            if other.shape == t.params.shape and np.allclose(other, t.params, rtol=rtol,
                                                               atol=0.0):
                group.append(name)
                break
        else:
            groups.append([name])
    return {" = ".join(g): g for g in groups}


def plot_rosenbrock_paths(trajectories: Mapping, *, ax=None, bounds=(-0.8, 1.2, -0.15, 1.15)):
    """Each optimizer's iterates over the contour lines of the Rosenbrock function; runs that
    take the same steps are drawn once, under both names."""
    from matplotlib.colors import LogNorm

    fig, ax = _axes(ax, (7.5, 6))
    x0, x1, y0, y1 = bounds
    xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
    zs = rosenbrock(np.stack([xs, ys], axis=-1))
    ax.contour(xs, ys, zs, levels=np.logspace(-2, 3, 16), norm=LogNorm(), colors="0.82",
               linewidths=0.5)
    for k, (label, names) in enumerate(coinciding(trajectories).items()):
        path = trajectories[names[0]].params
        look = _look(k, len(path))
        ax.plot(path[:, 0], path[:, 1], lw=1.4, label=label, **look)
        ax.plot(*path[-1], "o", ms=7, color=look["color"], mec="white", mew=0.8)
    ax.plot(*trajectories[next(iter(trajectories))].params[0], "ks", ms=7, label="start")
    ax.plot(*MINIMUM, "k*", ms=14, label="minimum (1, 1)")
    ax.set(xlim=(x0, x1), ylim=(y0, y1), xlabel="x", ylabel="y",
           title="Rosenbrock: iterates from (-0.5, 0.5) (a large dot: the last)")
    ax.legend(fontsize=8, loc="upper left", framealpha=0.9)
    return fig


def plot_rosenbrock_losses(trajectories: Mapping, *, ax=None):
    """f(θ_t) against the step t on a log scale; runs that take the same steps drawn once."""
    fig, ax = _axes(ax, (7.5, 4.5))
    for k, (label, names) in enumerate(coinciding(trajectories).items()):
        losses = trajectories[names[0]].losses
        ax.semilogy(losses, lw=1.4, label=label, **_look(k, len(losses)))
    ax.set(xlabel="step", ylabel="f(x, y)", title="Rosenbrock: loss per step")
    ax.legend(fontsize=8, ncols=2)
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


def moving_average(x, window: int) -> np.ndarray:
    """The mean of the last `window` values at each step (of fewer at the start), last axis."""
    x = np.asarray(x, dtype=float)
    c = np.cumsum(x, axis=-1)
    out = c.copy()
    out[..., window:] = c[..., window:] - c[..., :-window]
    n = np.minimum(np.arange(1, x.shape[-1] + 1), window)
    return out / n


def plot_losses_per_step(losses: Mapping, *, ax=None, title="Loss on all points, per step",
                         early_steps: int = 100, window: int = 25):
    """Per-step losses of several runs per setting (`losses`: name -> array (runs, steps + 1)).

    Left, the first `early_steps` steps, where a warmup acts: each run faint, the mean bold, the
    mean peak in the legend. Right, the whole run on a log scale, smoothed over `window` steps
    (the raw mean faint). With `ax`, only the right panel, on it.
    """
    if ax is None:
        fig, (early, whole) = subplots(1, 2, figsize=(12, 4.5))
    else:
        fig, early, whole = ax.figure, None, ax
    drawn_early: list[tuple[np.ndarray, list]] = []  # settings identical early: one curve
    for k, (name, runs) in enumerate(losses.items()):
        runs = np.asarray(runs)
        color = _LOOKS[k % len(_LOOKS)][0]
        mean = runs.mean(axis=0)
        if early is not None:
            head = runs[:, :early_steps + 1]
            same = [d for d in drawn_early if d[0].shape == head.shape
                    and np.array_equal(d[0], head)]
            if same:
                line = same[0][1][0]
                line.set_label(line.get_label().replace(": peak", f" = {name}: peak"))
            else:
                peak = head.max(axis=1).mean()
                early.plot(head.T, color=color, lw=0.6, alpha=0.25)
                drawn_early.append((head, early.plot(mean[:early_steps + 1], color=color, lw=2,
                                                     label=f"{name}: peak {peak:.2f}")))
        whole.semilogy(mean, color=color, lw=0.6, alpha=0.35)
        whole.semilogy(moving_average(mean, window), color=color, lw=2,
                       linestyle=_LOOKS[k % len(_LOOKS)][1],
                       label=f"{name} (mean of {len(runs)})")
    if early is not None:
        early.set(xlabel="step", ylabel="loss", title=f"First {early_steps} steps: the spike")
        early.legend(fontsize=8, title="mean peak loss", title_fontsize=8)
        early.grid(alpha=0.3)
        fig.suptitle(title)
    whole.set(xlabel="step", ylabel="loss",
              title=f"Whole run, mean over {window} steps" if early is not None else title)
    whole.legend(fontsize=8)
    whole.grid(alpha=0.3, which="both")
    return fig
