"""What every open page polls once a second: the job status line, the training run's progress, loss chart, samples,
log and result. The state is the runner's, on the server, so a reload or a second browser shows the same job. A
page remembers what it last drew (a gr.State) and gets updates only for what changed."""

from __future__ import annotations

import time
from typing import Any

import gradio as gr

from lib_sdtrain.jobs import runner
from lib_sdtrain.ui.common import status_html
from lib_sdtrain.ui.train_tab import loss_frame, result_markdown
from lib_sdtrain.utils.status import Status

POLL_SECONDS = 1.0
# Drawing the chart (an Altair spec per update) costs the server more than everything else a poll does, and the
# training thread shares its interpreter: redraw it every few seconds, and once more when the run ends.
CHART_SECONDS = 5.0


def poll(seen: dict[str, Any] | None) -> list[Any]:
    """[header, train progress, loss chart, samples, log, result, finished marker, seen]."""
    seen = dict(seen or {})
    jobs = runner()
    latest = jobs.current()
    header = status_html(latest.snapshot(log_lines=0) if latest else None)
    train_job = jobs.current("train")
    updates: list[Any] = [header]
    if train_job is None:
        updates += [status_html(None), gr.update(), gr.update(), gr.update(), gr.update()]
    else:
        snap = train_job.snapshot()
        same = seen.get("train") == snap["id"]
        updates.append(status_html(snap))
        now = time.monotonic()
        chart_due = now - seen.get("chart_at", 0.0) >= CHART_SECONDS or snap["status"] != Status.RUNNING
        if not same or (seen.get("losses") != len(snap["losses"]) and chart_due):
            updates.append(gr.update(value=loss_frame(snap["losses"])))
            seen.update(chart_at=now, losses=len(snap["losses"]))
        else:
            updates.append(gr.update())
        updates.append(
            gr.update(value=[(p, p.rsplit("/", 1)[-1]) for p in snap["samples"]])
            if not same or seen.get("samples") != len(snap["samples"])
            else gr.update()
        )
        updates.append(
            gr.update(value="\n".join(snap["log"])) if seen.get("version") != snap["version"] else gr.update()
        )
        updates.append(result_markdown(snap))
        seen.update(train=snap["id"], samples=len(snap["samples"]), version=snap["version"])
    # A finished job's id (once): lets the tabs reload what it changed (captions, tags, buckets, report).
    finished = latest.id if latest is not None and not latest.running else ""
    updates.append(finished)
    updates.append(seen)
    return updates
