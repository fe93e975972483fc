"""The web portal: server-rendered pages for county doctors, specialists, administrators and
auditors, in Chinese first (English switchable). It calls the domain services through the same
Guard as the API, so every page that shows patient data is access-checked and audited."""
