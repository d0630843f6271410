"""``audio2lp serve``: an HTTP service around one shared :class:`~audio2lp.api.Animator`.

    POST /speak            portrait + audio (multipart) and options  -> 202 {"id": ..., "status_url": ...}
    POST /drive            portrait + driving (video, image or template) and options -> 202
                           (the portrait of both: a photo, or a video: speak re-voices it, drive drives each frame)
    POST /edit             portrait (multipart) and editing sliders -> 200, the edited PNG (waits for it)
    GET  /jobs/{id}        state (queued, running, done, failed), frames done / total, error
    GET  /jobs/{id}/video  the result (when done)
    DELETE /jobs/{id}      forget a finished or queued job and its files; cancel a running one (202)
    GET  /health           liveness, device, queue
    WS   /stream/ws        live: portrait, then speech chunks in, JPEG frames out (:mod:`.server_stream`)
    GET  /stream           the microphone page of the live stream

Jobs run in a bounded worker pool (default one worker: on a CPU one job already uses every core) behind a queue
limit (429 when full). The whole request body is limited (413). Uploads are checked before a job is queued (the
image decodes, or a portrait video's header is probed and limited as a driving video's; the audio's duration is read
from its header before anything is decoded, then it decodes within the time and byte bounds of that duration; the
driving video's header is probed, a template's archive is checked before it is loaded: 400 with the reason
otherwise; bad form fields give 422); ``max_frames`` never gets past the duration limit. Every ffmpeg run reads
local files only. A job runs at most ``job_timeout`` seconds and ``DELETE`` cancels it while it runs
(:mod:`audio2lp.apps.serve_limits`). Each job has a folder under the jobs directory; finished jobs and their files
are removed ``ttl`` seconds after they finish (404 afterwards).

FastAPI, uvicorn and python-multipart are optional (``pip install "audio2lp[serve]"``); nothing here imports
them until :func:`create_app` runs.
"""

import logging
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from audio2lp import options
from audio2lp.apps.frontdoor import add_arguments
from audio2lp.apps.frontdoor import animator as animator_from_args
from audio2lp.apps.serve_limits import JobControl, JobStopped, Uploads, set_thread_count, threads_per_worker
from audio2lp.apps.server_edit import edited_image
from audio2lp.apps.server_stream import StreamConfig, add_stream_routes
from audio2lp.options import API, OptionError
from lp_renderer.errors import InputError

log = logging.getLogger(__name__)

SERVE_EXTRA_HINT = 'the HTTP service needs fastapi, uvicorn and python-multipart: pip install "audio2lp[serve]"'
STATES = ("queued", "running", "done", "failed")


@dataclass
class ServeConfig:
    """Limits and defaults of the service."""

    workers: int = 1  # jobs rendered at the same time (they share one renderer)
    queue_size: int = 8  # jobs waiting for a worker; one more is refused with 429
    max_upload_mb: float = 200.0  # limit of one request body (all its files), in MB (10^6 bytes)
    max_duration: float = 600.0  # longest accepted audio / driving or portrait video, in seconds
    ttl: float = 3600.0  # seconds a finished job (and its video) is kept
    jobs_dir: Path | None = None  # where job folders live (default: a temporary folder, removed at shutdown)
    motion_model: Path | None = None  # audio-to-motion checkpoint used by every speak job
    job_timeout: float = 3600.0  # longest a job may run, in seconds
    threads: int | None = None  # torch threads of each worker (None: the cores divided among the workers)
    stream: StreamConfig = field(default_factory=StreamConfig)  # limits of WS /stream/ws (server_stream.py)

    def __post_init__(self):
        for name in ("workers", "queue_size", "max_upload_mb", "max_duration", "ttl", "job_timeout", "threads"):
            object.__setattr__(self, name, options.check_value(name, getattr(self, name)))

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1e6)


