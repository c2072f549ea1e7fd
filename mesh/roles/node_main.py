"""``pycache node``'s process: tuning, signals, and one node run in asyncio until a signal
(on uvloop's loop where installed: :mod:`mesh.roles.eventloop`)."""

from __future__ import annotations

import asyncio
import signal

import zmq.asyncio

from mesh.roles import eventloop
from mesh.roles.config import NodeConfig
from mesh.roles.node import Node
from mesh.roles.tuning import raise_fd_limit, tune_gc, tune_malloc


def run_node(config: NodeConfig) -> None:
    """Run a node in this process until SIGTERM or SIGINT; returns after a clean stop."""

    raise_fd_limit()
    tune_gc()
    tune_malloc()

    async def main() -> None:
        ctx = zmq.asyncio.Context()
        node = Node(config, ctx)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, node.stop)
        try:
            await node.run()
        except BaseException:
            ctx.destroy(linger=0)  # sockets a failed start left open would block term()
            raise
        ctx.term()

    eventloop.run(main)
