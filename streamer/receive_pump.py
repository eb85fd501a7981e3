"""One reading task per websocket connection, in place of ccxt's receive loop.

ccxt (4.5.90, ``ws/client.py`` ``receive_loop``) reads each frame through a new task whose done
callback handles it and schedules the loop again: three event-loop turns and a task a frame, unless
aiohttp already holds more than one frame, which it then drains. So the loop turns as often as
frames arrive, whatever their number per turn: measured with the simulator's 1,000 trades a second
per symbol, a streamer of 2 symbols ran as many loop turns (~5,900 a second) as one of 4, and two
such streamers used 1.7x the CPU of one for the same trades (benchmarks/streamers.py).

The pump awaits aiohttp's ``receive()``, which returns at once while frames are buffered, so the
loop turns once per socket read, not three times per frame. Everything else is ccxt's: each frame
goes to the client's ``handle_message`` (our guarded one, source.py) in the order it came; a read
error rejects the client's futures as ccxt's ``NetworkError``; a closed connection calls
``on_close(1006)`` as ccxt's loop does when it finds the connection closed; cancelling the task
(shutdown) ends it silently.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ccxt.base.errors import NetworkError


def install_pump(client: Any) -> None:
    """Replace ``client.receive_loop`` (called once by ccxt's ``open``) with the pump."""

    def start() -> None:
        client._volcast_pump = client.asyncio_loop.create_task(pump(client))

    client.receive_loop = start


async def pump(client: Any) -> None:
    """Hand every frame of the connection to ``client.handle_message`` until it closes."""
    while True:
        if client.closed():
            client.on_close(1006)
            return
        try:
            message = await client.receive()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            client.reject(NetworkError(str(exc)))
            return
        client.handle_message(message)
