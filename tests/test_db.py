"""The shared pool: SQLAlchemy sessions and raw queries draw from one bounded set."""

from sqlalchemy import func, select

from app.config import Settings
from app.db import open_database
from app.models import Product


async def test_sessions_and_raw_queries_share_the_pool_without_leaking(settings: Settings) -> None:
    assert settings.database_url
    small = settings.model_copy(update={"pool_size": 2})
    async with open_database(settings.database_url, small) as database:
        for _ in range(6):
            async with database.sessions() as session, session.begin():
                await session.execute(select(func.count()).select_from(Product))
            async with database.pool.connection() as conn:
                # Back from SQLAlchemy, a connection is in autocommit again for raw queries.
                assert conn.autocommit
                # SQLAlchemy adds its notice handler on every checkout; it must not pile up.
                assert len(conn._notice_handlers) <= 1

        stats = database.pool.get_stats()
        assert stats["pool_max"] == 2
        assert stats["pool_size"] == 2


async def test_session_writes_are_transactional(settings: Settings) -> None:
    assert settings.database_url
    async with open_database(settings.database_url, settings) as database:
        async with database.sessions() as session:
            session.add(Product(sku="TX-1", name="n", price=1))
            await session.flush()  # the INSERT reaches PostgreSQL inside a transaction
            await session.rollback()
        async with database.sessions() as session:
            count = await session.scalar(select(func.count()).select_from(Product))
        assert count == 0
