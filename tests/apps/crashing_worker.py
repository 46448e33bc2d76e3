"""The hardened worker with a bug that escapes its serving loop once it has served a request
(``-k crashing_worker.CrashingWorker``, with ``--pythonpath tests/apps``): the post-boot crash
loop that Python 3.13.0 once caused (a thread created in the master, started after the fork)."""

from hardened_worker import Worker


class CrashingWorker(Worker):
    def on_tick(self) -> bool:
        if self.server is not None and self.server.stats().requests:
            raise RuntimeError("a bug after boot")
        return super().on_tick()
