"""Model work on worker processes: web processes that load no model, workers that hold the GPUs.

With ``MODEL_WORKERS`` (and REDIS_URL) set, the dispatcher hands every row of cost ``model`` to
:meth:`RemoteWork.run` instead of running its handler: the call (row name, validated fields,
who asked) becomes an RQ job on the ``atlas-model`` queue. A worker (``python -m app worker``:
:func:`serve`) runs that row's own handler with the same fields on its own
:class:`app.service.AtlasService`, so there is one code path per request wherever it runs.

- Answers: a socket call's events (progress, per-layer thumbnails, tokens, overview, done) go
  from the worker straight to the client through the Socket.IO message queue (Flask-SocketIO's
  emitter for external processes); an HTTP call's events come back with the job's result and
  are replayed by the web process. A single answer (e.g. the logit lens) is the job's result.
- Results land in the shared Redis store before the first answer that names them leaves the
  worker, so every web process serves their details.
- One forward pass per prompt: :class:`SharedFlight` takes a Redis lock per cache key around the
  computation; a second worker with the same prompt waits, then finds it stored.
- Queue positions: the web process polls its job's place in the RQ queue, as ``progress``.
- A worker killed mid-job: each job holds a lease (``atlas:lease:<job>``) its worker renews every
  second; a job whose lease lapsed is run once more on another worker, or answered ``internal``
  the second time. The web process giving a job up and its worker sending a stream's last event
  both claim ``atlas:outcome:<job>`` (SET NX): whichever comes first decides, so a job is never
  answered twice, and a worker that was only slow stays silent once its job runs elsewhere.
- A model row's handler must send nothing before its first model work: it runs on the web
  process until then (answering from the shared store when it can) and again on a worker.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import redis
import rq
from rq.job import JobStatus

from app import limits
from app.protocol import NAMESPACE, AtlasError
from app.redis_store import renewing

log = logging.getLogger(__name__)

QUEUE_NAME = "atlas-model"
LEASE_KEY = "atlas:lease:"  # + job id: exists while a worker runs the job
OUTCOME_KEY = "atlas:outcome:"  # + job id: "answered" (its worker sent the last event), "lost" or "ended"
SILENCED = (b"lost", b"ended")  # outcomes after which the job's worker sends nothing more
FLIGHT_KEY = "atlas:flight:"  # + cache key: held by the worker computing that analysis
LEASE_SECONDS = 5  # a running job whose lease is this old has lost its worker
RENEW_SECONDS = 1  # how often a worker renews its job's lease and its flight locks
WAIT_STEP_SECONDS = 1  # the web process checks its job's place and lease this often
JOB_TIMEOUT_SECONDS = 3600  # RQ stops a job running longer (a hung device)
RESULT_TTL_SECONDS = 600  # a job's result is read at once; kept this long for the logs
ATTEMPTS = 2  # a job whose worker died is run once more, then answered with an error
LIVE_EVENTS = ("progress", "overview_layer")  # events sent before the result is in the store
FINAL_EVENT = "done"  # a stream's last event
NO_WORKER = "no model worker is running; waiting for one to start"  # the progress stage meanwhile


@dataclass
class Order:
    """What a worker needs to run one call of the request table: the row, its validated
    fields, and who asked (a socket id, or an HTTP client that waits for the events)."""

    name: str
    fields: dict
    client: str
    rid: object
    live: bool
    address: str | None


class RemoteWork:
    """The web side: enqueue a call, report its place, wait for its answer."""

    def __init__(self, config):
        from app.redis_store import IO_TIMEOUT_SECONDS, connect

        self.config = config
        self.client = connect(config["REDIS_URL"], IO_TIMEOUT_SECONDS)
        self.queue = rq.Queue(QUEUE_NAME, connection=self.client)

    def run(self, call, fields: dict):
        """The answer of a model row, computed on a worker; raises what the handler raised
        there (AtlasError), ``busy`` when the queue is full or Redis is down, ``internal`` when
        workers died twice on it."""
        order = Order(call.request.name, fields, call.client, call.rid, call.live, call.address)
        try:
            for attempt in range(ATTEMPTS):
                with limits.turn_given_back():  # the worker's job may take seconds
                    outcome = self._wait(call, self._enqueue(order))
                if outcome is not None:
                    return self._answer(call, outcome)
                log.warning("a model worker died running %s %r (attempt %d)", order.name, order.rid, attempt + 1)
                self._progress(call, "a model worker stopped; running the request again")
        except redis.RedisError as error:
            log.warning("model work queue unreachable: %s", error)
            raise AtlasError(
                "busy", "the model workers cannot be reached right now (their queue is down); try again", 503
            ) from None
        raise AtlasError("internal", "the model workers stopped twice while running this request; try again", 500)

    def _enqueue(self, order: Order) -> rq.job.Job:
        if self.queue.count >= self.config["MAX_QUEUED_JOBS"]:
            raise AtlasError("busy", "too many model requests are waiting; try again in a minute", 503)
        return self.queue.enqueue(
            run_order,
            asdict(order),
            job_timeout=JOB_TIMEOUT_SECONDS,
            result_ttl=RESULT_TTL_SECONDS,
            ttl=self.config["MAX_QUEUE_WAIT_SECONDS"],
            failure_ttl=RESULT_TTL_SECONDS,
        )

    def _wait(self, call, job: rq.job.Job) -> dict | None:
        """The job's outcome, or None when its worker died before answering."""
        waited, lapsed, place, unplaced = time.monotonic(), None, None, None
        while True:
            result = job.latest_result(timeout=WAIT_STEP_SECONDS)
            if result is not None:
                if result.type != result.Type.SUCCESSFUL:  # RQ's own failure: a timeout, a crash in RQ
                    log.error("model job %s failed: %s", job.id, result.exc_string)
                    return {"error": ["internal", "the model worker failed on this request; it has been logged", 500]}
                return result.return_value
            status = job.get_status(refresh=True)
            if status in (JobStatus.QUEUED, None):
                if call.gone() or time.monotonic() - waited > self.config["MAX_QUEUE_WAIT_SECONDS"]:
                    with contextlib.suppress(rq.exceptions.InvalidJobOperation):
                        job.cancel()
                    raise limits.JobCancelled() if call.gone() else AtlasError("busy", "waited too long for a model")
                position = job.get_position()
                if position is None:  # a worker took it since its status was read: started, next time round
                    unplaced = unplaced or time.monotonic()
                    if time.monotonic() - unplaced > LEASE_SECONDS:  # taken, never started: its worker died
                        job.delete()
                        return None
                    continue
                unplaced = None
                stage = (
                    limits.QueueStage(position + 1, self.queue.count)
                    if rq.Worker.count(queue=self.queue)
                    else NO_WORKER
                )
                if stage != place:
                    place = stage
                    self._progress(call, stage)
            elif status == JobStatus.STARTED:
                if call.gone():  # the client left or cancelled: its worker goes silent
                    self.client.set(OUTCOME_KEY + job.id, "ended", nx=True, ex=RESULT_TTL_SECONDS)
                    raise limits.JobCancelled()
                if self.client.exists(LEASE_KEY + job.id):
                    lapsed = None
                    continue
                lapsed = lapsed or time.monotonic()
                if time.monotonic() - lapsed > LEASE_SECONDS:
                    if not self.client.set(OUTCOME_KEY + job.id, "lost", nx=True, ex=RESULT_TTL_SECONDS):
                        return {}  # its worker sent the last event before it died
                    job.delete()
                    return None
            elif status in (JobStatus.CANCELED, JobStatus.STOPPED, JobStatus.FAILED):
                return None

    def _answer(self, call, outcome: dict):
        for event, payload in outcome.get("events", ()):
            call.emit(event, payload)
        if outcome.get("error"):
            raise AtlasError(*outcome["error"])
        return outcome.get("result")

    def _progress(self, call, stage: str) -> None:
        if call.live:
            call.emit("progress", {"rid": call.rid, "stage": stage, "fraction": 0.0})


