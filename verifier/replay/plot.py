"""The audit plot (``mpsnode replay --plot out.png``): per task, accuracy, Krum scores and pay shares.

One row per task that closed a round. Left: the global model's accuracy after each round, with
the task's target as a dashed line and void rounds marked. Middle: each client's Krum score per
round, hollow where the update was not selected and a red cross where the client was slashed; the
axis fits the honest spread, and an outlier's score (orders of magnitude above it) sits on the top
edge with its value written beside it. Right: each round's pay split by contribution (the
``RoundClosed`` units, docs/PROTOCOL.md section 8), one stacked bar per round in the clients'
colours; a free rider's slice is missing. Matplotlib runs with the Agg backend (no display needed).
"""

from __future__ import annotations

from pathlib import Path

from verifier.replay.audit import Audit, TaskAudit, short, slash_reason

MAX_LEGEND = 24
OFF_SCALE = 20


def plot_audit(
    audit: Audit,
    path: str | Path,
    targets: dict[int, int] | None = None,
    names: dict[bytes, str] | None = None,
) -> Path:
    """Draw the audit into ``path`` (PNG); ``targets`` maps task id to its target accuracy in bps,
    ``names`` addresses to the key names a home knows them by (else 8 hex digits)."""
    # matplotlib is heavy (about a second to import) and only a plot needs it
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    tasks = [t for _, t in sorted(audit.tasks.items()) if t.rounds]
    rows = max(1, len(tasks))
    fig, axes = plt.subplots(
        rows, 3, figsize=(20, 4.6 * rows), squeeze=False, gridspec_kw={"width_ratios": [1, 1.35, 1]}
    )
    if not tasks:
        for ax in axes[0]:
            ax.axis("off")
        axes[0][0].text(
            0.5, 0.5, "no task closed a round in this chain", ha="center", va="center", fontsize=13
        )
    for row, task in enumerate(tasks):
        _accuracy(axes[row][0], task, (targets or {}).get(task.task_id))
        _scores(axes[row][1], task, names or {})
        _shares(axes[row][2], task, names or {})
    fig.suptitle(
        f"mpsnode audit: {audit.blocks} blocks, {audit.txs} txs, {len(audit.tasks)} task(s)", fontsize=13
    )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.35 / (4.6 * rows)))  # room for the title above the first row
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _accuracy(ax, task: TaskAudit, target_bps: int | None) -> None:
    closed = [r for r in task.rounds if not r.void]
    ax.plot(
        [r.round for r in closed],
        [r.accuracy_bps / 100 for r in closed],
        marker="o",
        color="tab:blue",
        label="accuracy after the round",
    )
    void = [r for r in task.rounds if r.void]
    if void:
        ax.scatter(
            [r.round for r in void],
            [r.accuracy_bps / 100 for r in void],
            marker="x",
            color="gray",
            label="void round (too few updates)",
            zorder=3,
        )
    if target_bps is not None:
        ax.axhline(
            target_bps / 100, linestyle="--", color="tab:green", label=f"target {target_bps / 100:.2f}%"
        )
    ax.set_xlabel("round")
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 103)
    ax.set_xticks(_round_ticks(task))
    ax.grid(alpha=0.3)
    ax.set_title(f"task {task.task_id}: accuracy per round ({task.status})")
    ax.legend(loc="lower right", fontsize=8)


