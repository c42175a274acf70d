"""gunicorn's threaded worker as the Procfile runs it (``--worker-class app.serving.ThreadWorker``).

gunicorn's gthread worker closes a finished connection gracefully (RFC 9112 section 9.6: send
FIN, then read what the peer still sends until it closes, for up to 2 s) on the one loop that
also accepts new connections. A peer that neither reads nor closes, such as a flooding client
whose sockets the server closed or anyone who sends ``Connection: close`` and then goes quiet,
holds that loop for 2 s a connection: under the hostile load test no new connection was
accepted for 7-20 s at a time, pages took as long, and 4-9 of 30 students could not connect.
This worker does the same graceful close on threads of its own, so the loop goes on accepting.
"""

from __future__ import annotations

import functools
import threading
from concurrent.futures import ThreadPoolExecutor

from gunicorn.workers import gthread

CLOSING_THREADS = 32  # graceful closes under way at once; more wait their turn, off the accepting loop
MAX_CLOSING = 4 * CLOSING_THREADS  # closes waiting or under way; past this a connection is closed at once
# (no lingering): each holds a socket for up to 2 s, and a flood of lingering peers must not pile them up


class ThreadWorker(gthread.ThreadWorker):
    """gthread, except that graceful closes run on ``CLOSING_THREADS`` threads of their own."""

    def init_process(self) -> None:
        self.closing = ThreadPoolExecutor(CLOSING_THREADS, thread_name_prefix="closing")
        self.closing_count = 0  # graceful closes handed over and not finished
        self.closing_lock = threading.Lock()
        super().init_process()

    def _close_gracefully(self, close) -> None:
        try:
            close(graceful=True)
        finally:
            with self.closing_lock:
                self.closing_count -= 1

    def finish_request(self, conn, fs) -> None:
        """gunicorn's own bookkeeping; only the connection's graceful close is handed over."""
        close = functools.partial(type(conn).close, conn)  # the class's, also on a kept-alive connection's next turn

        def close_elsewhere(graceful: bool = False) -> None:
            with self.closing_lock:
                graceful = graceful and self.closing_count < MAX_CLOSING
                self.closing_count += graceful
            if not graceful:
                return close()
            try:
                self.closing.submit(self._close_gracefully, close)
            except RuntimeError:  # the worker is stopping: its closing threads take no more
                self._close_gracefully(close)

        conn.close = close_elsewhere
        super().finish_request(conn, fs)
