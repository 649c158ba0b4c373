"""Reports: the stock summary and movements by day."""