@dataclass
class Job:
    id: str
    kind: str  # 'speak' | 'drive' | 'edit'
    folder: Path
    inputs: dict[str, Path]
    options: dict[str, Any]
    state: str = "queued"
    frames_done: int = 0
    frames_total: int | None = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    result: dict[str, Any] = field(default_factory=dict)
    control: JobControl = field(default_factory=JobControl)
    done: threading.Event = field(default_factory=threading.Event, repr=False)  # set when it has finished

    @property
    def output(self) -> Path:
        return self.folder / ("output.png" if self.kind == "edit" else "output.mp4")

    def to_json(self, ttl: float) -> dict[str, Any]:
        d = {"id": self.id, "kind": self.kind, "state": self.state, "frames_done": self.frames_done,
             "frames_total": self.frames_total, "error": self.error, "created": self.created,
             "started": self.started, "finished": self.finished,
             "progress": (min(1.0, self.frames_done / self.frames_total) if self.frames_total else
                          (1.0 if self.state == "done" else 0.0)),
             "status_url": f"/jobs/{self.id}"}
        if self.state == "done":
            d["video_url"] = f"/jobs/{self.id}/video"
            d["expires"] = self.finished + ttl
            d.update(self.result)
        elif self.state == "failed":
            d["expires"] = self.finished + ttl
        return d


class QueueFull(Exception):
    pass


