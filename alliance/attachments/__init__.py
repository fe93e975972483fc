"""Uploaded files: the table, the sharing rule for files, and their HTTP face."""
