"""Dynamic batching: the requests that arrive together are scored in one call, on one worker thread."""

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, TypeVar

Answer = TypeVar("Answer")


@dataclass
class _Job:
    reviews: list[str]
    answer: asyncio.Future


class DynamicBatcher(Generic[Answer]):
    """Collects the pending requests (up to `batch_size` reviews, waiting at most `max_wait_s` after the first) and
    hands them to `score` in one call on a single worker thread, so the event loop never waits for the model.

    `score` takes one list of reviews per request and returns one answer per request, in order. A request is never
    split: one with more than `batch_size` reviews is scored alone (`score` makes its own forward passes).
    """

    def __init__(self, score: Callable[[list[list[str]]], list[Answer]], batch_size: int, max_wait_s: float):
        self.score = score
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self.batches = 0  # calls of `score` so far
        self._queue: asyncio.Queue[_Job] | None = None
        self._worker: asyncio.Task | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._unanswered = 0  # submitted requests whose answer is not set yet

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scoring")
        self._worker = asyncio.create_task(self._run())

    async def stop(self) -> None:
        """Answer every request submitted so far, then stop the worker."""
        while self._unanswered:
            await asyncio.sleep(0.01)
        self._worker.cancel()
        try:
            await self._worker
        except asyncio.CancelledError:
            pass
        self._executor.shutdown(wait=True)

    async def submit(self, reviews: list[str]) -> Answer:
        """The answer to one request's reviews, scored together with the requests that arrive with it."""
        job = _Job(reviews, asyncio.get_running_loop().create_future())
        self._unanswered += 1
        job.answer.add_done_callback(self._answered)
        self._queue.put_nowait(job)
        return await job.answer

    def _answered(self, _: asyncio.Future) -> None:
        self._unanswered -= 1

    def _take_queued(self, batch: list[_Job]) -> None:
        while self._queue.qsize() and sum(len(job.reviews) for job in batch) < self.batch_size:
            batch.append(self._queue.get_nowait())

    async def _next_batch(self) -> list[_Job]:
        batch = [await self._queue.get()]
        self._take_queued(batch)
        if sum(len(job.reviews) for job in batch) < self.batch_size and self.max_wait_s > 0:
            await asyncio.sleep(self.max_wait_s)
            self._take_queued(batch)
        return [job for job in batch if not job.answer.done()]  # a client that went away was cancelled

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._next_batch()
            if not batch:
                continue
            try:
                answers = await loop.run_in_executor(self._executor, self.score, [job.reviews for job in batch])
            except Exception as error:  # the model failed on this batch: each of its requests gets the error
                for job in batch:
                    if not job.answer.done():
                        job.answer.set_exception(error)
                continue
            finally:
                self.batches += 1
            for job, answer in zip(batch, answers):
                if not job.answer.done():
                    job.answer.set_result(answer)
