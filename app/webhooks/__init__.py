"""Webhooks: subscriptions to the change log, and their delivery."""
