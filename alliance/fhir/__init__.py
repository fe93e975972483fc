"""FHIR R4 REST plumbing: interactions, search parameters, Bundle, paging, OperationOutcome and
the CapabilityStatement. It knows no resource type by itself (`fhir_mappings` registers them).

Modules, lowest first (each imports only those below it; `.importlinter` checks it):
`models`, `values` < `types` < `registry` < `indexing`, `search` < `store`, `capability` < `http`.
"""
