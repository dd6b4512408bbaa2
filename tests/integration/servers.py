"""A real trtserve server in this process for the duration of one test, and a channel to it."""

from collections.abc import Awaitable, Callable

import grpc

from trtserve.repository import ModelRepository
from trtserve.serving.server import Server, ServerSettings


async def with_server(settings: ServerSettings, repository: ModelRepository,
                      test: Callable[[Server, grpc.aio.Channel], Awaitable[None]]) -> None:
    """Start a server with ``settings`` on ``repository``, run ``test(server, channel)``, stop it (also on failure)."""
    server = Server(settings, repository)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            await test(server, channel)
    finally:
        await server.stop()
