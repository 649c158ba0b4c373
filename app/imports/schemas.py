"""The bodies of POST /products/import."""

from pydantic import BaseModel


class ImportResult(BaseModel):
    """The answer to POST /products/import: how many products each row did what to."""

    created: int
    updated: int
    unchanged: int
