"""Power-aware consolidation policies, pure: host power models, overload detectors, VM
selection, placement, our own policy, core parking, and the registry of policy names."""
