"""Speculative decoding: proposers guess k tokens, the target checks them in one pass."""