class JobManager:
    """Jobs, their worker pool, their folders and their expiry. Thread-safe."""

    def __init__(self, animator, config: ServeConfig):
        self.animator, self.config = animator, config
        self._own_dir = config.jobs_dir is None
        self.root = Path(tempfile.mkdtemp(prefix="audio2lp-serve-")) if self._own_dir else Path(config.jobs_dir)
        self.root.mkdir(parents=True, exist_ok=True)
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        # daemon worker threads (not a ThreadPoolExecutor, whose threads the interpreter waits for at exit):
        # stopping the server must not wait for a render that may take minutes
        self._queue: queue.Queue[Job | None] = queue.Queue()
        self._threads: list[threading.Thread] = []
        self._stop = threading.Event()
        import torch

        self.threads = threads_per_worker(config.threads, config.workers, torch.get_num_threads())

    # -- lifecycle
    def start(self) -> None:
        if self._threads:
            return
        for i in range(self.config.workers):
            t = threading.Thread(target=self._worker, name=f"audio2lp-job-{i}", daemon=True)
            t.start()
            self._threads.append(t)
        t = threading.Thread(target=self._janitor_loop, name="audio2lp-janitor", daemon=True)
        t.start()
        self._threads.append(t)

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def close(self) -> None:
        """Stop taking jobs; remove the temporary jobs folder (or, in a given one, the unfinished jobs)."""
        self._stop.set()
        for _ in range(self.config.workers):
            self._queue.put(None)
        if self._own_dir:
            shutil.rmtree(self.root, ignore_errors=True)
            return
        with self._lock:
            unfinished = [j for j in self._jobs.values() if j.finished is None]
        for j in unfinished:
            j.control.cancelled.set()
            shutil.rmtree(j.folder, ignore_errors=True)

    def _worker(self) -> None:
        while not self._stop.is_set():
            job = self._queue.get()
            if job is None or self._stop.is_set():
                return
            set_thread_count(self.threads)  # this worker's own count, whatever another thread set meanwhile
            self._run(job)

    def _janitor_loop(self) -> None:
        period = max(0.05, min(60.0, self.config.ttl / 4))
        while not self._stop.wait(period):
            self.expire()

    # -- jobs
    def new_folder(self) -> tuple[str, Path]:
        job_id = uuid.uuid4().hex
        folder = self.root / job_id
        folder.mkdir()
        return job_id, folder

    def submit(self, job: Job) -> Job:
        with self._lock:
            waiting = sum(1 for j in self._jobs.values() if j.state == "queued")
            running = sum(1 for j in self._jobs.values() if j.state == "running")
            if waiting >= self.config.queue_size and running + waiting >= self.config.workers:
                raise QueueFull()
            self._jobs[job.id] = job
        log.info("job %s (%s) queued", job.id, job.kind)
        self._queue.put(job)
        return job

    def get(self, job_id: str) -> Job | None:
        self.expire()
        with self._lock:
            return self._jobs.get(job_id)

    def counts(self) -> dict[str, int]:
        with self._lock:
            return {s: sum(1 for j in self._jobs.values() if j.state == s) for s in STATES}

    def delete(self, job_id: str) -> str | None:
        """Forget a queued or finished job; returns its state (None: unknown). A running job is cancelled
        ('running' is returned): its worker stops it, removes its folder and forgets it."""
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.state == "running":
                if job is not None:
                    job.control.cancelled.set()
                return None if job is None else "running"
            del self._jobs[job_id]
        shutil.rmtree(job.folder, ignore_errors=True)
        return job.state

    def expire(self) -> None:
        now = time.time()
        with self._lock:
            old = [j for j in self._jobs.values() if j.finished is not None and now - j.finished > self.config.ttl]
            for j in old:
                del self._jobs[j.id]
        for j in old:
            shutil.rmtree(j.folder, ignore_errors=True)
            log.info("job %s expired; its files were removed", j.id)

    def _progress(self, job: Job):
        def cb(done: int, total: int) -> None:
            with self._lock:
                job.frames_done, job.frames_total = int(done), int(total)
        return cb

    def _run(self, job: Job) -> None:
        with self._lock:
            if job.id not in self._jobs:  # deleted while queued
                return
            job.state, job.started = "running", time.time()
            job.control.start(self.config.job_timeout)
        log.info("job %s (%s) running", job.id, job.kind)
        fn = getattr(self.animator, job.kind)
        kwargs = dict(job.options, progress_callback=job.control.checked(self._progress(job)))
        try:
            with job.control.bounded():
                job.control.check()
                if job.kind == "edit":
                    res = fn(job.inputs["portrait"], job.output, **kwargs)
                else:
                    second = job.inputs["audio" if job.kind == "speak" else "driving"]
                    res = fn(job.inputs["portrait"], second, job.output, **kwargs)
        except JobStopped as e:
            if e.cancelled:
                self._forget(job)
                log.info("job %s cancelled; its files were removed", job.id)
                return
            self._finish(job, "failed", error=str(e))
            log.info("job %s stopped: %s", job.id, e)
        except InputError as e:
            self._finish(job, "failed", error=str(e))  # OptionErrors read in the service's terms: field names
            log.info("job %s failed: %s", job.id, e)
        except Exception as e:  # noqa: BLE001 - a bug must not kill the worker; it is logged with its traceback
            log.exception("job %s failed with an internal error", job.id)
            self._finish(job, "failed", error=f"internal error ({type(e).__name__}: {e}); see the server log.",
                         result={"internal_error": True})
        else:
            result = {"n_frames": res.n_frames, "fps": res.fps, "has_audio": res.has_audio}
            extra = getattr(res, "extra", {})
            result.update({k: extra[k] for k in ("duration", "mode") if k in extra})  # mode: dubbing, source-video
            self._finish(job, "done", result=result, frames=res.n_frames)
            log.info("job %s done (%d frames)", job.id, res.n_frames)
        finally:
            for p in job.inputs.values():  # inputs are not needed any more; the result stays until expiry
                Path(p).unlink(missing_ok=True)
            if job.state == "failed":  # nothing of a failed job is kept (e.g. a stopped writer's leftovers)
                for p in job.folder.iterdir() if job.folder.is_dir() else ():
                    shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)

    def _forget(self, job: Job) -> None:
        """Remove a cancelled job's folder, then the job (404 from then on)."""
        shutil.rmtree(job.folder, ignore_errors=True)
        with self._lock:
            self._jobs.pop(job.id, None)

    def _finish(self, job: Job, state: str, *, error: str | None = None, result: dict | None = None,
                frames: int | None = None) -> None:
        with self._lock:
            # DELETE sets the flag under this lock while the job runs: a job cancelled as it ends is forgotten
            cancelled = job.control.cancelled.is_set()
            if not cancelled:
                job.state, job.error, job.finished = state, error, time.time()
                if result:
                    job.result = result
                if frames is not None:
                    job.frames_done = job.frames_total = frames
        if cancelled:
            self._forget(job)
        job.done.set()


# ------------------------------------------------------------------------------------------ uploads

def _require_fastapi():
    """FastAPI's pieces, or InputError with how to install the serve extra."""
    try:
        import fastapi
        from fastapi import responses
    except ImportError:
        raise InputError(SERVE_EXTRA_HINT + ".") from None
    if importlib_missing("python_multipart") and importlib_missing("multipart"):
        raise InputError(SERVE_EXTRA_HINT + ".")
    return fastapi, responses


