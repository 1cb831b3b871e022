"""Periodic jobs on APScheduler's AsyncIOScheduler, on the server's loop."""

import logging

from apscheduler.schedulers.asyncio import AsyncIOScheduler

logger = logging.getLogger(__name__)


class Jobs:
    """Runs named coroutines at intervals; a failing run is logged, not fatal."""

    def __init__(self):
        # Created here but started in start(): APScheduler binds to the
        # loop that is running when start() is called.
        self._scheduler = AsyncIOScheduler()
        self.failures = {}

    def add(self, name, coroutine_function, interval_seconds):
        async def run():
            try:
                await coroutine_function()
            except Exception:  # noqa: BLE001 - one bad run must not stop the job
                self.failures[name] = self.failures.get(name, 0) + 1
                logger.exception("Job %s failed (%d failures so far)",
                                 name, self.failures[name])

        self._scheduler.add_job(
            run, "interval", seconds=interval_seconds, id=name, name=name,
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )

    def start(self):
        self._scheduler.start()
        logger.info("Scheduler started with jobs: %s",
                    ", ".join(job.id for job in self._scheduler.get_jobs()))

    async def stop(self):
        """Stop taking new runs; runs in progress finish on their own."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            logger.info("Scheduler stopped")
