"""How a connection to another host notices that the host vanished: TCP, not ZMTP.

A host that is cut off or powers down closes nothing; a socket that sends
nothing (a SUB) would wait on such a connection forever, and one that sends
would retransmit for about 15 minutes.  The kernel notices instead:

- **TCP keepalive** probes an idle connection after ``KEEPALIVE_IDLE_S`` of
  silence, every ``KEEPALIVE_INTVL_S``, and gives up after ``KEEPALIVE_CNT``
  unanswered probes;
- **TCP_USER_TIMEOUT** (``ZMQ_TCP_MAXRT``) drops a connection whose sent data
  stays unacknowledged for ``USER_TIMEOUT_MS`` (and bounds the keepalive).

libzmq then reconnects (a connecting socket) or forgets the pipe (a bound
one), as it does after any other error.

Why not ZMTP heartbeats (``ZMQ_HEARTBEAT_IVL`` / ``TIMEOUT`` / ``TTL``), which
did this before: libzmq 4.3.x (4.3.5 is bundled with pyzmq 27) aborts the
process with ``Assertion failed: !_io_error (src/stream_engine_base.cpp:310)``
when the heartbeat interval timer fires on an engine whose input is stopped
(its receive pipe full: the application has not read yet) after an error or
hang-up was seen on its fd: ``in_event`` then only sets ``_io_error`` and
stops polling, and ``timer_event(heartbeat_ivl_timer_id)`` calls
``out_event()`` unguarded, which asserts ``!_io_error``.  A node that was
paused (SIGSTOP) for seconds resumes exactly so: its SUB's pipe refills from
the kernel buffers while its peers, their heartbeats timed out, have closed
their ends.  The same family: libzmq issues #4364 (pub-sub crash by
``_io_error``, heartbeat timeout), #3937 and #4767 (``_input_stopped``
assertions, a slow subscriber with heartbeats), PR #4830 (a stale activation
restarting input on a replacement engine).  Without ``HEARTBEAT_IVL`` the
interval timer is never armed, so that path cannot run; the kernel's
keepalive needs no timer in the I/O thread at all.  A paused process's kernel
still answers keepalive probes, so a pause alone no longer drops connections.
"""

from __future__ import annotations

import zmq

KEEPALIVE_IDLE_S = 1
KEEPALIVE_INTVL_S = 1
KEEPALIVE_CNT = 3
USER_TIMEOUT_MS = 3000


def detect_dead_hosts(sock: zmq.Socket) -> None:
    """Make ``sock``'s TCP connections notice a vanished host within a few seconds."""
    sock.setsockopt(zmq.TCP_KEEPALIVE, 1)
    sock.setsockopt(zmq.TCP_KEEPALIVE_IDLE, KEEPALIVE_IDLE_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_INTVL, KEEPALIVE_INTVL_S)
    sock.setsockopt(zmq.TCP_KEEPALIVE_CNT, KEEPALIVE_CNT)
    sock.setsockopt(zmq.TCP_MAXRT, USER_TIMEOUT_MS)
