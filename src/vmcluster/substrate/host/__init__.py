"""One host's own plumbing: where its files are, its state file, its network namespace's
links and the agent RPC client (the only code below ``node/`` that talks to an agent)."""
