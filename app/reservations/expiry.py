"""The expiry sweep, in every service process: reservations past their expiry are marked
expired (their units given back, their products' events written) within SWEEP_SECONDS of it,
whether or not anybody asks. Processes share the work without waiting on each other
(schema.sql: reservations_expire skips rows another one is ending)."""

import asyncio

from app.database import Database
from app.reservations.queries import expire_due

SWEEP_SECONDS = 1.0
BATCH = 500


class Expiry:
    def __init__(self, db: Database, *, every: float = SWEEP_SECONDS) -> None:
        self.db = db
        self.every = every

    async def run(self) -> None:
        """Sweep every `every` seconds until cancelled; a full batch is followed at once."""
        while True:
            while await expire_due(self.db, max_rows=BATCH) == BATCH:
                pass
            await asyncio.sleep(self.every)
