"""nlc.runtime: the shared trainer that generated modules plug into (to come)."""
