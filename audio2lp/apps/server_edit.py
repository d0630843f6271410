"""``POST /edit`` of the HTTP service (:mod:`audio2lp.apps.server`): an edit is a job like the others (the same
worker pool, queue limit and uploads check), but a still is quick, so the request waits for it and answers with the
PNG itself; the job and its files are removed at once."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

#: how often a waiting request checks that the service is still running, in seconds
POLL = 0.5


def edited_image(jobs, job, fastapi, responses):
    """Wait for the edit ``job`` (a :class:`~audio2lp.apps.server.Job` submitted to ``jobs``) and answer with its
    PNG: 200 with the image; 400 with the reason when the input cannot be edited (no face, ...); 500 for an
    internal error; 503 when the service stops first."""
    try:
        while not job.done.wait(POLL):
            if jobs.stopping:
                raise fastapi.HTTPException(503, "the service is stopping; try again later.")
        if job.state != "done":
            status = 500 if job.result.get("internal_error") else 400
            raise fastapi.HTTPException(status, f"the portrait cannot be edited: {job.error}")
        data = job.output.read_bytes()
    finally:
        jobs.delete(job.id)  # a finished job's folder goes at once; a waiting one when the service stops
    return responses.Response(data, media_type="image/png",
                              headers={"Content-Disposition": f'inline; filename="audio2lp-edit-{job.id[:8]}.png"'})