def _round_ticks(task: TaskAudit) -> list[int]:
    """At most about 12 round numbers on an axis, so they never run together."""
    rounds = [r.round for r in task.rounds]
    step = max(1, -(-len(rounds) // 12))
    return rounds[::step]


def _clients(task: TaskAudit) -> list[bytes]:
    """Every client that revealed in some round, in one order: the colours of both panels."""
    return sorted({a for r in task.rounds for a in r.participants})


def _colormap(n: int):
    import matplotlib.pyplot as plt  # noqa: PLC0415 - heavy, only a plot needs it; plot_audit set the backend

    return plt.get_cmap("tab20" if n > 10 else "tab10")


def _shares(ax, task: TaskAudit, names: dict[bytes, str]) -> None:
    """One stacked bar per scored round: each client's share of that round's pay (units / 10^6)."""
    clients = _clients(task)
    cmap = _colormap(len(clients))
    rounds = [r for r in task.rounds if not r.void]
    xs = [r.round for r in rounds]
    bottom = [0.0] * len(rounds)
    for i, address in enumerate(clients):
        heights = [100 * r.units_of(address) / 1_000_000 for r in rounds]
        if not any(heights):  # in the legend, in its colour, though it has no slice
            ax.scatter(
                [],
                [],
                marker="s",
                color=cmap(i % cmap.N),
                label=names.get(address, short(address)) + " (nothing)",
            )
            continue
        ax.bar(
            xs,
            heights,
            bottom=bottom,
            color=cmap(i % cmap.N),
            width=0.8,
            label=names.get(address, short(address)),
        )
        bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
    ax.set_ylim(0, 105)
    ax.set_xlabel("round")
    ax.set_ylabel("share of the round's pay (%)")
    if xs:
        ax.set_xticks(_round_ticks(task))
    ax.grid(alpha=0.3, axis="y")
    ax.set_title(f"task {task.task_id}: pay by contribution (a gap: nobody earned that part)", fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if labels and len(labels) <= MAX_LEGEND:
        ax.legend(
            handles,
            labels,
            loc="upper left",
            bbox_to_anchor=(1.01, 1.0),
            fontsize=7,
            ncol=1 if len(labels) <= 14 else 2,
            title="client",
            title_fontsize=8,
            borderaxespad=0,
        )


def _scores(ax, task: TaskAudit, names: dict[bytes, str]) -> None:
    """Scores on a linear axis fitted to the honest spread; a score over ``OFF_SCALE`` x its round's
    median sits on the top edge as a triangle with its value written beside it."""

    rounds = [r for r in task.rounds if r.scores]
    medians = {r.round: sorted(r.scores)[(len(r.scores) - 1) // 2] for r in rounds}

    def off_scale(round_: int, score: int) -> bool:
        return score > OFF_SCALE * max(medians[round_], 1)

    in_scale = [s for r in rounds for s in r.scores if not off_scale(r.round, s)] or [0, 1]
    low, high = min(in_scale), max(in_scale)
    ceiling = high + 0.12 * max(high - low, 1)  # where off-scale points are drawn
    clients = _clients(task)
    cmap = _colormap(len(clients))
    for i, address in enumerate(clients):
        color = cmap(i % cmap.N)
        points = [(r, r.scores[r.participants.index(address)]) for r in rounds if address in r.participants]
        if not points:
            continue
        xs = [r.round for r, _ in points]
        ys = [ceiling if off_scale(r.round, s) else s for r, s in points]
        # the line joins in-scale scores only: an off-scale one is a gap, not a flat line on the edge
        line = [float("nan") if off_scale(r.round, s) else s for r, s in points]
        ax.plot(xs, line, color=color, alpha=0.6, linewidth=1, label=names.get(address, short(address)))
        for (r, score), y in zip(points, ys, strict=True):
            marker = "^" if y == ceiling and off_scale(r.round, score) else "o"
            if address in r.selected:
                ax.scatter([r.round], [y], color=color, s=22, marker=marker, zorder=3)
            else:
                ax.scatter([r.round], [y], facecolors="none", edgecolors=color, s=46, marker=marker, zorder=3)
    for r in rounds:  # one label per round under its off-scale triangles: how far off, as x the median
        ratios = sorted(s / max(medians[r.round], 1) for s in r.scores if off_scale(r.round, s))
        if ratios:
            text = f"{ratios[0]:.0f}x" if len(ratios) == 1 else f"{ratios[0]:.0f}-{ratios[-1]:.0f}x"
            ax.annotate(
                text,
                (r.round, ceiling),
                textcoords="offset points",
                xytext=(0, -7),
                fontsize=7,
                rotation=90,
                ha="center",
                va="top",
            )
    slashed_label = "slashed"
    for r in rounds:
        lines = []
        slashed = [s for s in r.slashed if s[0] in r.participants]
        for k, (address, amount, reason) in enumerate(slashed):
            score = r.scores[r.participants.index(address)]
            y = ceiling if off_scale(r.round, score) else score
            x = r.round + 0.18 * (k - (len(slashed) - 1) / 2)  # side by side: two slashes, two crosses
            ax.scatter([x], [y], marker="X", color="red", s=140, zorder=4, label=slashed_label)
            slashed_label = "_nolegend_"
            name = names.get(address, short(address))
            lines.append((y, f"{name} slashed -{amount} ({slash_reason(reason)})"))
        if lines:  # the round's slashes in one block of text, right of the highest cross
            ax.annotate(
                "\n".join(text for _, text in lines),
                (r.round, max(y for y, _ in lines)),
                textcoords="offset points",
                xytext=(9, -6),
                fontsize=8,
                color="red",
                va="top",
            )
    ax.set_ylim(low - 0.05 * max(high - low, 1), ceiling + 0.08 * max(high - low, 1))
    ax.set_xlabel("round")
    ax.set_ylabel("Krum score (sum of squared distances)")
    ax.set_xticks(_round_ticks(task))
    ax.grid(alpha=0.3)
    ax.set_title(
        f"task {task.task_id}: Krum score per client (hollow: not selected; "
        f"\u25b2 off scale: > {OFF_SCALE}x the round's median, ratio written below)",
        fontsize=10,
    )
    handles, labels = ax.get_legend_handles_labels()
    slash = [(h, lab) for h, lab in zip(handles, labels, strict=True) if lab == "slashed"]
    if slash:  # the clients' colours are named beside the pay panel
        ax.legend([h for h, _ in slash], ["slashed"], loc="upper right", fontsize=7)
