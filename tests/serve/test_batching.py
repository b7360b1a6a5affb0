"""Dynamic batching: requests submitted together are scored in one call, on a worker thread, answers kept apart."""

import asyncio
import threading
import time

import pytest

from tuning.serve.batching import DynamicBatcher


class Recorder:
    """A scoring function that answers each review with its length, records each call and the thread it ran on."""

    def __init__(self, seconds: float = 0.0, fail_on: str | None = None):
        self.calls: list[list[list[str]]] = []
        self.threads: set[int] = set()
        self.seconds = seconds
        self.fail_on = fail_on

    def __call__(self, requests: list[list[str]]) -> list[list[int]]:
        self.calls.append(requests)
        self.threads.add(threading.get_ident())
        time.sleep(self.seconds)
        if any(self.fail_on in request for request in requests):
            raise RuntimeError("the model failed")
        return [[len(review) for review in request] for request in requests]


async def _with_batcher(batcher: DynamicBatcher, work):
    await batcher.start()
    try:
        return await work()
    finally:
        await batcher.stop()


def test_requests_that_arrive_together_are_scored_together():
    score = Recorder()
    batcher = DynamicBatcher(score, batch_size=16, max_wait_s=0.05)
    requests = [["a" * (index + 1)] * (index % 3 + 1) for index in range(6)]
    answers = asyncio.run(_with_batcher(batcher, lambda: asyncio.gather(*map(batcher.submit, requests))))
    assert answers == [[len(review) for review in request] for request in requests]  # each its own, in order
    assert score.calls == [requests]
    assert threading.get_ident() not in score.threads


def test_a_batch_stops_growing_at_batch_size_but_never_splits_a_request():
    score = Recorder()
    batcher = DynamicBatcher(score, batch_size=4, max_wait_s=0.05)
    requests = [["x"]] * 3 + [["y"] * 6] + [["z"]] * 3
    answers = asyncio.run(_with_batcher(batcher, lambda: asyncio.gather(*map(batcher.submit, requests))))
    assert answers == [[1] * len(request) for request in requests]
    assert [sum(map(len, call)) for call in score.calls] == [9, 3]  # 3 singles + the 6 (not split), then 3
    assert batcher.batches == 2


def test_a_request_alone_waits_at_most_the_wait_then_is_scored():
    score = Recorder()
    batcher = DynamicBatcher(score, batch_size=16, max_wait_s=0.2)

    async def alone():
        started = time.perf_counter()
        answer = await batcher.submit(["abc"])
        return answer, time.perf_counter() - started

    answer, seconds = asyncio.run(_with_batcher(batcher, alone))
    assert answer == [3] and 0.2 <= seconds < 2


def test_scoring_does_not_block_the_event_loop():
    batcher = DynamicBatcher(Recorder(seconds=0.5), batch_size=16, max_wait_s=0)

    async def tick_while_scoring():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        task = asyncio.create_task(ticker())
        await batcher.submit(["abc"])
        task.cancel()
        return ticks

    assert asyncio.run(_with_batcher(batcher, tick_while_scoring)) >= 10  # the loop ran during the 0.5 s of scoring


def test_a_failed_batch_fails_its_requests_and_the_next_batch_is_scored():
    score = Recorder(fail_on="bad")
    batcher = DynamicBatcher(score, batch_size=16, max_wait_s=0.05)

    async def work():
        failed = await asyncio.gather(batcher.submit(["bad"]), batcher.submit(["ok"]), return_exceptions=True)
        return failed, await batcher.submit(["fine"])

    failed, answer = asyncio.run(_with_batcher(batcher, work))
    assert [type(result) for result in failed] == [RuntimeError, RuntimeError]
    assert answer == [4]


def test_stop_answers_what_was_submitted_first():
    score = Recorder(seconds=0.3)
    batcher = DynamicBatcher(score, batch_size=1, max_wait_s=0)

    async def stop_while_busy():
        await batcher.start()
        pending = [asyncio.create_task(batcher.submit([text])) for text in ("a", "bb", "ccc")]
        await asyncio.sleep(0.05)  # the first is being scored, two are queued
        await batcher.stop()
        return [task.result() for task in pending]

    assert asyncio.run(stop_while_busy()) == [[1], [2], [3]]
    assert len(score.calls) == 3


@pytest.mark.parametrize("batch_size", [1, 2])
def test_a_client_that_went_away_is_not_scored(batch_size):
    score = Recorder(seconds=0.2)
    batcher = DynamicBatcher(score, batch_size=batch_size, max_wait_s=0)

    async def work():
        first = asyncio.create_task(batcher.submit(["first"]))
        await asyncio.sleep(0.05)  # "first" is being scored
        gone = asyncio.create_task(batcher.submit(["gone"]))
        await asyncio.sleep(0.01)
        gone.cancel()
        return await first, await batcher.submit(["next"])

    assert asyncio.run(_with_batcher(batcher, work)) == ([5], [4])
    assert ["gone"] not in [request for call in score.calls for request in call]