class SharedFlight:
    """A Redis lock per cache key, so identical requests on different workers cost one forward
    pass: the holder computes and stores; the next one finds the result in the shared store.
    The lock expires unless renewed, so a killed worker's lock frees itself."""

    def __init__(self, client: redis.Redis):
        self.client = client

    @contextlib.contextmanager
    def hold(self, key: str, cache) -> Iterator[None]:
        """Around computing ``key`` (unless it is cached already); the result is written to the
        store before the lock goes (``cache.flush``)."""
        if cache.get(key) is not None:
            yield
            return
        lock = self.client.lock(FLIGHT_KEY + key, timeout=LEASE_SECONDS, sleep=0.05, thread_local=False)
        lock.acquire()
        with renewing(lock.reacquire, RENEW_SECONDS):
            try:
                yield
                cache.flush()
            finally:
                with contextlib.suppress(redis.exceptions.LockError):
                    lock.release()


class Worker:
    """The worker side: runs orders on this process's service; answers go to their client."""

    def __init__(self, app):
        from flask_socketio import SocketIO

        from app.events import SOCKETIO_CHANNEL
        from app.redis_store import connect

        self.service = app.extensions["atlas"]
        self.client = connect(app.config["REDIS_URL"])
        self.service.flight = SharedFlight(self.client)
        self.emitter = SocketIO(message_queue=app.config["REDIS_URL"], channel=SOCKETIO_CHANNEL)

    def run(self, job_id: str, order: Order) -> dict:
        from app.dispatch import Call
        from app.requests import REQUESTS

        events: list[tuple[str, dict]] = []
        silenced = self._silenced(job_id)
        emit = self._emitter(job_id, order, events, silenced)
        call = Call(
            self.service,
            REQUESTS[order.name],
            order.client,
            order.rid,
            emit,
            silenced,
            live=order.live,
            address=order.address,
        )
        lease = LEASE_KEY + job_id
        self.client.set(lease, 1, ex=LEASE_SECONDS)
        try:
            with (
                renewing(lambda: self.client.set(lease, 1, ex=LEASE_SECONDS), RENEW_SECONDS),
                limits.cancel_scope(silenced),
            ):
                result = call.request.handler(call, order.fields)
            self.service.cache.flush()
            return {"result": result, "events": events}
        except AtlasError as error:
            return {"error": [error.code, error.message, error.status], "events": events}
        except Exception:
            log.exception("request %s %r failed on this worker", order.name, order.rid)
            return {
                "error": ["internal", "the server failed on this request; it has been logged", 500],
                "events": events,
            }
        finally:
            self.client.delete(lease)

    def _emitter(self, job_id: str, order: Order, events: list, silenced):
        """Events of a socket call go to its client now (after the result is stored, for any
        that names it); an HTTP call's are returned with the result. Nothing more is sent once
        the web process gave the job up (it runs again elsewhere, or its client left), and the
        last event only if this worker claims the job's outcome first: never heard twice."""
        stored = False

        def emit(event: str, payload: dict) -> None:
            nonlocal stored
            if not order.live:
                events.append((event, payload))
                return
            if silenced():
                return
            if event not in LIVE_EVENTS and not stored:
                self.service.cache.flush()
                stored = True
            if event == FINAL_EVENT and not self.client.set(
                OUTCOME_KEY + job_id, "answered", nx=True, ex=RESULT_TTL_SECONDS
            ):
                return
            self.emitter.emit(event, limits.wire_progress(event, payload), to=order.client, namespace=NAMESPACE)

        return emit

    def _silenced(self, job_id: str):
        """Whether the web process gave the job up (its worker died, or its client left or
        cancelled it): then this worker sends nothing more and stops at its next queue point."""
        return lambda: self.client.get(OUTCOME_KEY + job_id) in SILENCED


_WORKER: Worker | None = None  # this process's worker (set by serve); RQ calls run_order by name


def run_order(order: dict) -> dict:
    """The RQ job: one order on this process's :class:`Worker`."""
    return _WORKER.run(rq.get_current_job().id, Order(**order))


def serve(app, burst: bool = False) -> int:
    """Take model work from the queue until stopped (``burst``: until the queue is empty). A
    SimpleWorker runs each job in this process, where the models stay loaded between jobs."""
    global _WORKER
    if not app.config["REDIS_URL"]:
        raise ValueError("a model worker needs REDIS_URL (ATLAS_REDIS_URL): that is where its work comes from")
    from app.redis_store import connect

    _WORKER = Worker(app)
    connection = connect(app.config["REDIS_URL"], None)  # RQ blocks on the queue for minutes
    worker = rq.SimpleWorker([rq.Queue(QUEUE_NAME, connection=connection)], connection=connection)
    worker.work(burst=burst, with_scheduler=False)
    return 0
