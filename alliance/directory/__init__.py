"""The directory of the alliance: hospitals, departments, partnerships, practitioners, patients.

Directory records are kept as FHIR resources (Organization, OrganizationAffiliation,
Practitioner, PractitionerRole, Patient); this package holds their rules and the typed tables
that need the database to hold an invariant.
"""
