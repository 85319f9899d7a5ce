"""The scheduler's hand-off to the HTTP event loop (`LoopRelay`): one wake-up per scheduler turn, not per token."""

from __future__ import annotations

import asyncio
import threading

from lmforge.serve.scheduler import LoopRelay


class CountingLoop:
    """Stands in for an asyncio loop: records the callbacks `call_soon_threadsafe` schedules."""

    def __init__(self) -> None:
        self.scheduled: list = []
        self.closed = False

    def call_soon_threadsafe(self, callback) -> None:
        if self.closed:
            raise RuntimeError("Event loop is closed")
        self.scheduled.append(callback)

    def is_closed(self) -> bool:
        return self.closed


def test_relay_wakes_the_loop_once_per_turn_and_delivers_in_order() -> None:
    loop, got = CountingLoop(), []
    relay = LoopRelay(loop)
    for i in range(16):  # one turn's tokens of 16 streams
        relay.post(got.append, i)
    assert got == [] and relay.flush() and len(loop.scheduled) == 1
    relay.post(got.append, 16)  # the next turn, before the loop ran the first wake-up: no second wake-up
    assert relay.flush() and len(loop.scheduled) == 1
    loop.scheduled.pop()()
    assert got == list(range(17))
    assert relay.flush() and loop.scheduled == []  # nothing pending: no wake-up
    relay.post(got.append, 17)
    relay.flush()
    loop.scheduled.pop()()
    assert got == list(range(18))


def test_relay_of_a_closed_loop_reports_it() -> None:
    loop = CountingLoop()
    relay = LoopRelay(loop)
    relay.post(print, "lost")
    loop.closed = True
    assert not relay.flush()


def test_relay_delivers_on_the_loop_thread_from_another_thread() -> None:
    async def main() -> list[tuple[int, str]]:
        loop, got, done = asyncio.get_running_loop(), [], asyncio.Event()
        relay = LoopRelay(loop)

        def deliver(item: int) -> None:
            got.append((item, threading.current_thread().name))
            if item == 99:
                done.set()

        def producer() -> None:
            for turn in range(10):
                for i in range(10):
                    relay.post(deliver, turn * 10 + i)
                relay.flush()

        threading.Thread(target=producer).start()
        await asyncio.wait_for(done.wait(), 10)
        return got

    got = asyncio.run(main())
    assert [item for item, _ in got] == list(range(100))
    assert {name for _, name in got} == {threading.main_thread().name}
