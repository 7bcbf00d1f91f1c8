"""Missing-data scenarios: one module per mode, composed with iid/ood/cross into SCENARIOS."""
