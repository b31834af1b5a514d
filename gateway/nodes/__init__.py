"""The node API (LMDeploy's proxy shape): list, add, remove and self-register workers."""
