"""Agent presets: one YAML file per agent, read by :mod:`ctm_rl.config` (installed as ``ctm_rl.agents``)."""
