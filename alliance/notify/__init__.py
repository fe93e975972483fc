"""Notifications: the outbox of events (written with the change that causes them), FHIR
Subscriptions (R4 Subscriptions Backport IG) and the worker that delivers them."""
