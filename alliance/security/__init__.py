"""Accounts, tokens, scopes and who may see what (alliance/security/access.py)."""
