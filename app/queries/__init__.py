"""The statements the service runs, one module per resource, built from app.models."""
