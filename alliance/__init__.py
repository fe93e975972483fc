"""The alliance's shared kernel: configuration, database, errors, storage, directory, FHIR plumbing.

It imports no domain package (referral, teleconsult, imaging): they import it.
"""
