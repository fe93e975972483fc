"""Two-way referral (双向转诊): the request, its workflow enforced by the server, consent,
documents, messages, access grants and the alliance's referral figures."""
