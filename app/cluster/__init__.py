"""The service's private PostgreSQL cluster: made, started, stopped, replicated, destroyed.

`python -m app.cluster` (db/cluster.sh) is its command line; `Cluster` its Python face, used
by the embedded default (app/embedded.py), the tests and the benchmark. Standard library
only: it runs before any virtualenv exists, and as any OS user.
"""

from app.cluster.errors import ClusterError
from app.cluster.files import DeployFiles
from app.cluster.manager import Cluster

__all__ = ["Cluster", "ClusterError", "DeployFiles"]
