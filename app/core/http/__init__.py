"""The HTTP plumbing every route shares: body guard, strict JSON, deadlines, HEAD, media types,
streaming a query."""
