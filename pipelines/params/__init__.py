"""Parameters: one spec per generation parameter (type, default, limits, bands, description), the request models
built from them, sampler and schedule names, the A1111 infotext, and step costs. No torch."""