def create_app(animator=None, config: ServeConfig | None = None, **overrides):
    """The FastAPI application. ``animator``: the shared :class:`~audio2lp.api.Animator` (default: one with the
    default weights, no progress bars); ``config`` / ``overrides``: :class:`ServeConfig` fields."""
    fastapi, responses = _require_fastapi()
    import contextlib
    import dataclasses

    from audio2lp.api import Animator

    config = dataclasses.replace(config or ServeConfig(), **overrides)
    if animator is None:
        animator = Animator(progress=False)
    n_styles = None
    if config.motion_model is not None:
        from audio2lp.models.motion_model import read_motion_model_metadata

        n_styles = read_motion_model_metadata(config.motion_model)["config"].n_styles
    # load once, before serving (also: fail now when weights are missing)
    animator.progress = False
    _ = animator.renderer
    _ = animator.faces
    jobs = JobManager(animator, config)

    @contextlib.asynccontextmanager
    async def lifespan(app):
        jobs.start()
        try:
            yield
        finally:
            jobs.close()

    app = fastapi.FastAPI(title="audio2lp", summary="Portrait + speech (or a driving video) -> talking-head video",
                          lifespan=lifespan)
    app.state.jobs = jobs
    app.state.config = config
    too_large = (f"the upload is larger than this server's limit of {config.max_upload_mb:g} MB; send smaller "
                 f"files (or start the server with a larger --max-upload-mb).")
    app.add_middleware(_body_limit(config.max_upload_bytes, too_large, fastapi, responses))
    uploads = Uploads(config, too_large, fastapi)
    _add_job_routes(app, jobs, config, uploads, n_styles, fastapi, responses)
    _add_status_routes(app, animator, jobs, config, fastapi, responses)
    add_stream_routes(app, animator, config, stopping=lambda: jobs.stopping)
    return app


def _body_limit(limit: int, too_large: str, fastapi, responses):
    """ASGI middleware refusing a request body over ``limit`` bytes: at once when Content-Length says so, else while
    it is read (the 413 then comes from the route's form parsing, which lets HTTPException through)."""

    class BodyLimit:
        def __init__(self, app):
            self.app = app

        async def __call__(self, scope, receive, send):
            if scope["type"] != "http":
                return await self.app(scope, receive, send)
            length = dict(scope.get("headers") or []).get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                response = responses.JSONResponse({"detail": too_large}, status_code=413,
                                                  headers={"Connection": "close"})
                return await response(scope, receive, send)
            seen = 0

            async def counted():
                nonlocal seen
                message = await receive()
                if message.get("type") == "http.request":
                    seen += len(message.get("body", b""))
                    if seen > limit:
                        raise fastapi.HTTPException(413, too_large)
                return message

            return await self.app(scope, counted, send)

    return BodyLimit


_UPLOADS = {"speak": (("portrait", "the photo (jpg/png/webp) or video (mp4/mov/webm/mkv, ...): a video is re-voiced "
                                   "(dubbing: its frames, the new speech's mouth)", ".png"),
                      ("audio", "speech: wav, flac, ogg, mp3, m4a, ...", ".wav")),
            "drive": (("portrait", "the photo (jpg/png/webp) or video (mp4/mov/webm/mkv, ...): each frame of a video "
                                   "takes the driving motion (video-to-video)", ".png"),
                      ("driving", "driving video, image, or motion template (.npz/.pkl)", ".mp4")),
            "edit": (("portrait", "the photo (jpg/png/webp)", ".png"),)}


def form_signature(kind: str, fastapi):
    """The endpoint signature of ``POST /<kind>``: the uploads, then one form field per service option of the
    command (type, default, range and description from :mod:`audio2lp.options`)."""
    import inspect

    params = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=fastapi.UploadFile,
                                default=fastapi.File(..., description=text)) for name, text, _ in _UPLOADS[kind]]
    types = {"float": float, "int": int, "bool": bool, "str": str, "face": str}
    for o in options.options_for(kind):
        if not o.service:
            continue
        annotation = types[o.kind] if not o.nullable else types[o.kind] | None
        default = o.default if o.kind != "face" else str(o.default)
        bounds = {k: v for k, v in (("ge", o.minimum), ("le", o.maximum)) if v is not None and o.kind != "bool"}
        text = o.label if o.kind == "bool" and o.default is True else o.help
        if o.choices:
            text += f" ({', '.join(o.choices)})"
        params.append(inspect.Parameter(o.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation,
                                        default=fastapi.Form(default, description=text, **bounds)))
    return inspect.Signature(params)


