"""Periodic jobs on APScheduler's AsyncIOScheduler, on the server's loop."""

import asyncio
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
        # Runs in progress, so shutdown can wait for them.
        self._running = set()

    def add(self, name, coroutine_function, interval_seconds):
        async def run():
            task = asyncio.current_task()
            self._running.add(task)
            try:
                await coroutine_function()
            except Exception:  # noqa: BLE001 - one bad run must not stop the job
                self.failures[name] = self.failures.get(name, 0) + 1
                logger.exception("Job %s failed (%d failures so far)",
                                 name, self.failures[name])
            finally:
                self._running.discard(task)

        self._scheduler.add_job(
            run, "interval", seconds=interval_seconds, id=name, name=name,
            max_instances=1, coalesce=True, misfire_grace_time=None,
        )

    def start(self):
        self._scheduler.start()
        logger.info("Scheduler started with jobs: %s",
                    ", ".join(job.id for job in self._scheduler.get_jobs()))

    async def finish_running(self, timeout):
        """Start no new runs and wait for those in progress.

        Return False when some are still running after ``timeout`` seconds.
        APScheduler 3.11 cancels runs in progress when it shuts down, so
        ``stop`` should follow this.
        """
        if not self._scheduler.running:
            return True
        self._scheduler.pause()
        running = [task for task in self._running if not task.done()]
        if not running:
            return True
        _, pending = await asyncio.wait(running, timeout=max(timeout, 0))
        return not pending

    async def stop(self):
        """Shut the scheduler down, cancelling runs still in progress."""
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)
            logger.info("Scheduler stopped")
