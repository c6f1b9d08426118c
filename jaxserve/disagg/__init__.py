"""Disaggregated serving: prefill and decode on separate device meshes, KV pages moved between."""