def _add_job_routes(app, jobs: JobManager, config: ServeConfig, uploads: Uploads, n_styles, fastapi, responses):
    """``POST /speak`` and ``POST /drive``: check the form, save and check the uploads, queue the job (202)."""
    from audio2lp.api import check_portrait_options

    def start(kind: str, folder: Path, job_id: str, inputs: dict, opts: dict, frames_total: int):
        job = Job(job_id, kind, folder, inputs, opts, frames_total=frames_total)
        accepted = job.to_json(config.ttl)  # as it is when accepted: a worker may pick it up at once
        try:
            jobs.submit(job)
        except QueueFull:
            raise fastapi.HTTPException(429, f"the queue is full ({config.queue_size} jobs waiting); try again "
                                              f"later.", headers={"Retry-After": "30"}) from None
        if kind == "edit":  # a still: wait for it and answer with the image
            return edited_image(jobs, job, fastapi, responses)
        return responses.JSONResponse(accepted, status_code=202, headers={"Location": f"/jobs/{job.id}"})

    def checked(kind: str, fields: dict) -> dict:
        try:
            uploaded = {name for name, _, _ in _UPLOADS[kind]}  # e.g. speak's "audio" file, not drive's option
            values = options.check({k: v for k, v in fields.items() if k in options.OPTIONS and k not in uploaded})
        except OptionError as e:
            raise fastapi.HTTPException(422, e.describe(API)) from None
        if kind == "speak" and n_styles is not None and values["style"] >= n_styles:
            raise fastapi.HTTPException(422, f"style must be between 0 and {n_styles - 1} for this server's motion "
                                             f"model.")
        return values

    def endpoint(kind: str):
        def handler(**fields):
            values = checked(kind, fields)
            job_id, folder = jobs.new_folder()
            try:
                inputs = {name: uploads.save(fields[name], folder, name, suffix) for name, _, suffix in _UPLOADS[kind]}
                # a portrait video (speak: dubbing, drive: video-to-video) is checked as a driving video is; dubbing
                # reads only the frames the speech needs, so there the audio's duration limit bounds the job
                portrait = uploads.check_portrait(inputs["portrait"], videos=kind != "edit",
                                                  max_frames=values.get("max_frames"), trimmable=kind == "drive",
                                                  any_length=kind == "speak")
                inputs["portrait"] = portrait.path
                if kind != "edit":
                    try:  # e.g. fps for dubbing, or a portrait video's smoothing for a photo: 422 before queueing
                        check_portrait_options(kind, values, video=portrait.is_video)
                    except OptionError as e:
                        raise fastapi.HTTPException(422, e.describe(API)) from None
                if kind == "speak":
                    seconds = uploads.check_audio(inputs["audio"])
                    # dubbing renders the speech at the video's frame rate, and never with a motion model
                    total = max(1, int(round(seconds * (portrait.info.fps if portrait.is_video else values["fps"]))))
                    values["motion_model"] = None if portrait.is_video else config.motion_model
                elif kind == "drive":
                    total, values["max_frames"] = uploads.check_driving(inputs["driving"], values["max_frames"],
                                                                        image=not portrait.is_video)
                    if portrait.is_video:  # as long as the shorter of the two videos
                        total = min(total, portrait.n_frames)
                else:
                    total = 1
                return start(kind, folder, job_id, inputs, values, total)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise

        handler.__name__ = kind
        handler.__signature__ = form_signature(kind, fastapi)
        return handler

    app.post("/speak", status_code=202,
             summary="Make the portrait (a photo, or a video to re-voice) say the audio (starts a job)")(
        endpoint("speak"))
    app.post("/drive", status_code=202,
             summary="Animate the portrait (a photo or a video) with a driving video (starts a job)")(endpoint("drive"))
    app.post("/edit", summary="Edit the portrait's expression and head pose; answers with the PNG",
             response_class=responses.Response,
             responses={200: {"content": {"image/png": {}}, "description": "the edited portrait"}})(endpoint("edit"))


