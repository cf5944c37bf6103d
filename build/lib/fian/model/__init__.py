"""The FIAN network of Section 3 (one model; the ablations are configuration)."""
