"""Where the files the cluster is set up from are: schema.sql, db/roles.sql, db/migrate.sh."""

from dataclasses import dataclass
from pathlib import Path

from app.cluster.errors import ClusterError

# An installed wheel carries them here (pyproject.toml); a checkout has them at its root.
PACKAGED = Path(__file__).resolve().parent / "deploy"
CHECKOUT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class DeployFiles:
    """A directory in the repository's layout: schema.sql, db/roles.sql, db/migrate.sh."""

    root: Path

    @property
    def schema(self) -> Path:
        return self.root / "schema.sql"

    @property
    def roles(self) -> Path:
        return self.root / "db" / "roles.sql"

    @property
    def migrate(self) -> Path:
        return self.root / "db" / "migrate.sh"

    @property
    def complete(self) -> bool:
        return all(f.is_file() for f in (self.schema, self.roles, self.migrate))

    @property
    def in_checkout(self) -> bool:
        return self.root == CHECKOUT

    @classmethod
    def default(cls) -> "DeployFiles":
        """The installed copy, else the checkout this module is part of."""
        for root in (PACKAGED, CHECKOUT):
            if cls(root).complete:
                return cls(root)
        raise ClusterError(f"schema.sql, db/roles.sql and db/migrate.sh are not in {CHECKOUT}")