def _add_status_routes(app, animator, jobs: JobManager, config: ServeConfig, fastapi, responses):
    """``GET /jobs/{id}``, ``GET /jobs/{id}/video``, ``DELETE /jobs/{id}`` and ``GET /health``."""
    http = fastapi.HTTPException

    def job_of(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise http(404, f"no job {job_id} (unknown, deleted, or expired {config.ttl:g} s after it finished).")
        return job

    @app.get("/jobs/{job_id}", summary="State and progress of a job")
    def job_status(job_id: str):
        job = job_of(job_id)
        with jobs._lock:
            return job.to_json(config.ttl)

    @app.get("/jobs/{job_id}/video", summary="The video of a finished job")
    def job_video(job_id: str):
        job = job_of(job_id)
        if job.state == "failed":
            raise http(409, f"job {job_id} failed: {job.error}")
        if job.state != "done":
            raise http(409, f"job {job_id} is {job.state}; poll /jobs/{job_id} until it is done.")
        if not job.output.is_file():
            raise http(404, f"the video of job {job_id} was removed.")
        return responses.FileResponse(job.output, media_type="video/mp4",
                                      filename=f"audio2lp-{job.kind}-{job_id[:8]}.mp4")

    @app.delete("/jobs/{job_id}", status_code=204,
                summary="Forget a queued or finished job and its files; cancel a running one (202)")
    def job_delete(job_id: str):
        state = jobs.delete(job_id)
        if state is None:
            raise http(404, f"no job {job_id}.")
        if state == "running":  # its worker stops it at its next check, removes its files, then forgets it
            return responses.JSONResponse({"id": job_id, "state": "cancelling", "status_url": f"/jobs/{job_id}"},
                                          status_code=202)
        return None

    @app.get("/health", summary="Liveness, device and queue")
    def health():
        renderer = getattr(animator, "_renderer", None)  # never triggers loading
        device = str(getattr(renderer, "device", "unknown")) if renderer is not None else "unknown"
        return {"status": "ok", "device": device, "workers": config.workers, "queue_size": config.queue_size,
                "jobs": jobs.counts(), "max_upload_mb": config.max_upload_mb, "ttl": config.ttl}


def importlib_missing(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is None


# ------------------------------------------------------------------------------------------ CLI
def add_serve_parser(sub) -> None:
    p = sub.add_parser(
        "serve", help="run the HTTP service (POST /speak, POST /drive, POST /edit, GET /jobs/ID)",
        description="Serve audio2lp over HTTP with one shared renderer. POST /speak (multipart: portrait, audio) "
                    "and POST /drive (portrait, driving) start jobs and answer 202 with the job id; the portrait is "
                    "a photo or a video (speak re-voices a video, drive drives each of its frames); GET /jobs/ID "
                    "reports the state and progress, GET /jobs/ID/video returns the mp4; POST /edit (portrait and "
                    "editing sliders) answers with the edited PNG. Jobs run in a bounded "
                    "worker pool behind a queue limit (429 when full); uploads are size-limited (413) and checked "
                    "before queueing (400); results are removed --ttl seconds after they finish. Interactive API "
                    "docs at /docs. Needs the serve extra: pip install \"audio2lp[serve]\".")
    add_arguments(p, "serve", defaults={"port": 8000})
    p.set_defaults(run=_run_serve)


def _run_serve(args) -> int:
    try:
        import uvicorn
    except ImportError:
        raise InputError(SERVE_EXTRA_HINT + ".") from None
    config = ServeConfig(workers=args.workers, queue_size=args.queue_size, max_upload_mb=args.max_upload_mb,
                         max_duration=args.max_duration, ttl=args.ttl, job_timeout=args.job_timeout,
                         threads=args.threads,
                         stream=StreamConfig.from_args(args),
                         jobs_dir=Path(args.jobs_dir) if args.jobs_dir else None,
                         motion_model=Path(args.motion_model) if args.motion_model else None)
    port = options.check_value("port", args.port)
    if port == 0:
        raise OptionError("port", "{port} must be between 1 and 65535 for the service, not 0.")
    animator = animator_from_args(args)
    animator.progress = False
    app = create_app(animator, config)
    print(f"audio2lp serving on http://{args.host}:{port} (API docs at /docs); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=args.host, port=port, log_level="warning" if args.quiet else "info",
                timeout_graceful_shutdown=5)
    busy = app.state.jobs.counts()["running"]
    if busy:
        # A render cannot be interrupted, and letting the interpreter finalise under a running torch/ffmpeg
        # thread aborts the process; the job folders are already removed, so leave at once.
        print(f"stopped; {busy} unfinished job(s) abandoned", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(0)
    return 0
